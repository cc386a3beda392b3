//! Who is asking: logins (local users and a cookie, or an authenticating proxy's JWT), CSRF
//! tokens, and the failed-login limit.
//!
//! Logins live in memory: a controller restart logs everyone out, and nothing a stolen
//! database file holds opens the dashboard. The cookie carries 32 random bytes; the server keeps
//! only their SHA-256. Every state change (a POST) carries a CSRF token, an HMAC of the login
//! with a key made at start, compared in constant time; SameSite=Strict cookies and an Origin
//! check stand behind it. Refusals say "401" and nothing about which part failed.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::jwt::JwtVerifier;
use super::users::{Role, UsersFile};

/// The login cookie's name (`__Host-` when Secure: the browser then refuses it from
/// subdomains and over plain HTTP).
const COOKIE: &str = "cordon_dashboard";
const SECURE_COOKIE: &str = "__Host-cordon_dashboard";

/// How users prove who they are.
#[derive(Debug)]
pub enum Authenticator {
    LocalUsers(UsersFile),
    Jwt(JwtVerifier),
}

/// Someone logged in.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user: String,
    pub role: Role,
    /// This login's CSRF token, for forms and `x-csrf-token`.
    pub csrf: String,
}

impl Principal {
    /// Whether `token` is this login's CSRF token.
    pub fn csrf_ok(&self, token: &str) -> bool {
        self.csrf.as_bytes().ct_eq(token.as_bytes()).into()
    }

    pub fn is_operator(&self) -> bool {
        self.role == Role::Operator
    }
}

#[derive(Debug)]
struct Login {
    user: String,
    /// SHA-256 of the user's password hash when they logged in: a new password (`user add
    /// --replace`) ends every login made with the old one.
    credential: [u8; 32],
    expires: Instant,
}

/// The authentication state of one dashboard.
#[derive(Debug)]
pub struct Auth {
    pub authenticator: Authenticator,
    logins: Mutex<HashMap<[u8; 32], Login>>,
    csrf_key: [u8; 32],
    ttl: Duration,
    secure: bool,
    limiter: LoginLimiter,
    /// Password checks running at once: argon2 holds 19 MiB and a thread for tens of
    /// milliseconds, so a flood of logins waits here rather than exhausting the controller.
    checks: tokio::sync::Semaphore,
}

/// Password checks at once (see [`Auth::checks`]).
const CONCURRENT_CHECKS: usize = 2;

/// A failed or refused login, as the page shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginRefusal {
    /// Wrong name or password (which one is not said).
    Wrong,
    /// Too many failures from this address or for this name in the last minute.
    TooMany,
    /// This dashboard authenticates by an authenticating proxy, not passwords.
    NotLocal,
}

impl Auth {
    pub fn new(
        authenticator: Authenticator,
        ttl: Duration,
        secure: bool,
        attempts_per_minute: u32,
    ) -> Self {
        Self {
            authenticator,
            logins: Mutex::default(),
            csrf_key: rand::random(),
            ttl,
            secure,
            limiter: LoginLimiter::new(attempts_per_minute, Duration::from_secs(60)),
            checks: tokio::sync::Semaphore::new(CONCURRENT_CHECKS),
        }
    }

    pub fn secure(&self) -> bool {
        self.secure
    }

    fn cookie_name(&self) -> &'static str {
        if self.secure { SECURE_COOKIE } else { COOKIE }
    }

    fn csrf_for(&self, binding: &[u8]) -> String {
        // HMAC takes a key of any length: `new_from_slice` cannot fail here.
        let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(&self.csrf_key) else {
            return String::new();
        };
        mac.update(b"cordon-dashboard-csrf\0");
        mac.update(binding);
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// Checks a password login; on success the `Set-Cookie` value that carries it.
    pub async fn login(
        &self,
        client: IpAddr,
        user: &str,
        password: &str,
    ) -> Result<String, LoginRefusal> {
        let Authenticator::LocalUsers(users) = &self.authenticator else {
            return Err(LoginRefusal::NotLocal);
        };
        // A name no user can have is refused unchecked (the rule is public: this tells nothing
        // of who exists), and never becomes a limiter key.
        if !super::users::valid_name(user) || password.len() > MAX_PASSWORD {
            self.limiter.attempt(&[(address_key(client), 4)]);
            return Err(LoginRefusal::Wrong);
        }
        // Failures are limited per address and name (the limit), and per address and per
        // name across the others (four times it): guessing is slow from anywhere, and an
        // attacker elsewhere can slow a name down but not lock its owner's address out.
        let keys = [
            (format!("{} {user}", address_key(client)), 1),
            (address_key(client), 4),
            (format!("user {user}"), 4),
        ];
        // Counted before the check, under one lock: a burst of concurrent attempts cannot all
        // pass the limit while the first ones are still being checked.
        let Some(attempt) = self.limiter.attempt(&keys) else {
            return Err(LoginRefusal::TooMany);
        };
        let Ok(_permit) = self.checks.acquire().await else {
            return Err(LoginRefusal::TooMany);
        };
        // argon2 takes tens of milliseconds of CPU: off the async threads.
        let verified = tokio::task::block_in_place(|| users.verify(user, password));
        let Some((_role, credential)) = verified else {
            return Err(LoginRefusal::Wrong);
        };
        self.limiter.forgive(&keys, attempt);
        let token: [u8; 32] = rand::random();
        let mut logins = self.logins.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        logins.retain(|_, l| l.expires > now);
        logins.insert(
            Sha256::digest(token).into(),
            Login {
                user: user.to_string(),
                credential,
                expires: now + self.ttl,
            },
        );
        Ok(self.cookie(&URL_SAFE_NO_PAD.encode(token), self.ttl.as_secs()))
    }

    fn cookie(&self, value: &str, max_age: u64) -> String {
        let mut cookie = cookie::Cookie::build((self.cookie_name(), value.to_string()))
            .http_only(true)
            .same_site(cookie::SameSite::Strict)
            .path("/")
            .max_age(cookie::time::Duration::seconds(max_age as i64))
            .secure(self.secure)
            .build();
        if max_age == 0 {
            cookie.make_removal();
        }
        cookie.to_string()
    }

    /// Every token the request's cookies carry under the login cookie's name (another site on
    /// the same host may have planted one before the real one).
    fn tokens(&self, headers: &HeaderMap) -> Vec<[u8; 32]> {
        let mut tokens = Vec::new();
        for header in headers.get_all(axum::http::header::COOKIE) {
            let Ok(text) = header.to_str() else { continue };
            for cookie in cookie::Cookie::split_parse(text).flatten() {
                if cookie.name() == self.cookie_name()
                    && let Ok(bytes) = URL_SAFE_NO_PAD.decode(cookie.value())
                    && let Ok(token) = bytes.try_into()
                {
                    tokens.push(token);
                }
            }
        }
        tokens
    }

    /// Who sent this request, if anyone still allowed in.
    pub fn principal(&self, headers: &HeaderMap) -> Option<Principal> {
        match &self.authenticator {
            Authenticator::LocalUsers(users) => {
                self.tokens(headers).into_iter().find_map(|token| {
                    let key: [u8; 32] = Sha256::digest(token).into();
                    let (user, credential) = {
                        let logins = self.logins.lock().unwrap_or_else(|e| e.into_inner());
                        let login = logins.get(&key)?;
                        (login.expires > Instant::now())
                            .then(|| (login.user.clone(), login.credential))?
                    };
                    // The file decides now: a removed user is out, a changed role applies, a new
                    // password ends the logins made with the old one.
                    let (role, current) = users.current(&user)?;
                    bool::from(current.ct_eq(&credential)).then(|| Principal {
                        csrf: self.csrf_for(&token),
                        user,
                        role,
                    })
                })
            }
            Authenticator::Jwt(verifier) => {
                let token = headers.get(verifier.header())?.to_str().ok()?;
                match verifier.verify(token) {
                    Ok((user, role)) => Some(Principal {
                        csrf: self.csrf_for(format!("jwt\0{user}").as_bytes()),
                        user,
                        role,
                    }),
                    Err(e) => {
                        tracing::info!(error = %e, "dashboard assertion refused");
                        None
                    }
                }
            }
        }
    }

    /// Ends the request's login; the `Set-Cookie` value that clears it.
    pub fn logout(&self, headers: &HeaderMap) -> String {
        let mut logins = self.logins.lock().unwrap_or_else(|e| e.into_inner());
        for token in self.tokens(headers) {
            let key: [u8; 32] = Sha256::digest(token).into();
            logins.remove(&key);
        }
        self.cookie("", 0)
    }

    /// Logins held now (expired ones are dropped at the next login).
    pub fn logins(&self) -> usize {
        self.logins.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Longest password checked (argon2 hashes any length; a megabyte would only cost time).
const MAX_PASSWORD: usize = 1024;

/// The limiter's key for a client address: the address, or its /64 for IPv6 (one host holds a
/// whole /64 and could otherwise take a fresh address per attempt).
fn address_key(client: IpAddr) -> String {
    match client {
        IpAddr::V4(v4) => format!("address {v4}"),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("address {:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

/// Login attempts per key within a window. An attempt is counted when it starts and forgiven
/// when it succeeds, so only failures (and attempts still being checked) count; past the
/// limit, logins for that key are refused without checking the password until attempts age
/// out.
#[derive(Debug)]
pub struct LoginLimiter {
    limit: u32,
    window: Duration,
    attempts: Mutex<HashMap<String, VecDeque<Instant>>>,
}

/// Keys tracked at most; beyond it stale keys go first, then the least recently failed (an
/// attacker cycling through names cannot grow memory, nor wipe the others' counts).
const MAX_KEYS: usize = 10_000;

impl LoginLimiter {
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window,
            attempts: Mutex::default(),
        }
    }

    /// Counts an attempt against each `(key, multiple of the limit)`; `None` (nothing
    /// counted) when one of them is at its limit. The instant returned identifies it for
    /// [`LoginLimiter::forgive`].
    pub fn attempt(&self, keys: &[(impl AsRef<str>, u32)]) -> Option<Instant> {
        let now = Instant::now();
        let mut attempts = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
        for (key, times) in keys {
            if let Some(seen) = attempts.get_mut(key.as_ref()) {
                while seen
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > self.window)
                {
                    seen.pop_front();
                }
                if seen.len() >= (self.limit * times) as usize {
                    return None;
                }
            }
        }
        for (key, _) in keys {
            if !attempts.contains_key(key.as_ref()) && attempts.len() >= MAX_KEYS {
                attempts.retain(|_, seen| {
                    seen.back()
                        .is_some_and(|t| now.duration_since(*t) <= self.window)
                });
                if attempts.len() >= MAX_KEYS
                    && let Some(oldest) = attempts
                        .iter()
                        .min_by_key(|(_, seen)| seen.back().copied())
                        .map(|(k, _)| k.clone())
                {
                    attempts.remove(&oldest);
                }
            }
            attempts
                .entry(key.as_ref().to_string())
                .or_default()
                .push_back(now);
        }
        Some(now)
    }

    /// Takes back the attempt counted at `at` (it succeeded).
    pub fn forgive(&self, keys: &[(impl AsRef<str>, u32)], at: Instant) {
        let mut attempts = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
        for (key, _) in keys {
            if let Some(seen) = attempts.get_mut(key.as_ref())
                && let Some(i) = seen.iter().rposition(|t| *t == at)
            {
                seen.remove(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_refuses_past_the_limit_per_key_and_forgives_successes() {
        let limiter = LoginLimiter::new(2, Duration::from_secs(60));
        assert!(limiter.attempt(&[("user a", 1)]).is_some());
        let second = limiter.attempt(&[("user a", 1)]).unwrap();
        assert!(limiter.attempt(&[("user a", 1)]).is_none());
        assert!(limiter.attempt(&[("user b", 1)]).is_some());
        limiter.forgive(&[("user a", 1)], second);
        assert!(
            limiter.attempt(&[("user a", 1)]).is_some(),
            "a success is not a failure"
        );
        // A key at a multiple of the limit.
        for _ in 0..4 {
            assert!(limiter.attempt(&[("address x", 2)]).is_some());
        }
        assert!(limiter.attempt(&[("address x", 2)]).is_none());
        let quick = LoginLimiter::new(1, Duration::from_millis(1));
        quick.attempt(&[("k", 1)]);
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            quick.attempt(&[("k", 1)]).is_some(),
            "attempts age out of the window"
        );
    }

    #[test]
    fn the_limiter_stays_bounded_without_forgetting_fresh_failures() {
        let limiter = LoginLimiter::new(1, Duration::from_secs(60));
        limiter.attempt(&[("victim", 1)]);
        for n in 0..MAX_KEYS + 50 {
            limiter.attempt(&[(format!("junk {n}"), 1)]);
        }
        let attempts = limiter.attempts.lock().unwrap();
        assert!(attempts.len() <= MAX_KEYS);
        drop(attempts);
        assert_eq!(
            address_key("2001:db8:1:2:3:4:5:6".parse().unwrap()),
            "address 2001:db8:1:2::/64"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_burst_of_concurrent_guesses_cannot_pass_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        super::super::users::add(&path, "ops", Role::Operator, "a long password", false).unwrap();
        let auth = std::sync::Arc::new(Auth::new(
            Authenticator::LocalUsers(UsersFile::new(path)),
            Duration::from_secs(60),
            false,
            3,
        ));
        let client: IpAddr = "127.0.0.1".parse().unwrap();
        let tries: Vec<_> = (0..20)
            .map(|n| {
                let auth = auth.clone();
                let password = if n == 19 {
                    "a long password".to_string()
                } else {
                    format!("guess {n}")
                };
                tokio::spawn(async move { auth.login(client, "ops", &password).await })
            })
            .collect();
        let mut checked = 0;
        for t in tries {
            if t.await.unwrap() != Err(LoginRefusal::TooMany) {
                checked += 1;
            }
        }
        assert!(checked <= 3, "{checked} passwords were checked");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_new_password_ends_the_logins_made_with_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        super::super::users::add(&path, "ops", Role::Operator, "a long password", false).unwrap();
        let auth = Auth::new(
            Authenticator::LocalUsers(UsersFile::new(path.clone())),
            Duration::from_secs(60),
            false,
            5,
        );
        let client: IpAddr = "127.0.0.1".parse().unwrap();
        let set_cookie = auth.login(client, "ops", "a long password").await.unwrap();
        let mut headers = HeaderMap::new();
        // A planted cookie of the same name first does not hide the real one.
        let real = set_cookie.split(';').next().unwrap();
        headers.insert(
            "cookie",
            format!("cordon_dashboard=AAAA; {real}").parse().unwrap(),
        );
        assert!(auth.principal(&headers).is_some());
        // The modification time may not move within the same tick: wait for the next one.
        std::thread::sleep(Duration::from_millis(20));
        super::super::users::add(&path, "ops", Role::Operator, "another long password", true)
            .unwrap();
        assert!(auth.principal(&headers).is_none());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_login_cookie_identifies_its_user_until_logout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        super::super::users::add(&path, "ops", Role::Operator, "a long password", false).unwrap();
        let auth = Auth::new(
            Authenticator::LocalUsers(UsersFile::new(path)),
            Duration::from_secs(60),
            false,
            5,
        );
        let client: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(
            auth.login(client, "ops", "wrong password").await,
            Err(LoginRefusal::Wrong)
        );
        let set_cookie = auth.login(client, "ops", "a long password").await.unwrap();
        assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"));
        assert!(!set_cookie.contains("Secure"));
        let value = set_cookie.split(';').next().unwrap().to_string();
        let mut headers = HeaderMap::new();
        headers.insert("cookie", value.parse().unwrap());
        let who = auth.principal(&headers).unwrap();
        assert_eq!((who.user.as_str(), who.role), ("ops", Role::Operator));
        assert!(who.csrf_ok(&who.csrf) && !who.csrf_ok("forged"));
        // A tampered cookie is nobody.
        let mut tampered = HeaderMap::new();
        let flipped = value.replace(
            value.chars().last().unwrap(),
            if value.ends_with('A') { "B" } else { "A" },
        );
        tampered.insert("cookie", flipped.parse().unwrap());
        assert!(auth.principal(&tampered).is_none());
        let cleared = auth.logout(&headers);
        assert!(cleared.contains("Max-Age=0"), "{cleared}");
        assert!(auth.principal(&headers).is_none());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn failed_logins_lock_the_address_and_slow_the_name_down() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        super::super::users::add(&path, "ops", Role::Viewer, "a long password", false).unwrap();
        let auth = Auth::new(
            Authenticator::LocalUsers(UsersFile::new(path)),
            Duration::from_secs(60),
            true,
            2,
        );
        let client: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..2 {
            assert_eq!(
                auth.login(client, "ops", "nope").await,
                Err(LoginRefusal::Wrong)
            );
        }
        // Even the right password is refused now from this address, unchecked.
        assert_eq!(
            auth.login(client, "ops", "a long password").await,
            Err(LoginRefusal::TooMany)
        );
        // From elsewhere the owner still gets in (the name alone allows four times as many).
        let elsewhere: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(
            auth.login(elsewhere, "ops", "a long password")
                .await
                .is_ok()
        );
        for n in 0..6 {
            let from: IpAddr = format!("127.0.1.{n}").parse().unwrap();
            let _ = auth.login(from, "ops", "nope").await;
        }
        assert_eq!(
            auth.login(elsewhere, "ops", "a long password").await,
            Err(LoginRefusal::TooMany),
            "failures from many addresses slow the name down"
        );
        let set_cookie = Auth::new(
            Authenticator::LocalUsers(UsersFile::new(dir.path().join("users.toml"))),
            Duration::from_secs(60),
            true,
            2,
        )
        .login(elsewhere, "ops", "a long password")
        .await
        .unwrap();
        assert!(
            set_cookie.starts_with("__Host-cordon_dashboard=") && set_cookie.contains("Secure")
        );
    }
}

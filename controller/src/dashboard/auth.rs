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
}

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
        let keys = [format!("address {client}"), format!("user {user}")];
        if keys.iter().any(|k| self.limiter.exhausted(k)) {
            return Err(LoginRefusal::TooMany);
        }
        // argon2 takes tens of milliseconds of CPU: off the async threads.
        let role = tokio::task::block_in_place(|| users.verify(user, password));
        let Some(_role) = role else {
            for key in &keys {
                self.limiter.failed(key);
            }
            return Err(LoginRefusal::Wrong);
        };
        let token: [u8; 32] = rand::random();
        let mut logins = self.logins.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        logins.retain(|_, l| l.expires > now);
        logins.insert(
            Sha256::digest(token).into(),
            Login {
                user: user.to_string(),
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

    /// The cookie's token, if the request has one.
    fn token(&self, headers: &HeaderMap) -> Option<[u8; 32]> {
        for header in headers.get_all(axum::http::header::COOKIE) {
            let Ok(text) = header.to_str() else { continue };
            for cookie in cookie::Cookie::split_parse(text).flatten() {
                if cookie.name() == self.cookie_name() {
                    let bytes = URL_SAFE_NO_PAD.decode(cookie.value()).ok()?;
                    return bytes.try_into().ok();
                }
            }
        }
        None
    }

    /// Who sent this request, if anyone still allowed in.
    pub fn principal(&self, headers: &HeaderMap) -> Option<Principal> {
        match &self.authenticator {
            Authenticator::LocalUsers(users) => {
                let token = self.token(headers)?;
                let key: [u8; 32] = Sha256::digest(token).into();
                let user = {
                    let logins = self.logins.lock().unwrap_or_else(|e| e.into_inner());
                    let login = logins.get(&key)?;
                    (login.expires > Instant::now()).then(|| login.user.clone())?
                };
                // The file decides the role now: a removed user is out, a changed role applies.
                let role = users.role(&user)?;
                Some(Principal {
                    csrf: self.csrf_for(&token),
                    user,
                    role,
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
        if let Some(token) = self.token(headers) {
            let key: [u8; 32] = Sha256::digest(token).into();
            self.logins
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
        }
        self.cookie("", 0)
    }

    /// Logins held now (expired ones are dropped at the next login).
    pub fn logins(&self) -> usize {
        self.logins.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Failed logins per key (a client address, a user name) within a window: past the limit,
/// logins for that key are refused without checking the password until failures age out.
#[derive(Debug)]
pub struct LoginLimiter {
    limit: u32,
    window: Duration,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

/// Keys tracked at most; beyond it the oldest windows are dropped first (an attacker cycling
/// through names cannot grow memory without bound).
const MAX_KEYS: usize = 10_000;

impl LoginLimiter {
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window,
            failures: Mutex::default(),
        }
    }

    pub fn exhausted(&self, key: &str) -> bool {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let Some(times) = failures.get_mut(key) else {
            return false;
        };
        let now = Instant::now();
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.window)
        {
            times.pop_front();
        }
        times.len() >= self.limit as usize
    }

    pub fn failed(&self, key: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failures.len() >= MAX_KEYS && !failures.contains_key(key) {
            let now = Instant::now();
            failures.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now.duration_since(*t) <= self.window)
            });
            if failures.len() >= MAX_KEYS {
                failures.clear();
            }
        }
        failures
            .entry(key.to_string())
            .or_default()
            .push_back(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_refuses_past_the_limit_per_key() {
        let limiter = LoginLimiter::new(2, Duration::from_secs(60));
        assert!(!limiter.exhausted("user a"));
        limiter.failed("user a");
        limiter.failed("user a");
        assert!(limiter.exhausted("user a"));
        assert!(!limiter.exhausted("user b"));
        let quick = LoginLimiter::new(1, Duration::from_millis(1));
        quick.failed("k");
        std::thread::sleep(Duration::from_millis(5));
        assert!(!quick.exhausted("k"), "failures age out of the window");
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
    async fn failed_logins_lock_the_name_and_the_address_out() {
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
        // Even the right password is refused now, unchecked.
        assert_eq!(
            auth.login(client, "ops", "a long password").await,
            Err(LoginRefusal::TooMany)
        );
        let elsewhere: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(
            auth.login(elsewhere, "ops", "a long password").await,
            Err(LoginRefusal::TooMany),
            "the name is locked from every address"
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

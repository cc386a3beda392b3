//! `[dashboard]` of cordon.toml, checked: where it listens and how it is reached safely.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::ConfigError;

/// The longest login: 30 days.
const MAX_SESSION_TTL_MINUTES: u64 = 30 * 24 * 60;

/// How the listener is secured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// Plain HTTP on a loopback address: only this host's users reach it.
    Loopback,
    /// TLS on the listener itself.
    Tls { cert: PathBuf, key: PathBuf },
    /// Plain HTTP, with a TLS terminator in front (`tls_terminated_in_front = true`): cookies
    /// are marked Secure, as the browser sees HTTPS.
    TerminatedInFront,
}

/// How users are authenticated.
#[derive(Debug, Clone)]
pub enum AuthMode {
    /// Local users in a file (argon2 hashes), logging in with a form.
    LocalUsers { file: PathBuf },
    /// An authenticating proxy's JWT assertion on every request.
    Jwt(JwtConfig),
}

/// `[dashboard.jwt]`, checked.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub header: String,
    pub jwks_file: PathBuf,
    pub issuer: String,
    pub audience: String,
    pub user_claim: String,
    pub operators: Vec<String>,
}

/// The dashboard's settings.
#[derive(Debug, Clone)]
pub struct DashboardConfig {
    pub listen: SocketAddr,
    pub transport: Transport,
    pub auth: AuthMode,
    pub session_ttl: Duration,
    pub login_attempts_per_minute: u32,
    /// The proxy's audit log, which the controller indexes for the session pages.
    pub audit_log: PathBuf,
    pub egress_retention: Duration,
    pub egress_retention_rows: u64,
}

impl DashboardConfig {
    /// `cookie Secure`: the browser reaches the dashboard over HTTPS.
    pub fn secure_cookies(&self) -> bool {
        !matches!(self.transport, Transport::Loopback)
    }

    /// The local users file, whatever the auth mode (the CLI manages it either way).
    pub fn users_file(file: &cordon_config::ConfigFile) -> PathBuf {
        file.sections.dashboard.users_file.as_ref().map_or_else(
            || file.state_dir().join("controller/dashboard-users.toml"),
            |p| file.resolve(p),
        )
    }

    /// Reads `[dashboard]`; `None` when it has no `listen` (no dashboard). Every error at once.
    pub fn load(path: &Path) -> Result<Option<Self>, ConfigError> {
        let file = cordon_config::read(path)?;
        Self::from_file(&file)
    }

    pub fn from_file(file: &cordon_config::ConfigFile) -> Result<Option<Self>, ConfigError> {
        let raw = &file.sections.dashboard;
        let Some(listen) = &raw.listen else {
            return Ok(None);
        };
        let mut errors = Vec::new();
        let listen = match cordon_config::address("dashboard.listen", listen) {
            Ok(a) => Some(a),
            Err(e) => {
                errors.push(e);
                None
            }
        };
        let transport = match (&raw.tls_cert, &raw.tls_key, raw.tls_terminated_in_front) {
            (Some(cert), Some(key), false) => Some(Transport::Tls {
                cert: file.resolve(cert),
                key: file.resolve(key),
            }),
            (None, None, true) => Some(Transport::TerminatedInFront),
            (None, None, false) => match listen {
                Some(a) if !a.ip().is_loopback() => {
                    errors.push(format!(
                        "dashboard.listen = {a} is beyond loopback without TLS: set \
                         dashboard.tls_cert and dashboard.tls_key, or, when a TLS terminator \
                         carries the browser's traffic, dashboard.tls_terminated_in_front = true"
                    ));
                    None
                }
                _ => Some(Transport::Loopback),
            },
            (Some(_), Some(_), true) => {
                errors.push(
                    "dashboard.tls_terminated_in_front = true and dashboard.tls_cert/tls_key \
                     are both set: choose TLS on the listener or a terminator in front"
                        .into(),
                );
                None
            }
            _ => {
                errors.push(
                    "dashboard.tls_cert and dashboard.tls_key go together: set both or neither"
                        .into(),
                );
                None
            }
        };
        let auth = match &raw.jwt {
            None => AuthMode::LocalUsers {
                file: Self::users_file(file),
            },
            Some(jwt) => {
                for (key, value) in [
                    ("header", &jwt.header),
                    ("issuer", &jwt.issuer),
                    ("audience", &jwt.audience),
                    ("user_claim", &jwt.user_claim),
                ] {
                    if value.trim().is_empty() {
                        errors.push(format!("dashboard.jwt.{key} is empty"));
                    }
                }
                if http::HeaderName::from_bytes(jwt.header.as_bytes()).is_err() {
                    errors.push(format!(
                        "dashboard.jwt.header = {:?} is not a header name",
                        jwt.header
                    ));
                }
                AuthMode::Jwt(JwtConfig {
                    header: jwt.header.to_ascii_lowercase(),
                    jwks_file: file.resolve(&jwt.jwks_file),
                    issuer: jwt.issuer.clone(),
                    audience: jwt.audience.clone(),
                    user_claim: jwt.user_claim.clone(),
                    operators: jwt.operators.clone(),
                })
            }
        };
        if !(1..=MAX_SESSION_TTL_MINUTES).contains(&raw.session_ttl_minutes) {
            errors.push(format!(
                "dashboard.session_ttl_minutes = {} is out of range: 1 to {MAX_SESSION_TTL_MINUTES} (30 days)",
                raw.session_ttl_minutes
            ));
        }
        if raw.login_attempts_per_minute == 0 {
            errors.push(
                "dashboard.login_attempts_per_minute must be at least 1 (it counts failed logins)"
                    .into(),
            );
        }
        if raw.egress_retention_hours == 0 || raw.egress_retention_rows == 0 {
            errors.push(
                "dashboard.egress_retention_hours and egress_retention_rows must be at least 1"
                    .into(),
            );
        }
        let audit_log = match &file.sections.audit.path {
            None => Some(file.state_dir().join("audit.log")),
            Some(p) if p.as_os_str() == "-" => {
                errors.push(
                    "the dashboard indexes the proxy's audit log, and [audit] path = \"-\" \
                     writes it to standard output: set [audit] path to a file"
                        .into(),
                );
                None
            }
            Some(p) => Some(file.resolve(p)),
        };
        match (listen, transport, audit_log) {
            (Some(listen), Some(transport), Some(audit_log)) if errors.is_empty() => {
                Ok(Some(Self {
                    listen,
                    transport,
                    auth,
                    session_ttl: Duration::from_secs(raw.session_ttl_minutes * 60),
                    login_attempts_per_minute: raw.login_attempts_per_minute,
                    audit_log,
                    egress_retention: Duration::from_secs(raw.egress_retention_hours * 3600),
                    egress_retention_rows: raw.egress_retention_rows,
                }))
            }
            _ => Err(ConfigError::Invalid {
                path: file.path.clone(),
                errors,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Option<DashboardConfig>, String> {
        let file = cordon_config::parse(text, Path::new("/etc/cordon/cordon.toml")).unwrap();
        DashboardConfig::from_file(&file).map_err(|e| e.to_string())
    }

    #[test]
    fn no_listen_means_no_dashboard() {
        assert!(load("").unwrap().is_none());
    }

    #[test]
    fn loopback_defaults_to_local_users_under_the_state_dir() {
        let config = load(
            "[proxy]\nstate_dir = \"/var/lib/cordon\"\n[dashboard]\nlisten = \"127.0.0.1:8090\"\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(config.transport, Transport::Loopback);
        assert!(!config.secure_cookies());
        assert!(matches!(&config.auth, AuthMode::LocalUsers { file }
            if file == Path::new("/var/lib/cordon/controller/dashboard-users.toml")));
        assert_eq!(config.audit_log, Path::new("/var/lib/cordon/audit.log"));
    }

    #[test]
    fn beyond_loopback_needs_tls_or_a_terminator_in_front() {
        let bad = load("[dashboard]\nlisten = \"0.0.0.0:8090\"\n").unwrap_err();
        assert!(bad.contains("beyond loopback without TLS"), "{bad}");
        let tls = load(
            "[dashboard]\nlisten = \"0.0.0.0:8090\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n",
        )
        .unwrap()
        .unwrap();
        assert!(
            matches!(&tls.transport, Transport::Tls { cert, .. } if cert == Path::new("/etc/cordon/c.pem"))
        );
        assert!(tls.secure_cookies());
        let front =
            load("[dashboard]\nlisten = \"0.0.0.0:8090\"\ntls_terminated_in_front = true\n")
                .unwrap()
                .unwrap();
        assert_eq!(front.transport, Transport::TerminatedInFront);
        let half =
            load("[dashboard]\nlisten = \"127.0.0.1:8090\"\ntls_cert = \"c.pem\"\n").unwrap_err();
        assert!(half.contains("go together"), "{half}");
    }

    #[test]
    fn every_error_is_listed_at_once() {
        let bad = load(
            "[audit]\npath = \"-\"\n[dashboard]\nlisten = \"nowhere\"\nsession_ttl_minutes = 0\n\
             [dashboard.jwt]\nheader = \"bad header\"\njwks_file = \"j.json\"\nissuer = \"\"\naudience = \"a\"\n",
        )
        .unwrap_err();
        for part in [
            "not an address:port",
            "session_ttl_minutes",
            "standard output",
            "not a header name",
            "jwt.issuer is empty",
        ] {
            assert!(bad.contains(part), "{part} missing in {bad}");
        }
    }
}

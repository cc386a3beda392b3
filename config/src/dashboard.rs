//! `[dashboard]`: the controller's web dashboard (docs/DASHBOARD.md). Off unless `listen` is set.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DashboardSection {
    /// Where the dashboard listens; unset: no dashboard.
    pub listen: Option<String>,
    /// Local users (`cordon-controller dashboard user add`), relative to cordon.toml;
    /// default `<state_dir>/controller/dashboard-users.toml`.
    pub users_file: Option<PathBuf>,
    /// How long a login lasts.
    pub session_ttl_minutes: u64,
    /// Failed logins allowed per client address and per user name within a minute.
    pub login_attempts_per_minute: u32,
    /// TLS on the listener: both or neither.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// A TLS terminator in front carries the browser's traffic: listen beyond loopback without
    /// TLS on this listener, and mark cookies Secure all the same.
    pub tls_terminated_in_front: bool,
    /// Egress decisions kept for the dashboard, by age and count.
    pub egress_retention_hours: u64,
    pub egress_retention_rows: u64,
    /// Authentication by an authenticating proxy's JWT assertion header instead of local users.
    pub jwt: Option<JwtSection>,
}

/// `[dashboard.jwt]`: verify the assertion an authenticating proxy (Cloudflare Access, an OIDC
/// proxy) puts on every request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSection {
    /// The header carrying the JWT (Cloudflare Access: `Cf-Access-Jwt-Assertion`).
    pub header: String,
    /// The signing keys, a JWKS file relative to cordon.toml (fetch it from the issuer's
    /// `/.well-known/jwks.json` or `/cdn-cgi/access/certs` when keys rotate).
    pub jwks_file: PathBuf,
    pub issuer: String,
    pub audience: String,
    /// The claim naming the user (default `email`).
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    /// Users given the operator role; everyone else the token admits is a viewer.
    #[serde(default)]
    pub operators: Vec<String>,
}

fn default_user_claim() -> String {
    "email".into()
}

impl Default for DashboardSection {
    fn default() -> Self {
        Self {
            listen: None,
            users_file: None,
            session_ttl_minutes: 12 * 60,
            login_attempts_per_minute: 5,
            tls_cert: None,
            tls_key: None,
            tls_terminated_in_front: false,
            egress_retention_hours: 7 * 24,
            egress_retention_rows: 2_000_000,
            jwt: None,
        }
    }
}

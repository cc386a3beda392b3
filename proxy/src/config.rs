//! `cordon.toml`: the proxy's configuration, parsed into validated types.
//!
//! The file's shape is the `cordon-config` crate's (serde data with unknown keys rejected,
//! shared with the controller); [`ProxyConfig::load`] turns the proxy's sections into typed
//! values and reports every problem at once, each naming its key, so an operator fixes a
//! config in one pass. docs/CONFIG.md documents every key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cordon_policy::{EvalLimits, EvaluatorChoice, PolicyConfig};
use ipnet::IpNet;

pub use cordon_config::proxy::{
    DEFAULT_AUDIT_FLUSH_INTERVAL, DEFAULT_CERT_CACHE_SIZE, DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_LEAF_VALIDITY, DEFAULT_UPSTREAM_CONNECT_TIMEOUT, DEFAULT_UPSTREAM_READ_TIMEOUT,
};
/// The longest `audit.flush_interval_ms` accepted: what a SIGKILL could lose.
pub const MAX_AUDIT_FLUSH_INTERVAL: Duration = Duration::from_secs(10);

/// What to do with a TLS client that sends no SNI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSniAction {
    /// Refuse the connection (the default): without a name there is nothing to verify the
    /// upstream against.
    Deny,
    /// Intercept with a leaf for the original destination address (transparent mode only).
    OriginalDestination,
}

/// How a connect-stage decision is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectStage {
    /// Ask the policy (the default).
    Evaluate,
    /// Intercept every TLS and HTTP connection without asking, leaving every decision to the
    /// request stage (for policies written for OPA-Envoy, which know no connect stage). Raw TCP
    /// is still closed.
    Intercept,
}

/// What a policy denial does (`[policy] mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyMode {
    /// Refuse (the default).
    Enforce,
    /// Let the request or connection through and record that the policy would have denied
    /// it (audit `would_deny`, `cordon_proxy_would_deny_total`). Credential bindings, the SSRF
    /// guard and every other check still refuse.
    Report,
}

/// The session label that puts one session in report mode under `mode = "enforce"`.
pub const REPORT_LABEL: (&str, &str) = ("policy_mode", "report");

/// The whole proxy configuration.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listen: ListenConfig,
    pub state_dir: PathBuf,
    pub policy: PolicyConfig,
    pub connect_stage: ConnectStage,
    pub policy_mode: PolicyMode,
    pub tls: TlsConfig,
    pub upstream: UpstreamConfig,
    pub audit_path: AuditTarget,
    /// How long an audit record may wait to be written with others; `None` writes each at once.
    pub audit_flush_interval: Option<Duration>,
    /// The secret store file or directory, if any.
    pub credentials_store: Option<PathBuf>,
    /// How often the store's files are checked for changes (rotation); `None`: never.
    pub credentials_watch: Option<Duration>,
    pub dns: DnsConfig,
}

/// The sandboxes' DNS stub.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// UDP address; `None`: no stub.
    pub listen: Option<SocketAddr>,
    /// Synthetic addresses handed out for names.
    pub synthetic_range: ipnet::Ipv4Net,
    pub ttl_secs: u32,
}

/// Where the proxy listens.
#[derive(Debug, Clone)]
pub struct ListenConfig {
    pub transparent: Option<SocketAddr>,
    pub explicit: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub metrics: Option<SocketAddr>,
    pub handshake_timeout: Duration,
}

/// Interception and upstream TLS.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub upstream_extra_roots: Vec<PathBuf>,
    pub cert_cache_size: NonZeroUsize,
    pub leaf_validity: Duration,
    pub no_sni: NoSniAction,
}

/// Reaching upstreams.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// `host:port` (lower-case host) -> address to dial instead of resolving.
    pub connect_to: HashMap<(String, u16), SocketAddr>,
    /// Networks exempt from the SSRF guard.
    pub allow_private: Vec<IpNet>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
}

/// Where audit records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditTarget {
    Stdout,
    File(PathBuf),
}

/// Every problem found in a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable, not TOML, or an unknown section or key (`cordon-config`).
    #[error(transparent)]
    File(#[from] cordon_config::FileError),
    #[error("{path} has {} error(s):\n  {}", .errors.len(), .errors.join("\n  "))]
    Invalid { path: PathBuf, errors: Vec<String> },
}

impl ProxyConfig {
    /// Whether a denial for `session` is only reported: `mode = "report"`, or the session's
    /// label `policy_mode = "report"`.
    pub fn reports(&self, session: &cordon_policy::SessionInput) -> bool {
        self.policy_mode == PolicyMode::Report
            || session.labels.get(REPORT_LABEL.0).map(String::as_str) == Some(REPORT_LABEL.1)
    }

    /// Reads and validates a config file. Relative paths in it are relative to the file's
    /// directory, so a config works wherever the proxy is started from. `[sandbox]` and
    /// `[controller]` are the controller's: only their shape is checked here.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::from_file(cordon_config::read(path)?)
    }

    /// Parses config text; `path` names the file in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        Self::from_file(cordon_config::parse(text, path)?)
    }

    fn from_file(file: cordon_config::ConfigFile) -> Result<Self, ConfigError> {
        let mut errors = Vec::new();
        match validate(&file, &mut errors) {
            Some(config) if errors.is_empty() => Ok(config),
            _ => Err(ConfigError::Invalid {
                path: file.path,
                errors,
            }),
        }
    }
}

fn validate(file: &cordon_config::ConfigFile, errors: &mut Vec<String>) -> Option<ProxyConfig> {
    let raw = &file.sections;
    let resolve = |p: &Path| file.resolve(p);
    let mut addr = |key: &str, value: &Option<String>| -> Option<SocketAddr> {
        cordon_config::address(key, value.as_ref()?)
            .map_err(|e| errors.push(e))
            .ok()
    };
    let transparent = addr("proxy.transparent_listen", &raw.proxy.transparent_listen);
    let explicit = addr("proxy.explicit_listen", &raw.proxy.explicit_listen);
    let admin = addr("proxy.admin_listen", &Some(raw.proxy.admin_listen.clone()));
    let metrics = addr("proxy.metrics_listen", &raw.proxy.metrics_listen);
    let dns_listen = addr("dns.listen", &raw.dns.listen);
    let synthetic_range = match raw.dns.synthetic_range.parse::<ipnet::Ipv4Net>() {
        Ok(net) if net.prefix_len() <= 24 => Some(net.trunc()),
        _ => {
            errors.push(format!(
                "dns.synthetic_range = {:?} must be an IPv4 network of at least 256 addresses \
                 (a /24 or wider), such as \"198.18.0.0/15\"",
                raw.dns.synthetic_range
            ));
            None
        }
    };
    if raw.proxy.transparent_listen.is_none() && raw.proxy.explicit_listen.is_none() {
        errors.push(
            "neither proxy.transparent_listen nor proxy.explicit_listen is set; set at least one"
                .into(),
        );
    }
    if let Some(admin) = admin
        && !admin.ip().is_loopback()
    {
        errors.push(format!(
            "proxy.admin_listen = {admin} is not a loopback address; the admin API registers \
             sessions and must not be reachable from sandboxes"
        ));
    }
    let state_dir = file.state_dir();
    for (key, value) in [
        ("proxy.handshake_timeout_ms", raw.proxy.handshake_timeout_ms),
        (
            "upstream.connect_timeout_ms",
            raw.upstream.connect_timeout_ms,
        ),
        ("upstream.read_timeout_ms", raw.upstream.read_timeout_ms),
    ] {
        if value == 0 {
            errors.push(format!("{key} must be greater than 0"));
        }
    }

    // Keep going without a bundle so every other error is reported too.
    let bundle = match raw.policy.bundle.as_ref() {
        Some(bundle) => resolve(bundle),
        None => {
            errors.push("policy.bundle is not set; point it at a policy bundle directory, .tar.gz or .rego file".into());
            PathBuf::new()
        }
    };
    let mut policy = PolicyConfig::new(bundle);
    if let Some(query) = &raw.policy.query {
        policy.query = query.clone();
    }
    let eval_timeout = raw.policy.eval_timeout_ms.map_or(
        cordon_policy::engine::DEFAULT_EVAL_TIMEOUT,
        Duration::from_millis,
    );
    if eval_timeout.is_zero() {
        errors.push("policy.eval_timeout_ms must be greater than 0".into());
    }
    policy.limits = EvalLimits {
        timeout: eval_timeout,
        ..EvalLimits::default()
    };
    policy.evaluator = match raw.policy.evaluator.as_str() {
        "auto" => EvaluatorChoice::Auto,
        "interpreter" => EvaluatorChoice::Interpreter,
        other => {
            errors.push(format!(
                "policy.evaluator = {other:?}: expected \"auto\" or \"interpreter\""
            ));
            EvaluatorChoice::Auto
        }
    };
    let connect_stage = match raw.policy.connect_stage.as_str() {
        "evaluate" => ConnectStage::Evaluate,
        "intercept" => ConnectStage::Intercept,
        other => {
            errors.push(format!(
                "policy.connect_stage = {other:?}: expected \"evaluate\" or \"intercept\""
            ));
            ConnectStage::Evaluate
        }
    };

    let policy_mode = match raw.policy.mode.as_str() {
        "enforce" => PolicyMode::Enforce,
        "report" => PolicyMode::Report,
        other => {
            errors.push(format!(
                "policy.mode = {other:?}: expected \"enforce\" or \"report\""
            ));
            PolicyMode::Enforce
        }
    };

    let no_sni = match raw.tls.no_sni.as_str() {
        "deny" => NoSniAction::Deny,
        "original_destination" => NoSniAction::OriginalDestination,
        other => {
            errors.push(format!(
                "tls.no_sni = {other:?}: expected \"deny\" or \"original_destination\""
            ));
            NoSniAction::Deny
        }
    };
    let cert_cache_size = NonZeroUsize::new(raw.tls.cert_cache_size).unwrap_or_else(|| {
        errors.push("tls.cert_cache_size must be greater than 0".into());
        NonZeroUsize::MIN
    });
    if raw.tls.leaf_validity_hours == 0 || raw.tls.leaf_validity_hours > 24 * 398 {
        errors.push(
            "tls.leaf_validity_hours must be from 1 to 9552 (398 days, the longest browsers accept)"
                .into(),
        );
    }
    let extra_roots: Vec<PathBuf> = raw
        .tls
        .upstream_extra_roots
        .iter()
        .map(|p| resolve(p))
        .collect();
    for root in &extra_roots {
        if !root.is_file() {
            errors.push(format!(
                "tls.upstream_extra_roots: {} does not exist or is not a file",
                root.display()
            ));
        }
    }
    let tls = TlsConfig {
        ca_cert: file.ca_cert(),
        ca_key: file.ca_key(),
        upstream_extra_roots: extra_roots,
        cert_cache_size,
        leaf_validity: Duration::from_secs(raw.tls.leaf_validity_hours.min(24 * 398) * 3600),
        no_sni,
    };

    let mut connect_to = HashMap::new();
    for (from, to) in &raw.upstream.connect_to {
        let target = match parse_host_port(from) {
            Some(t) => t,
            None => {
                errors.push(format!(
                    "upstream.connect_to key {from:?} must be host:port (lower-case host)"
                ));
                continue;
            }
        };
        match to.parse::<SocketAddr>() {
            Ok(addr) => {
                connect_to.insert(target, addr);
            }
            Err(_) => errors.push(format!(
                "upstream.connect_to.{from:?} = {to:?} must be an ip:port address"
            )),
        }
    }
    let mut allow_private = Vec::new();
    for cidr in &raw.upstream.allow_private {
        match cidr.parse::<IpNet>() {
            Ok(net) => allow_private.push(net),
            Err(_) => match cidr.parse::<std::net::IpAddr>() {
                Ok(ip) => allow_private.push(IpNet::from(ip)),
                Err(_) => errors.push(format!(
                    "upstream.allow_private: {cidr:?} is not a CIDR or an IP"
                )),
            },
        }
    }
    let upstream = UpstreamConfig {
        connect_to,
        allow_private,
        connect_timeout: Duration::from_millis(raw.upstream.connect_timeout_ms),
        read_timeout: Duration::from_millis(raw.upstream.read_timeout_ms),
    };
    if raw.audit.flush_interval_ms > MAX_AUDIT_FLUSH_INTERVAL.as_millis() as u64 {
        errors.push(format!(
            "audit.flush_interval_ms: {} is longer than the {} ms allowed (records a crash could lose); use 0 to write each record at once",
            raw.audit.flush_interval_ms,
            MAX_AUDIT_FLUSH_INTERVAL.as_millis()
        ));
    }
    let audit_path = match raw.audit.path.as_deref() {
        None => AuditTarget::File(state_dir.join("audit.log")),
        Some(p) if p == Path::new("-") => AuditTarget::Stdout,
        Some(p) => AuditTarget::File(resolve(p)),
    };

    Some(ProxyConfig {
        listen: ListenConfig {
            transparent,
            explicit,
            admin: admin?,
            metrics,
            handshake_timeout: Duration::from_millis(raw.proxy.handshake_timeout_ms),
        },
        state_dir,
        policy,
        connect_stage,
        policy_mode,
        tls,
        upstream,
        audit_path,
        audit_flush_interval: (raw.audit.flush_interval_ms > 0)
            .then(|| Duration::from_millis(raw.audit.flush_interval_ms)),
        credentials_store: file.credentials_store(),
        credentials_watch: (raw.credentials.watch_interval_ms > 0)
            .then(|| Duration::from_millis(raw.credentials.watch_interval_ms)),
        dns: DnsConfig {
            listen: dns_listen,
            synthetic_range: synthetic_range?,
            ttl_secs: raw.dns.ttl_secs,
        },
    })
}

/// `host:port` with a lower-case host (IPv6 in brackets).
fn parse_host_port(s: &str) -> Option<(String, u16)> {
    let authority = cordon_policy::input::parse_authority(s, 0)?;
    if authority.port == 0 || s.to_ascii_lowercase() != s {
        return None;
    }
    Some((authority.host, authority.port))
}

#[cfg(test)]
mod tests;

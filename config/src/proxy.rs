//! The proxy's sections: `[proxy]`, `[policy]`, `[tls]`, `[upstream]`, `[audit]`,
//! `[credentials]`, `[dns]`. Defaults the policy engine owns (its query and evaluation
//! timeout) are left unset here and applied by the proxy.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Leaves minted per server name are kept this many at most.
pub const DEFAULT_CERT_CACHE_SIZE: usize = 10_000;
/// Minted leaves are valid this long (and re-minted after half of it).
pub const DEFAULT_LEAF_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// A client must finish its first bytes (ClientHello, CONNECT head) within this.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Dialling an upstream gives up after this.
pub const DEFAULT_UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// An upstream that sends nothing for this long is abandoned (504).
pub const DEFAULT_UPSTREAM_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an audit record may wait to be written with others.
pub const DEFAULT_AUDIT_FLUSH_INTERVAL: Duration = Duration::from_millis(20);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSection {
    /// Where the sandboxes' DNS stub listens (UDP); unset: no stub.
    pub listen: Option<String>,
    /// Synthetic IPv4 addresses handed out for names.
    pub synthetic_range: String,
    pub ttl_secs: u32,
}

impl Default for DnsSection {
    fn default() -> Self {
        Self {
            listen: None,
            synthetic_range: "198.18.0.0/15".into(),
            ttl_secs: 60,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxySection {
    pub transparent_listen: Option<String>,
    pub explicit_listen: Option<String>,
    pub admin_listen: String,
    pub metrics_listen: Option<String>,
    pub state_dir: PathBuf,
    pub handshake_timeout_ms: u64,
}

impl Default for ProxySection {
    fn default() -> Self {
        Self {
            transparent_listen: None,
            explicit_listen: None,
            admin_listen: "127.0.0.1:9901".into(),
            metrics_listen: None,
            state_dir: PathBuf::from("state"),
            handshake_timeout_ms: DEFAULT_HANDSHAKE_TIMEOUT.as_millis() as u64,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySection {
    pub bundle: Option<PathBuf>,
    /// Unset: the policy engine's default query.
    pub query: Option<String>,
    /// Unset: the policy engine's default timeout.
    pub eval_timeout_ms: Option<u64>,
    pub connect_stage: String,
    pub evaluator: String,
    /// `enforce` (default) or `report`: decide, record what would be denied, let it through.
    pub mode: String,
}

impl Default for PolicySection {
    fn default() -> Self {
        Self {
            bundle: None,
            query: None,
            eval_timeout_ms: None,
            connect_stage: "evaluate".into(),
            evaluator: "auto".into(),
            mode: "enforce".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    pub ca_cert: Option<PathBuf>,
    pub ca_key: Option<PathBuf>,
    pub upstream_extra_roots: Vec<PathBuf>,
    pub cert_cache_size: usize,
    pub leaf_validity_hours: u64,
    pub no_sni: String,
}

impl Default for TlsSection {
    fn default() -> Self {
        Self {
            ca_cert: None,
            ca_key: None,
            upstream_extra_roots: Vec::new(),
            cert_cache_size: DEFAULT_CERT_CACHE_SIZE,
            leaf_validity_hours: DEFAULT_LEAF_VALIDITY.as_secs() / 3600,
            no_sni: "deny".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamSection {
    pub connect_to: BTreeMap<String, String>,
    pub allow_private: Vec<String>,
    pub connect_timeout_ms: u64,
    pub read_timeout_ms: u64,
}

impl Default for UpstreamSection {
    fn default() -> Self {
        Self {
            connect_to: BTreeMap::new(),
            allow_private: Vec::new(),
            connect_timeout_ms: DEFAULT_UPSTREAM_CONNECT_TIMEOUT.as_millis() as u64,
            read_timeout_ms: DEFAULT_UPSTREAM_READ_TIMEOUT.as_millis() as u64,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSection {
    /// A file, or "-" for standard output.
    pub path: Option<PathBuf>,
    /// How long a record may wait to be written with others; 0 writes each at once.
    pub flush_interval_ms: u64,
}

impl Default for AuditSection {
    fn default() -> Self {
        Self {
            path: None,
            flush_interval_ms: DEFAULT_AUDIT_FLUSH_INTERVAL.as_millis() as u64,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CredentialsSection {
    /// The secret store file (docs/CREDENTIALS.md); absent means no secrets.
    pub store: Option<PathBuf>,
    /// How often to check the store's files for changes; 0 turns the watcher off.
    pub watch_interval_ms: u64,
}

impl Default for CredentialsSection {
    fn default() -> Self {
        Self {
            store: None,
            watch_interval_ms: 2000,
        }
    }
}

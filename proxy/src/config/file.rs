//! The config file as written: serde structs, unknown keys rejected, defaults named.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConfigFile {
    #[serde(default)]
    pub(super) proxy: ProxySection,
    #[serde(default)]
    pub(super) policy: PolicySection,
    #[serde(default)]
    pub(super) tls: TlsSection,
    #[serde(default)]
    pub(super) upstream: UpstreamSection,
    #[serde(default)]
    pub(super) audit: AuditSection,
    #[serde(default)]
    pub(super) credentials: CredentialsSection,
    #[serde(default)]
    pub(super) dns: DnsSection,
    /// The controller's section (`cordon-controller` validates it); the proxy only carries it.
    #[serde(default)]
    pub(super) sandbox: Option<toml::Table>,
    /// The controller service's section (`cordon-controller serve`); carried, not read.
    #[serde(default)]
    pub(super) controller: Option<toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct DnsSection {
    /// Where the sandboxes' DNS stub listens (UDP); unset: no stub.
    pub(super) listen: Option<String>,
    /// Synthetic IPv4 addresses handed out for names.
    pub(super) synthetic_range: String,
    pub(super) ttl_secs: u32,
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
pub(super) struct ProxySection {
    pub(super) transparent_listen: Option<String>,
    pub(super) explicit_listen: Option<String>,
    pub(super) admin_listen: String,
    pub(super) metrics_listen: Option<String>,
    pub(super) state_dir: PathBuf,
    pub(super) handshake_timeout_ms: u64,
}

impl Default for ProxySection {
    fn default() -> Self {
        Self {
            transparent_listen: None,
            explicit_listen: None,
            admin_listen: "127.0.0.1:9901".into(),
            metrics_listen: None,
            state_dir: PathBuf::from("state"),
            handshake_timeout_ms: super::DEFAULT_HANDSHAKE_TIMEOUT.as_millis() as u64,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct PolicySection {
    pub(super) bundle: Option<PathBuf>,
    pub(super) query: String,
    pub(super) eval_timeout_ms: u64,
    pub(super) connect_stage: String,
    pub(super) evaluator: String,
}

impl Default for PolicySection {
    fn default() -> Self {
        Self {
            bundle: None,
            query: cordon_policy::DEFAULT_QUERY.into(),
            eval_timeout_ms: cordon_policy::engine::DEFAULT_EVAL_TIMEOUT.as_millis() as u64,
            connect_stage: "evaluate".into(),
            evaluator: "auto".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct TlsSection {
    pub(super) ca_cert: Option<PathBuf>,
    pub(super) ca_key: Option<PathBuf>,
    pub(super) upstream_extra_roots: Vec<PathBuf>,
    pub(super) cert_cache_size: usize,
    pub(super) leaf_validity_hours: u64,
    pub(super) no_sni: String,
}

impl Default for TlsSection {
    fn default() -> Self {
        Self {
            ca_cert: None,
            ca_key: None,
            upstream_extra_roots: Vec::new(),
            cert_cache_size: super::DEFAULT_CERT_CACHE_SIZE,
            leaf_validity_hours: super::DEFAULT_LEAF_VALIDITY.as_secs() / 3600,
            no_sni: "deny".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct UpstreamSection {
    pub(super) connect_to: BTreeMap<String, String>,
    pub(super) allow_private: Vec<String>,
    pub(super) connect_timeout_ms: u64,
    pub(super) read_timeout_ms: u64,
}

impl Default for UpstreamSection {
    fn default() -> Self {
        Self {
            connect_to: BTreeMap::new(),
            allow_private: Vec::new(),
            connect_timeout_ms: super::DEFAULT_UPSTREAM_CONNECT_TIMEOUT.as_millis() as u64,
            read_timeout_ms: super::DEFAULT_UPSTREAM_READ_TIMEOUT.as_millis() as u64,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct AuditSection {
    /// A file, or "-" for standard output.
    pub(super) path: Option<PathBuf>,
    /// How long a record may wait to be written with others; 0 writes each at once.
    pub(super) flush_interval_ms: u64,
}

impl Default for AuditSection {
    fn default() -> Self {
        Self {
            path: None,
            flush_interval_ms: super::DEFAULT_AUDIT_FLUSH_INTERVAL.as_millis() as u64,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct CredentialsSection {
    /// The secret store file (docs/CREDENTIALS.md); absent means no secrets.
    pub(super) store: Option<PathBuf>,
    /// How often to check the store's files for changes; 0 turns the watcher off.
    pub(super) watch_interval_ms: u64,
}

impl Default for CredentialsSection {
    fn default() -> Self {
        Self {
            store: None,
            watch_interval_ms: 2000,
        }
    }
}

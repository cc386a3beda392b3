//! Everything the listeners and request phases share, built once at startup.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cordon_policy::PolicyEngine;

use crate::audit::AuditLog;
use crate::config::ProxyConfig;
use crate::connection::ConnectionRegistry;
use crate::credentials::{MintError, Placeholders, SecretStore};
use crate::intercept::ca::CertificateAuthority;
use crate::intercept::leaf_cache::LeafCache;
use crate::metrics::ProxyMetrics;
use crate::sessions::SessionRegistry;
use crate::upstream::UpstreamResolver;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("policy: {0}")]
    Policy(#[from] cordon_policy::PolicyLoadError),
    #[error("interception CA: {0}")]
    Ca(#[from] crate::intercept::ca::CaLoadError),
    #[error("audit log: {0}")]
    Audit(std::io::Error),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("secret store: {0}")]
    Secrets(#[from] crate::credentials::SecretsLoadError),
}

/// The gateway's shared state.
#[derive(Debug)]
pub struct GatewayState {
    pub config: ProxyConfig,
    pub policy: PolicyEngine,
    pub sessions: SessionRegistry,
    pub connections: ConnectionRegistry,
    pub resolver: UpstreamResolver,
    /// TLS upstreams that refused an HTTP/1.1-only ALPN offer.
    pub http2_only: crate::upstream::protocols::Http2Only,
    pub metrics: ProxyMetrics,
    pub audit: AuditLog,
    pub secrets: SecretStore,
    pub placeholders: Placeholders,
    /// The DNS stub's synthetic addresses, shared with the transparent listener.
    pub names: crate::dns::SyntheticNames,
    pub ca: Arc<CertificateAuthority>,
    pub leaves: Arc<LeafCache>,
    id_prefix: String,
    next_id: AtomicU64,
}

impl GatewayState {
    pub fn new(config: ProxyConfig) -> Result<Self, StartError> {
        let policy = PolicyEngine::load(config.policy.clone())?;
        let ca = Arc::new(CertificateAuthority::load_or_generate(
            &config.tls.ca_cert,
            &config.tls.ca_key,
            config.tls.leaf_validity,
        )?);
        let metrics = ProxyMetrics::new()?;
        metrics.set_generation(policy.generation().info());
        let leaves = Arc::new(LeafCache::new(
            ca.clone(),
            config.tls.cert_cache_size,
            metrics.leaf_cache(),
        ));
        let audit = AuditLog::open(&config.audit_path, config.audit_flush_interval)
            .map_err(StartError::Audit)?;
        let secrets = match &config.credentials_store {
            Some(path) => SecretStore::load(path)?,
            None => SecretStore::empty(),
        };
        Ok(Self {
            resolver: UpstreamResolver::new(config.upstream.clone()),
            http2_only: Default::default(),
            policy,
            sessions: SessionRegistry::default(),
            connections: ConnectionRegistry::default(),
            metrics,
            audit,
            secrets,
            placeholders: Placeholders::default(),
            names: crate::dns::SyntheticNames::new(config.dns.synthetic_range),
            ca,
            leaves,
            // Decision ids are unique across restarts: a random prefix per process, a counter.
            id_prefix: format!("{:08x}", rand::random::<u32>()),
            next_id: AtomicU64::new(1),
            config,
        })
    }

    /// A new decision id (also the request id the policy sees).
    pub fn next_decision_id(&self) -> String {
        decision_id(
            &self.id_prefix,
            self.next_id.fetch_add(1, Ordering::Relaxed),
        )
    }

    /// The placeholders of `secrets` for the registered session `session`, minting those not
    /// minted yet. All or nothing: an unknown secret mints none.
    pub fn mint_placeholders(
        &self,
        session: &str,
        secrets: &[String],
    ) -> Result<std::collections::BTreeMap<String, String>, MintError> {
        if !self.sessions.contains(session) {
            return Err(MintError::UnknownSession(session.to_string()));
        }
        let set = self.secrets.current();
        let mut prefixes = Vec::with_capacity(secrets.len());
        for name in secrets {
            let secret = set
                .get(name)
                .ok_or_else(|| MintError::UnknownSecret(name.clone()))?;
            prefixes.push((name, secret.placeholder_prefix.as_str()));
        }
        let minted = prefixes
            .into_iter()
            .map(|(name, prefix)| {
                let placeholder = self.placeholders.get_or_mint(session, name, prefix);
                (name.clone(), placeholder)
            })
            .collect();
        if self.forget_placeholders_if_gone(session) {
            return Err(MintError::UnknownSession(session.to_string()));
        }
        Ok(minted)
    }

    /// Ends a session: its registration and its placeholders.
    pub fn remove_session(&self, id: &str) -> Option<crate::sessions::SessionRecord> {
        // Registration first: a mint racing this sees the session gone (and undoes itself).
        let removed = self.sessions.remove(id);
        self.placeholders.remove_session(id);
        removed
    }

    /// Removes one source of session `id`; its placeholders go with its last source.
    pub fn remove_session_source(
        &self,
        id: &str,
        source: std::net::IpAddr,
    ) -> Option<crate::sessions::SessionRecord> {
        let removed = self.sessions.remove_source(id, source);
        if removed.is_some() && !self.sessions.contains(id) {
            self.placeholders.remove_session(id);
        }
        removed
    }

    /// After minting for `session`: if it was removed meanwhile, the mint is undone.
    pub fn forget_placeholders_if_gone(&self, session: &str) -> bool {
        if self.sessions.contains(session) {
            return false;
        }
        self.placeholders.remove_session(session);
        true
    }

    /// Reloads the secret store (rotation); a failure keeps the last good set.
    pub fn reload_secrets(&self) -> Result<usize, crate::credentials::SecretsLoadError> {
        match self.secrets.reload() {
            Ok(count) => {
                tracing::info!(secrets = count, "secret store reloaded");
                Ok(count)
            }
            Err(e) => {
                tracing::error!(error = %e, "secret store reload failed; the previous secrets stay in use");
                Err(e)
            }
        }
    }

    /// Reloads the policy; the metrics follow the serving generation.
    pub fn reload_policy(
        &self,
    ) -> Result<cordon_policy::GenerationInfo, cordon_policy::PolicyLoadError> {
        match self.policy.reload() {
            Ok(info) => {
                self.metrics.set_generation(&info);
                self.metrics
                    .policy_reloads
                    .with_label_values(&["success"])
                    .inc();
                tracing::info!(generation = %info.id, "policy reloaded");
                Ok(info)
            }
            Err(e) => {
                self.metrics
                    .policy_reloads
                    .with_label_values(&["failure"])
                    .inc();
                tracing::error!(error = %e, "policy reload failed; the previous generation keeps serving");
                Err(e)
            }
        }
    }
}

/// `<prefix>-<n in lower-case hex>`, built without `format!`: this runs for every request.
fn decision_id(prefix: &str, n: u64) -> String {
    let mut id = String::with_capacity(prefix.len() + 17);
    id.push_str(prefix);
    id.push('-');
    let digits = (64 - n.leading_zeros()).div_ceil(4).max(1);
    for shift in (0..digits).rev() {
        let nibble = ((n >> (shift * 4)) & 0xf) as u32;
        id.push(char::from_digit(nibble, 16).unwrap_or('0'));
    }
    id
}

#[cfg(test)]
mod tests {
    #[test]
    fn decision_ids_are_the_prefix_and_the_counter_in_hex() {
        for n in [0, 1, 9, 10, 15, 16, 255, 4096, 0xdead_beef, u64::MAX] {
            assert_eq!(super::decision_id("0a1b2c3d", n), format!("0a1b2c3d-{n:x}"));
        }
    }
}

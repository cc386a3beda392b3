//! The leaf certificate cache and the rustls resolver that serves from it.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use lru::LruCache;
use prometheus::IntCounter;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::ca::{CertificateAuthority, MintError};

/// Counters the cache reports into (owned by the proxy's metrics).
#[derive(Debug, Clone)]
pub struct LeafCacheMetrics {
    pub minted: IntCounter,
    pub hits: IntCounter,
}

/// Minted leaves by server name, least recently used evicted first.
///
/// The lock is held only to look up and to insert; minting (an ECDSA signature) happens outside
/// it, so one slow mint never stalls handshakes for other names. Two connections racing for the
/// same new name may both mint; the second insert wins, and both leaves are valid.
pub struct LeafCache {
    ca: Arc<CertificateAuthority>,
    entries: Mutex<LruCache<String, (Arc<CertifiedKey>, Instant)>>,
    metrics: LeafCacheMetrics,
}

impl std::fmt::Debug for LeafCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeafCache").finish_non_exhaustive()
    }
}

impl LeafCache {
    pub fn new(
        ca: Arc<CertificateAuthority>,
        capacity: NonZeroUsize,
        metrics: LeafCacheMetrics,
    ) -> Self {
        Self {
            ca,
            entries: Mutex::new(LruCache::new(capacity)),
            metrics,
        }
    }

    /// The leaf for `name` (lower-cased by the caller), minted on a miss. Leaves are re-minted
    /// after half their validity so a cached leaf never expires in a client's hands.
    pub fn leaf(&self, name: &str) -> Result<Arc<CertifiedKey>, MintError> {
        let fresh_for = self.ca.leaf_validity() / 2;
        if let Ok(mut entries) = self.entries.lock()
            && let Some((leaf, minted)) = entries.get(name)
            && minted.elapsed() < fresh_for
        {
            self.metrics.hits.inc();
            return Ok(leaf.clone());
        }
        let leaf = self.ca.mint(name)?;
        self.metrics.minted.inc();
        if let Ok(mut entries) = self.entries.lock() {
            entries.put(name.to_string(), (leaf.clone(), Instant::now()));
        }
        Ok(leaf)
    }
}

/// Serves the leaf for the ClientHello's SNI. Without SNI it has nothing to present and the
/// handshake fails; the listener decides before the handshake whether such a client is refused
/// or served a leaf for its original destination address.
#[derive(Debug)]
pub struct SniResolver {
    pub cache: Arc<LeafCache>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?.to_ascii_lowercase();
        match self.cache.leaf(&name) {
            Ok(leaf) => Some(leaf),
            Err(e) => {
                tracing::warn!(error = %e, "leaf minting failed");
                None
            }
        }
    }
}

/// Always serves one leaf: for a client without SNI, minted for its original destination.
#[derive(Debug)]
pub struct FixedResolver(pub Arc<CertifiedKey>);

impl ResolvesServerCert for FixedResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

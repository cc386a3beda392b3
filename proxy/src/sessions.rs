//! The session registry: which CMA session a sandbox source address belongs to.
//!
//! The controller registers a session's address through the admin API before the sandbox
//! starts and removes it after the sandbox is gone. A source nobody registered is session
//! `unknown`, and the policy decides what such a source may do (the examples deny it).
//!
//! One source is one session's. A session usually has one source, and registering it at a
//! new one moves it; a `shared` registration adds a source instead, for identities that act
//! from several places at once (a custom tool, `tool:<name>`, has a sandbox or a loopback
//! address per call in flight, each with labels naming its calling session).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use cordon_policy::SessionInput;

/// A registered session.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionRecord {
    pub id: String,
    pub source: IpAddr,
    #[serde(default)]
    pub agent_id: Option<String>,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// Why a registration was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegisterError {
    #[error(
        "source {address} is already registered to session {holder}; remove that session first"
    )]
    SourceTaken { address: IpAddr, holder: String },
    #[error(
        "session id {0:?} is not valid: use 1-128 characters of letters, digits, '_', '-', '.', ':'"
    )]
    BadId(String),
}

/// Source address -> session, and session id -> source address.
#[derive(Debug, Default)]
pub struct SessionRegistry {
    inner: RwLock<Registry>,
}

#[derive(Debug, Default)]
struct Registry {
    by_source: HashMap<IpAddr, SessionRecord>,
    /// Every source of a session (one, unless registered `shared`).
    by_id: HashMap<String, Vec<IpAddr>>,
    /// Egress decisions per registered session, for the controller's sessions view.
    egress: HashMap<String, Arc<EgressCounts>>,
}

/// Egress decisions made for one registered session since it was registered.
#[derive(Debug, Default)]
pub struct EgressCounts {
    pub allowed: AtomicU64,
    pub denied: AtomicU64,
}

/// A registration with its counts, as `GET /sessions` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionListing {
    #[serde(flatten)]
    pub record: SessionRecord,
    pub egress: EgressTotals,
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct EgressTotals {
    pub allowed: u64,
    pub denied: u64,
}

impl SessionRegistry {
    /// Registers (or re-registers, with new labels) a session. One source maps to one session:
    /// a second session claiming a taken source is refused, so no sandbox can pose as another.
    /// Unless `shared`, the session's other sources are released (it moved).
    pub fn register(&self, mut record: SessionRecord, shared: bool) -> Result<(), RegisterError> {
        if !valid_id(&record.id) {
            return Err(RegisterError::BadId(record.id));
        }
        record.source = normalise(record.source);
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if let Some(holder) = inner.by_source.get(&record.source)
            && holder.id != record.id
        {
            return Err(RegisterError::SourceTaken {
                address: record.source,
                holder: holder.id.clone(),
            });
        }
        let sources = inner.by_id.entry(record.id.clone()).or_default();
        let moved: Vec<IpAddr> = if shared {
            Vec::new()
        } else {
            let old = std::mem::take(sources);
            old.into_iter().filter(|s| *s != record.source).collect()
        };
        if !sources.contains(&record.source) {
            sources.push(record.source);
        }
        for old in moved {
            inner.by_source.remove(&old);
        }
        inner.egress.entry(record.id.clone()).or_default();
        inner.by_source.insert(record.source, record);
        Ok(())
    }

    /// Removes a session, every source of it; returns it if it was registered.
    pub fn remove(&self, id: &str) -> Option<SessionRecord> {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let sources = inner.by_id.remove(id)?;
        inner.egress.remove(id);
        let mut removed = None;
        for source in sources {
            removed = inner.by_source.remove(&source).or(removed);
        }
        removed
    }

    /// Removes one source of session `id`, and the session with its last source; returns the
    /// registration removed, if `source` was `id`'s.
    pub fn remove_source(&self, id: &str, source: IpAddr) -> Option<SessionRecord> {
        let source = normalise(source);
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if inner.by_source.get(&source).is_none_or(|r| r.id != id) {
            return None;
        }
        let removed = inner.by_source.remove(&source);
        let last = match inner.by_id.get_mut(id) {
            Some(sources) => {
                sources.retain(|s| *s != source);
                sources.is_empty()
            }
            None => true,
        };
        if last {
            inner.by_id.remove(id);
            inner.egress.remove(id);
        }
        removed
    }

    /// Whether session `id` is registered.
    pub fn contains(&self, id: &str) -> bool {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.by_id.contains_key(id)
    }

    /// Whether `source` still belongs to session `id`: a connection keeps the session it was
    /// opened under, and one that outlived its session (deregistered, or the address given to
    /// another) must carry no more requests under it.
    pub fn still_holds(&self, source: IpAddr, id: &str) -> bool {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner
            .by_source
            .get(&normalise(source))
            .is_some_and(|r| r.id == id)
    }

    /// Every registration of session `id`, one per source, in the order they were made.
    pub fn records_of(&self, id: &str) -> Vec<SessionRecord> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner
            .by_id
            .get(id)
            .into_iter()
            .flatten()
            .filter_map(|source| inner.by_source.get(source).cloned())
            .collect()
    }

    /// The session of a source address, or `unknown`.
    pub fn lookup(&self, source: IpAddr) -> SessionInput {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        match inner.by_source.get(&normalise(source)) {
            Some(r) => SessionInput {
                id: r.id.clone(),
                agent_id: r.agent_id.clone(),
                labels: r.labels.clone(),
            },
            None => SessionInput::unknown(),
        }
    }

    pub fn list(&self) -> Vec<SessionRecord> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = inner.by_source.values().cloned().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// Counts one egress decision (a request, or a refused connection) for session `id`;
    /// unregistered sessions are not counted.
    pub fn count_decision(&self, id: &str, allowed: bool) {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        if let Some(counts) = inner.egress.get(id) {
            let counter = if allowed {
                &counts.allowed
            } else {
                &counts.denied
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every registration with its egress counts, by id.
    pub fn listing(&self) -> Vec<SessionListing> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<SessionListing> = inner
            .by_source
            .values()
            .map(|record| {
                let counts = inner.egress.get(&record.id);
                let load = |c: Option<&AtomicU64>| c.map_or(0, |c| c.load(Ordering::Relaxed));
                SessionListing {
                    record: record.clone(),
                    egress: EgressTotals {
                        allowed: load(counts.map(|c| &c.allowed)),
                        denied: load(counts.map(|c| &c.denied)),
                    },
                }
            })
            .collect();
        all.sort_by(|a, b| a.record.id.cmp(&b.record.id));
        all
    }

    pub fn len(&self) -> usize {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_source
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// IPv4-mapped IPv6 sources (from dual-stack listeners) are their IPv4 address.
fn normalise(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id != SessionInput::UNKNOWN_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, source: &str) -> SessionRecord {
        SessionRecord {
            id: id.into(),
            source: source.parse().unwrap(),
            agent_id: Some("agent_1".into()),
            labels: [("team".to_string(), "infra".to_string())].into(),
        }
    }

    #[test]
    fn finds_registered_sessions_and_calls_the_rest_unknown() {
        let registry = SessionRegistry::default();
        registry
            .register(record("sesn_a", "10.200.0.2"), false)
            .unwrap();
        let found = registry.lookup("10.200.0.2".parse().unwrap());
        assert_eq!(found.id, "sesn_a");
        assert_eq!(found.labels["team"], "infra");
        assert_eq!(
            registry.lookup("::ffff:10.200.0.2".parse().unwrap()).id,
            "sesn_a"
        );
        assert_eq!(registry.lookup("10.200.0.6".parse().unwrap()).id, "unknown");
    }

    #[test]
    fn one_source_belongs_to_one_session() {
        let registry = SessionRegistry::default();
        registry
            .register(record("sesn_a", "10.200.0.2"), false)
            .unwrap();
        let err = registry
            .register(record("sesn_b", "10.200.0.2"), false)
            .unwrap_err();
        assert!(matches!(err, RegisterError::SourceTaken { .. }));
        // Re-registering the same session (new labels) is fine; moving it frees the old source.
        registry
            .register(record("sesn_a", "10.200.0.6"), false)
            .unwrap();
        assert_eq!(registry.lookup("10.200.0.2".parse().unwrap()).id, "unknown");
        assert_eq!(registry.len(), 1);
    }

    #[test]
    fn removal_forgets_the_source() {
        let registry = SessionRegistry::default();
        registry
            .register(record("sesn_a", "10.200.0.2"), false)
            .unwrap();
        assert!(registry.remove("sesn_a").is_some());
        assert!(registry.remove("sesn_a").is_none());
        assert_eq!(registry.lookup("10.200.0.2".parse().unwrap()).id, "unknown");
    }

    #[test]
    fn refuses_bad_ids() {
        let registry = SessionRegistry::default();
        for id in ["", "unknown", "a b", "a/b", &"x".repeat(129)] {
            assert!(
                registry.register(record(id, "10.0.0.1"), false).is_err(),
                "{id}"
            );
        }
    }

    #[test]
    fn a_shared_session_holds_several_sources_each_removed_alone() {
        let registry = SessionRegistry::default();
        let mut a = record("tool:lookup", "127.77.0.1");
        a.labels = [("session".to_string(), "sesn_1".to_string())].into();
        let mut b = record("tool:lookup", "127.77.0.2");
        b.labels = [("session".to_string(), "sesn_2".to_string())].into();
        registry.register(a, true).unwrap();
        registry.register(b, true).unwrap();
        let first = registry.lookup("127.77.0.1".parse().unwrap());
        let second = registry.lookup("127.77.0.2".parse().unwrap());
        assert_eq!(
            (first.id.as_str(), second.id.as_str()),
            ("tool:lookup", "tool:lookup")
        );
        assert_eq!(first.labels["session"], "sesn_1");
        assert_eq!(second.labels["session"], "sesn_2");
        // Another id's source is not removed by this id, nor taken by it.
        registry
            .register(record("sesn_a", "10.200.0.2"), false)
            .unwrap();
        assert!(
            registry
                .remove_source("tool:lookup", "10.200.0.2".parse().unwrap())
                .is_none()
        );
        assert!(
            registry
                .register(record("tool:lookup", "10.200.0.2"), true)
                .is_err()
        );
        registry.count_decision("tool:lookup", true);
        assert!(
            registry
                .remove_source("tool:lookup", "127.77.0.1".parse().unwrap())
                .is_some()
        );
        assert_eq!(registry.lookup("127.77.0.1".parse().unwrap()).id, "unknown");
        assert!(registry.contains("tool:lookup"));
        assert_eq!(
            registry
                .listing()
                .iter()
                .find(|l| l.record.id == "tool:lookup")
                .unwrap()
                .egress
                .allowed,
            1
        );
        assert!(
            registry
                .remove_source("tool:lookup", "127.77.0.2".parse().unwrap())
                .is_some()
        );
        assert!(!registry.contains("tool:lookup"));
        // An unshared registration moves the session, dropping its shared sources too.
        registry
            .register(record("tool:x", "127.77.0.3"), true)
            .unwrap();
        registry
            .register(record("tool:x", "127.77.0.4"), true)
            .unwrap();
        registry
            .register(record("tool:x", "127.77.0.5"), false)
            .unwrap();
        assert_eq!(registry.lookup("127.77.0.3".parse().unwrap()).id, "unknown");
        assert_eq!(registry.lookup("127.77.0.5".parse().unwrap()).id, "tool:x");
    }
}

//! How the database's failed writes are reported: counted by kind, and a full disk logged once
//! when it starts refusing writes and once when a write succeeds again (an episode), however
//! many writes it refused and however many of the controller's stores hit it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus::{IntCounterVec, IntGauge};

use super::StoreError;

/// The kinds `cordon_controller_store_write_errors_total` counts.
const WRITE_ERROR_KINDS: [&str; 2] = ["disk_full", "other"];

/// Shared by every store of one controller (clones share the episode).
#[derive(Debug, Clone)]
pub struct StoreHealth {
    /// `cordon_controller_store_write_errors_total{kind}`.
    errors: IntCounterVec,
    /// `cordon_controller_store_disk_full`: 1 from the first write a full disk refused to the
    /// next write that succeeded.
    disk_full: IntGauge,
    full: Arc<AtomicBool>,
}

impl StoreHealth {
    pub fn new(errors: IntCounterVec, disk_full: IntGauge) -> Self {
        for kind in WRITE_ERROR_KINDS {
            errors.with_label_values(&[kind]);
        }
        Self {
            errors,
            disk_full,
            full: Arc::default(),
        }
    }

    /// A write to the database at `path` failed with `error`. Refusals that are the
    /// records' own rules (a live session, an exhausted pool) are not failures.
    pub(super) fn failed(&self, path: &Path, error: &StoreError) {
        match error {
            StoreError::DiskFull(source) => {
                self.errors.with_label_values(&["disk_full"]).inc();
                if !self.full.swap(true, Ordering::SeqCst) {
                    self.disk_full.set(1);
                    tracing::error!(
                        database = %path.display(),
                        error = %source,
                        "the state disk is full: the controller's database refuses writes \
                         (webhook deliveries are answered 503, new work stays queued) until \
                         space returns"
                    );
                }
            }
            StoreError::Sqlite(_) => self.errors.with_label_values(&["other"]).inc(),
            StoreError::Create { .. }
            | StoreError::AlreadyLive(_)
            | StoreError::PoolExhausted(_) => {}
        }
    }

    /// A write to the database at `path` changed records: if the disk was full, it has room
    /// again.
    pub(super) fn wrote(&self, path: &Path) {
        if self.full.swap(false, Ordering::SeqCst) {
            self.disk_full.set(0);
            tracing::warn!(
                database = %path.display(),
                "the state disk has room again: the controller's database takes writes again"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Store;
    use crate::metrics::ControllerMetrics;

    fn sample(metrics: &ControllerMetrics, name: &str) -> String {
        metrics
            .render()
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default()
            .to_string()
    }

    /// SQLite's page limit stands in for a full disk (both are SQLITE_FULL); the root tier
    /// (tests/state_disk.rs) fills a real one.
    #[test]
    fn a_full_database_refuses_writes_whole_reports_one_episode_and_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        let metrics = ControllerMetrics::new().unwrap();
        store.report_to(metrics.store.clone());
        store.claim("s1", 4, "tok", false).unwrap();
        store.set_running("s1", "sandbox").unwrap();
        let pages: u64 = store
            .conn()
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        store
            .conn()
            .execute_batch(&format!("PRAGMA max_page_count = {pages}"))
            .unwrap();
        // Deliveries until one needs a page the limit refuses.
        let pad = "x".repeat(2000);
        let refused = (0..200)
            .map(|n| format!("evt_{n}_{pad}"))
            .find_map(|id| {
                match store.record_webhook(&id, "session.status_terminated", Some(&id), None, true)
                {
                    Ok(_) => None,
                    Err(e) => Some((id, e)),
                }
            })
            .expect("the page limit refuses a delivery");
        let (id, error) = refused;
        assert!(error.is_disk_full(), "{error:?}");
        assert!(
            error.to_string().contains("the state disk is full"),
            "{error}"
        );
        // Whole or nothing: neither the event nor the session's end was kept.
        assert!(store.webhooks(1000).unwrap().iter().all(|w| w.id != id));
        assert_eq!(store.workspace(&id).unwrap(), None);
        // A token longer than a page needs pages of its own.
        let token = "t".repeat(5000);
        assert!(
            store
                .claim("s2", 4, &token, false)
                .unwrap_err()
                .is_disk_full()
        );
        assert_eq!(
            sample(
                &metrics,
                "cordon_controller_store_write_errors_total{kind=\"disk_full\"}"
            ),
            "cordon_controller_store_write_errors_total{kind=\"disk_full\"} 2"
        );
        assert_eq!(
            sample(&metrics, "cordon_controller_store_disk_full"),
            "cordon_controller_store_disk_full 1"
        );
        // The live session is untouched and readable throughout.
        assert_eq!(
            store.get("s1").unwrap().unwrap().state,
            super::super::SessionState::Running
        );

        store
            .conn()
            .execute_batch("PRAGMA max_page_count = 1073741823")
            .unwrap();
        assert!(
            store
                .record_webhook(&id, "session.status_terminated", Some(&id), None, true)
                .unwrap()
        );
        assert!(store.workspace(&id).unwrap().unwrap().ended_at.is_some());
        assert_eq!(store.claim("s2", 4, &token, false).unwrap().slot, 1);
        assert_eq!(
            sample(&metrics, "cordon_controller_store_disk_full"),
            "cordon_controller_store_disk_full 0"
        );
        let check: String = store
            .conn()
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }
}

//! The proxy's egress decisions as the dashboard reads them: the controller's index of the
//! audit log (`crate::egress` ingests it into the store) and news of new rows. A read that
//! fails is logged and shows as nothing: the pages are a report, not a decision.

use crate::egress::{EgressIngester, EgressSubscription};
use crate::store::Store;
use crate::store::egress::EgressRate;
pub use crate::store::egress::EgressRow;

/// Reads of the indexed decisions.
#[derive(Debug)]
pub struct EgressFeed {
    store: Store,
    /// Where news of stored batches comes from.
    ingester: EgressIngester,
}

/// One minute of the overview's chart.
#[derive(Debug, Clone, Copy, Default)]
pub struct Minute {
    pub allowed: u64,
    pub denied: u64,
}

impl EgressFeed {
    pub fn new(store: Store, ingester: EgressIngester) -> Self {
        Self { store, ingester }
    }

    /// News of every batch stored from now on.
    pub fn subscribe(&self) -> EgressSubscription {
        self.ingester.subscribe()
    }

    fn logged<T: Default>(what: &str, result: Result<T, crate::store::StoreError>) -> T {
        result.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "dashboard: cannot read {what}");
            T::default()
        })
    }

    /// A session's newest decisions, newest first.
    pub fn for_session(&self, session: &str, limit: u32) -> Vec<EgressRow> {
        Self::logged(
            "a session's egress",
            self.store
                .egress_for_session(session, None, limit)
                .map(|page| page.rows),
        )
    }

    /// The newest denials of every session.
    pub fn recent_denials(&self, limit: u32) -> Vec<EgressRow> {
        Self::logged("the latest denials", self.store.recent_denials(limit))
    }

    /// Decisions per minute from `since_ms` to now, a slot for every minute (zeros where none).
    pub fn rates(&self, since_ms: i64) -> Vec<Minute> {
        let now_ms = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
        let stored: Vec<EgressRate> =
            Self::logged("egress rates", self.store.egress_rates(since_ms, now_ms));
        stored
            .into_iter()
            .map(|rate| Minute {
                allowed: rate.allowed,
                denied: rate.denied + rate.errors,
            })
            .collect()
    }
}

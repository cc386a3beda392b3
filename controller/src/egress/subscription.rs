//! Live updates: each stored batch is announced (ids and sessions) on a broadcast channel, so
//! a dashboard page streaming a session's decisions (server-sent events) queries the database
//! when that session has new rows, not once a second per open browser.

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::store::egress::InsertedEgress;

/// Batches a subscriber may fall behind by before it is told it lagged (and then simply
/// queries): a batch is a poll's worth, so this is many seconds of a slow reader.
pub(super) const CAPACITY: usize = 256;

/// One browser's (or any reader's) view of the stored batches.
#[derive(Debug)]
pub struct EgressSubscription {
    updates: broadcast::Receiver<Arc<InsertedEgress>>,
    /// The highest id announced so far.
    seen: i64,
}

impl EgressSubscription {
    pub(super) fn new(updates: broadcast::Receiver<Arc<InsertedEgress>>) -> Self {
        Self { updates, seen: 0 }
    }

    /// Waits until rows of `session` (`None`: of any session) may have been stored, and
    /// returns the highest id stored by then. Batches already waiting are taken together (one
    /// wake for a burst); after falling behind, it wakes without knowing whose rows they were.
    /// `None` once the ingester has stopped.
    ///
    /// Subscribe before reading the first page, start `checked` at the page's `latest_id`,
    /// and on each wake call `store.egress_since(session, checked, limit)`: when fewer than
    /// `limit` rows come back, `checked` becomes the larger of the returned id and the last
    /// row's id; when `limit` do, the last row's id, and query again. Each query then reads
    /// only the rows stored since the previous one, and none is sent twice.
    pub async fn changed(&mut self, session: Option<&str>) -> Option<i64> {
        let mut wake = false;
        loop {
            let next = if wake {
                match self.updates.try_recv() {
                    Err(broadcast::error::TryRecvError::Empty) => return Some(self.seen),
                    Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
                    Err(broadcast::error::TryRecvError::Closed) => return Some(self.seen),
                    Ok(batch) => batch,
                }
            } else {
                match self.updates.recv().await {
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        wake = true;
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                    Ok(batch) => batch,
                }
            };
            self.seen = self.seen.max(next.last_id);
            if session.is_none_or(|s| next.sessions.iter().any(|b| b == s)) {
                wake = true;
            }
        }
    }
}

//! The latest webhook deliveries and how each was answered, for the dashboard's webhooks page.
//!
//! Kept in memory and bounded: a refused delivery is unauthenticated input, so writing each to
//! disk would let anyone who can reach the webhook listener make the controller write; the
//! accepted ones are in the store (`webhook_events`) as well.

use std::collections::VecDeque;
use std::sync::Mutex;

/// Deliveries kept of each kind (verified, refused).
pub const KEPT: usize = 200;

/// How a delivery was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryOutcome {
    Accepted,
    Duplicate,
    /// The signature, a header or the timestamp did not verify (401).
    Unauthorized,
    /// Verified, but not a CMA event (400).
    BadRequest,
    /// Verified, but not recorded (a full disk, a database error): CMA redelivers.
    Error,
}

impl DeliveryOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryOutcome::Accepted => "accepted",
            DeliveryOutcome::Duplicate => "duplicate",
            DeliveryOutcome::Unauthorized => "unauthorized",
            DeliveryOutcome::BadRequest => "bad_request",
            DeliveryOutcome::Error => "error",
        }
    }
}

/// One delivery. The event's id, type and session are shown only once its signature verified:
/// before that they are whatever the sender wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeliveryRecord {
    /// RFC 3339 UTC.
    pub received_at: String,
    pub outcome: DeliveryOutcome,
    pub event_id: Option<String>,
    pub kind: Option<String>,
    pub session: Option<String>,
    /// Why it was refused, in the controller's words.
    pub detail: Option<String>,
}

/// The latest [`KEPT`] verified deliveries and [`KEPT`] refused ones, kept apart so that a
/// flood of unsigned junk cannot push the real ones off the page.
#[derive(Debug, Default)]
pub struct DeliveryLog {
    verified: Mutex<VecDeque<DeliveryRecord>>,
    refused: Mutex<VecDeque<DeliveryRecord>>,
}

impl DeliveryLog {
    pub fn push(&self, record: DeliveryRecord) {
        let ring = match record.outcome {
            DeliveryOutcome::Unauthorized => &self.refused,
            _ => &self.verified,
        };
        let mut entries = ring.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() == KEPT {
            entries.pop_front();
        }
        entries.push_back(record);
    }

    /// Both kinds, newest first.
    pub fn latest(&self) -> Vec<DeliveryRecord> {
        let mut all: Vec<DeliveryRecord> = [&self.verified, &self.refused]
            .iter()
            .flat_map(|ring| {
                let entries = ring.lock().unwrap_or_else(|e| e.into_inner());
                entries.iter().cloned().collect::<Vec<_>>()
            })
            .collect();
        // RFC 3339 UTC times of one format sort as text; stable, so same-time order holds.
        all.sort_by(|a, b| b.received_at.cmp(&a.received_at));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: usize) -> DeliveryRecord {
        DeliveryRecord {
            received_at: format!("{n:04}"),
            outcome: DeliveryOutcome::Accepted,
            event_id: None,
            kind: None,
            session: None,
            detail: None,
        }
    }

    #[test]
    fn keeps_the_latest_deliveries_newest_first() {
        let log = DeliveryLog::default();
        for n in 0..KEPT + 5 {
            log.push(record(n));
        }
        let latest = log.latest();
        assert_eq!(latest.len(), KEPT);
        assert_eq!(latest[0].received_at, format!("{:04}", KEPT + 4));
        assert_eq!(latest[KEPT - 1].received_at, "0005");
        // Refused deliveries have their own ring.
        for n in 0..KEPT * 2 {
            log.push(DeliveryRecord {
                outcome: DeliveryOutcome::Unauthorized,
                ..record(9000 + n)
            });
        }
        let latest = log.latest();
        assert_eq!(latest.len(), 2 * KEPT);
        assert_eq!(
            latest
                .iter()
                .filter(|d| d.outcome == DeliveryOutcome::Accepted)
                .count(),
            KEPT
        );
    }
}

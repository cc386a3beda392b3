//! When a run stops: a deadline, and optionally a count of requests shared by all workers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

#[derive(Debug)]
pub(crate) struct Budget {
    deadline: Instant,
    remaining: Option<AtomicU64>,
}

impl Budget {
    pub(crate) fn new(deadline: Instant, requests: Option<u64>) -> Self {
        Self {
            deadline,
            remaining: requests.map(AtomicU64::new),
        }
    }

    /// Claims one request; false once the deadline has passed or the count is spent.
    pub(crate) fn take(&self) -> bool {
        if Instant::now() >= self.deadline {
            return false;
        }
        match &self.remaining {
            None => true,
            Some(left) => left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok(),
        }
    }

    /// True once no request can be claimed any more: the deadline passed or the count is spent.
    pub(crate) fn spent(&self) -> bool {
        Instant::now() >= self.deadline
            || self
                .remaining
                .as_ref()
                .is_some_and(|left| left.load(Ordering::Relaxed) == 0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_request_count_is_spent_exactly() {
        let budget = Budget::new(Instant::now() + Duration::from_secs(3600), Some(3));
        assert!(!budget.spent());
        assert_eq!((0..10).filter(|_| budget.take()).count(), 3);
        assert!(budget.spent());
    }

    #[test]
    fn a_past_deadline_stops_everything() {
        let budget = Budget::new(Instant::now(), None);
        assert!(!budget.take());
        assert!(budget.spent());
    }
}

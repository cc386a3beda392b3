//! Ordering of operations on one session: a start and a stop of the same session never
//! overlap, while operations on different sessions run side by side. One async mutex per
//! session id, made on first use and dropped when nobody holds or waits for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

type Entry = Arc<tokio::sync::Mutex<()>>;

#[derive(Debug, Default)]
pub(super) struct SessionLocks {
    inner: Arc<Mutex<HashMap<String, Entry>>>,
}

/// Held while one operation on a session runs.
#[derive(Debug)]
pub(super) struct SessionGuard {
    id: String,
    map: Arc<Mutex<HashMap<String, Entry>>>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl SessionLocks {
    /// Waits until no other operation on session `id` runs, then holds it off until the guard
    /// is dropped.
    pub(super) async fn lock(&self, id: &str) -> SessionGuard {
        let entry = self
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone();
        SessionGuard {
            id: id.to_string(),
            map: self.inner.clone(),
            guard: Some(entry.lock_owned().await),
        }
    }

    /// Whether no session has a lock entry (held or waited for).
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let guard = self.guard.take();
        // The map's reference and this guard's: nobody else waits, so the entry can go.
        if let Some(guard) = &guard
            && Arc::strong_count(OwnedMutexGuard::mutex(guard)) == 2
        {
            map.remove(&self.id);
        }
        drop(guard);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_session_is_ordered_and_others_are_not() {
        let locks = Arc::new(SessionLocks::default());
        let a = locks.lock("a").await;
        // Another session is not held up.
        let b = tokio::time::timeout(Duration::from_secs(1), locks.lock("b"))
            .await
            .expect("b waits for nobody");
        // The same session waits until the first operation is done.
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move { locks.lock("a").await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "a second operation on a waits");
        drop(a);
        let again = tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("released")
            .unwrap();
        drop((again, b));
        assert!(locks.is_empty(), "entries go when nobody needs them");
    }
}

//! The warm pool's records. A warm sandbox is a live session record (it holds a slot, the
//! firewall pins its address) whose id is a pool id and whose `pool` flag is set. A session
//! claims one in a single transaction that renames the record to the session's id, clears the
//! flag (so no second session can claim it) and hands the sandbox's fresh workspace to the
//! session; the sandbox keeps its pool id as `sandbox_id`, which names its host resources.

use rusqlite::{OptionalExtension, params};

use super::{SessionRecord, Store, StoreError, now};

impl Store {
    /// Gives session `id` a running warm sandbox on the image `digest`, if there is one and
    /// the session has no workspace of its own yet (a sandbox's workspace is fixed when it is
    /// created, so a session with one starts cold and mounts it). `None`: start cold.
    pub fn claim_warm(&self, id: &str, digest: &str) -> Result<Option<SessionRecord>, StoreError> {
        let claimed = self.write(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            super::refuse_live(&tx, id)?;
            let has_workspace: bool = tx.query_row(
                "SELECT EXISTS(SELECT 1 FROM workspaces WHERE session_id = ?1)",
                [id],
                |r| r.get(0),
            )?;
            if has_workspace {
                return Ok(false);
            }
            let Some(warm): Option<String> = tx
                .query_row(
                    "SELECT id FROM sessions WHERE pool = 1 AND state = 'running'
                 AND image_digest = ?1 ORDER BY created_at, id LIMIT 1",
                    [digest],
                    |r| r.get(0),
                )
                .optional()?
            else {
                return Ok(false);
            };
            tx.execute("DELETE FROM sessions WHERE id = ?1", [id])?;
            tx.execute(
                "UPDATE sessions SET id = ?1, sandbox_id = ?2, pool = 0, updated_at = ?3
             WHERE id = ?2",
                params![id, warm, now()],
            )?;
            tx.execute(
                "UPDATE workspaces SET session_id = ?1, dir = COALESCE(dir, ?2), ended_at = NULL
             WHERE session_id = ?2",
                params![id, warm],
            )?;
            tx.commit()?;
            Ok(true)
        })?;
        if claimed { self.get(id) } else { Ok(None) }
    }

    /// Takes warm sandbox `warm` out of the pool so it can be stopped; `false` when a
    /// session claimed it first.
    pub fn retire_warm(&self, warm: &str) -> Result<bool, StoreError> {
        self.write(|conn| {
            let changed = conn.execute(
                "UPDATE sessions SET pool = 0, updated_at = ?2 WHERE id = ?1 AND pool = 1",
                params![warm, now()],
            )?;
            Ok(changed == 1)
        })
    }

    /// Removes a record (a warm sandbox that was stopped without serving a session).
    pub fn forget_session(&self, id: &str) -> Result<(), StoreError> {
        self.write(|conn| {
            conn.execute("DELETE FROM sessions WHERE id = ?1", [id])?;
            Ok(())
        })
    }

    /// The warm sandboxes in the pool (starting or running), oldest first.
    pub fn warm(&self) -> Result<Vec<SessionRecord>, StoreError> {
        Ok(self.live()?.into_iter().filter(|r| r.warm).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warm_sandbox_is_claimed_once_and_only_by_a_session_without_a_workspace() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        let warm = store.claim(".warmA", 4, "tok", true).unwrap();
        assert!(warm.warm);
        store.set_image(".warmA", "default", "sha256:d").unwrap();
        store.workspace_used(".warmA", ".warmA").unwrap();
        assert_eq!(
            store.claim_warm("s1", "sha256:d").unwrap(),
            None,
            "a starting warm sandbox is not claimable"
        );
        store.set_running(".warmA", "sandbox").unwrap();
        assert_eq!(store.claim_warm("s1", "sha256:other").unwrap(), None);
        // A session that already has a workspace starts cold.
        store.workspace_used("old", "old").unwrap();
        assert_eq!(store.claim_warm("old", "sha256:d").unwrap(), None);

        let claimed = store.claim_warm("s1", "sha256:d").unwrap().unwrap();
        assert_eq!(
            (claimed.id.as_str(), claimed.sandbox_id.as_str()),
            ("s1", ".warmA")
        );
        assert!(!claimed.warm);
        assert_eq!((claimed.token.as_str(), claimed.slot), ("tok", warm.slot));
        assert_eq!(
            store.workspace_dir("s1").unwrap().as_deref(),
            Some(".warmA")
        );
        assert_eq!(store.workspace_dir(".warmA").unwrap(), None);
        assert!(store.get(".warmA").unwrap().is_none());
        // Claimed once: no second session gets it, and it can no longer be retired.
        assert_eq!(store.claim_warm("s2", "sha256:d").unwrap(), None);
        assert!(!store.retire_warm("s1").unwrap());
        assert!(matches!(
            store.claim_warm("s1", "sha256:d"),
            Err(StoreError::AlreadyLive(_))
        ));
        assert!(store.warm().unwrap().is_empty());

        let other = store.claim(".warmB", 4, "tok2", true).unwrap();
        assert!(store.retire_warm(&other.id).unwrap());
        assert!(store.warm().unwrap().is_empty(), "retired: out of the pool");
    }
}

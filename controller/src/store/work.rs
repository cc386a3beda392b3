//! Work items being served, so a restarted controller can resume them: the item (with its
//! sessions token; the database is readable by root only), the last heartbeat that holds its
//! lease, how many tool calls were answered, and how it ended.

use rusqlite::params;
use serde::{Deserialize, Serialize};

use super::{Store, StoreError, now};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS work (
    id             TEXT PRIMARY KEY,
    session_id     TEXT NOT NULL,
    item           TEXT NOT NULL,
    last_heartbeat TEXT,
    state          TEXT NOT NULL,
    end_reason     TEXT,
    tool_calls     INTEGER NOT NULL DEFAULT 0,
    egress_allowed INTEGER,
    egress_denied  INTEGER,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS work_session ON work(session_id);
";

/// A work item the controller was serving when it stopped.
#[derive(Debug, Clone)]
pub struct OpenWork {
    pub id: String,
    pub session_id: String,
    /// The work item as CMA sent it (JSON, secret included).
    pub item: String,
    pub last_heartbeat: Option<String>,
}

/// The newest work item of a session, for the sessions view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkSummary {
    pub work_id: String,
    /// `serving` or `ended`.
    pub state: String,
    /// How it ended: `terminated`, `idle`, `stop_requested`, `lease_lost`, `stopped_by_operator`,
    /// `failed: ...`.
    pub end_reason: Option<String>,
    pub tool_calls: u64,
    /// The proxy's egress counts for the session, taken as its sandbox was torn down.
    pub egress_allowed: Option<u64>,
    pub egress_denied: Option<u64>,
    pub started_at: String,
    pub updated_at: String,
}

impl Store {
    /// Records that `work_id` (session `session_id`) is being served.
    pub fn begin_work(
        &self,
        work_id: &str,
        session_id: &str,
        item: &str,
    ) -> Result<(), StoreError> {
        let at = now();
        self.write(|conn| {
            conn.execute(
                "INSERT INTO work (id, session_id, item, state, created_at, updated_at)
             VALUES (?1, ?2, ?3, 'serving', ?4, ?4)
             ON CONFLICT(id) DO UPDATE SET item = ?3, state = 'serving', end_reason = NULL,
             updated_at = ?4",
                params![work_id, session_id, item, at],
            )?;
            Ok(())
        })
    }

    /// Forgets `work_id`, recorded by [`Store::begin_work`] but never acknowledged to CMA
    /// (the ack failed): it stays queued there, and a restart must not resume it.
    pub fn forget_work(&self, work_id: &str) -> Result<(), StoreError> {
        self.write(|conn| {
            conn.execute("DELETE FROM work WHERE id = ?1", [work_id])?;
            Ok(())
        })
    }

    /// The heartbeat token that now holds the item's lease.
    pub fn set_heartbeat(&self, work_id: &str, token: &str) -> Result<(), StoreError> {
        self.write(|conn| {
            conn.execute(
                "UPDATE work SET last_heartbeat = ?2, updated_at = ?3 WHERE id = ?1",
                params![work_id, token, now()],
            )?;
            Ok(())
        })
    }

    /// Counts one answered tool call.
    pub fn count_tool_call(&self, work_id: &str) -> Result<(), StoreError> {
        self.write(|conn| {
            conn.execute(
                "UPDATE work SET tool_calls = tool_calls + 1, updated_at = ?2 WHERE id = ?1",
                params![work_id, now()],
            )?;
            Ok(())
        })
    }

    /// Keeps the proxy's egress counts for the item's session (taken before teardown).
    pub fn set_egress(&self, work_id: &str, allowed: u64, denied: u64) -> Result<(), StoreError> {
        self.write(|conn| {
            conn.execute(
            "UPDATE work SET egress_allowed = ?2, egress_denied = ?3, updated_at = ?4 WHERE id = ?1",
            params![work_id, allowed as i64, denied as i64, now()],
        )?;
            Ok(())
        })
    }

    /// Records how the item ended; it is no longer resumed.
    pub fn end_work(&self, work_id: &str, reason: &str) -> Result<(), StoreError> {
        self.write(|conn| {
            conn.execute(
                "UPDATE work SET state = 'ended', end_reason = ?2, updated_at = ?3 WHERE id = ?1",
                params![work_id, reason, now()],
            )?;
            Ok(())
        })
    }

    /// Items still being served (a controller restart resumes them).
    pub fn open_work(&self) -> Result<Vec<OpenWork>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, session_id, item, last_heartbeat FROM work WHERE state = 'serving'
             ORDER BY created_at",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok(OpenWork {
                    id: r.get(0)?,
                    session_id: r.get(1)?,
                    item: r.get(2)?,
                    last_heartbeat: r.get(3)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// The newest work item of each session.
    pub fn work_by_session(
        &self,
    ) -> Result<std::collections::HashMap<String, WorkSummary>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT session_id, id, state, end_reason, tool_calls, egress_allowed,
             egress_denied, created_at, updated_at
             FROM work ORDER BY created_at",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                WorkSummary {
                    work_id: r.get(1)?,
                    state: r.get(2)?,
                    end_reason: r.get(3)?,
                    tool_calls: r.get::<_, i64>(4)?.max(0) as u64,
                    egress_allowed: r.get::<_, Option<i64>>(5)?.map(|n| n.max(0) as u64),
                    egress_denied: r.get::<_, Option<i64>>(6)?.map(|n| n.max(0) as u64),
                    started_at: r.get(7)?,
                    updated_at: r.get(8)?,
                },
            ))
        })?;
        let mut by_session = std::collections::HashMap::new();
        for row in rows {
            let (session, summary) = row?;
            by_session.insert(session, summary);
        }
        Ok(by_session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_work_survives_a_reopen_until_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let store = Store::open(&path).unwrap();
            store.begin_work("w1", "s1", "{\"id\":\"w1\"}").unwrap();
            store.begin_work("w2", "s2", "{}").unwrap();
            store.set_heartbeat("w1", "hb_1").unwrap();
            store.count_tool_call("w1").unwrap();
            store.count_tool_call("w1").unwrap();
            store.end_work("w2", "terminated").unwrap();
            store.set_egress("w2", 3, 1).unwrap();
        }
        let store = Store::open(&path).unwrap();
        let open = store.open_work().unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].id, "w1");
        assert_eq!(open[0].last_heartbeat.as_deref(), Some("hb_1"));
        let by = store.work_by_session().unwrap();
        assert_eq!(by["s1"].tool_calls, 2);
        assert_eq!(by["s2"].end_reason.as_deref(), Some("terminated"));
        assert_eq!(
            (by["s2"].egress_allowed, by["s2"].egress_denied),
            (Some(3), Some(1))
        );
        assert_eq!(by["s1"].egress_allowed, None);
        store.end_work("w1", "idle").unwrap();
        assert!(store.open_work().unwrap().is_empty());
    }
}

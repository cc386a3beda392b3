//! Local sessions (docs/OPEN-MODELS.md): agent definitions, sessions (each with the
//! definition it was created with, so a later update does not change a session in flight) and
//! every session's events in order. The events are the sessions' whole state: the loop records
//! each step before it acts, and a restarted controller reads them back.

use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError, now};
use crate::local::events::{Event, Stored};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS local_agents (
    name        TEXT PRIMARY KEY,
    version     INTEGER NOT NULL,
    spec        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    archived_at TEXT
);
CREATE TABLE IF NOT EXISTS local_sessions (
    id            TEXT PRIMARY KEY,
    agent         TEXT NOT NULL,
    agent_version INTEGER NOT NULL,
    agent_spec    TEXT NOT NULL,
    title         TEXT,
    status        TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    archived_at   TEXT
);
CREATE TABLE IF NOT EXISTS local_events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id   TEXT NOT NULL,
    id           TEXT NOT NULL UNIQUE,
    type         TEXT NOT NULL,
    body         TEXT NOT NULL,
    processed_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS local_events_session ON local_events(session_id, seq);
";

/// An agent definition as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AgentRecord {
    pub name: String,
    pub version: i64,
    /// The definition (JSON of [`crate::local::agent::AgentSpec`]).
    pub spec: String,
    pub created_at: String,
    pub updated_at: String,
    pub archived_at: Option<String>,
}

/// A local session as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LocalSessionRecord {
    pub id: String,
    pub agent: String,
    pub agent_version: i64,
    pub agent_spec: String,
    pub title: Option<String>,
    /// `idle`, `running` or `terminated`.
    pub status: String,
    pub created_at: String,
    pub updated_at: String,
    pub archived_at: Option<String>,
}

/// Why an agent could not be written.
#[derive(Debug, thiserror::Error)]
pub enum AgentWriteError {
    #[error("agent {0:?} exists; update it (agents update) or choose another name")]
    Exists(String),
    #[error("no agent named {0:?}")]
    NotFound(String),
    #[error("agent {name:?} is at version {current}, not {expected}: read it again and retry")]
    VersionMismatch {
        name: String,
        current: i64,
        expected: i64,
    },
    #[error("agent {0:?} is archived")]
    Archived(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for AgentWriteError {
    fn from(e: rusqlite::Error) -> Self {
        AgentWriteError::Store(e.into())
    }
}

fn agent_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AgentRecord> {
    Ok(AgentRecord {
        name: r.get(0)?,
        version: r.get(1)?,
        spec: r.get(2)?,
        created_at: r.get(3)?,
        updated_at: r.get(4)?,
        archived_at: r.get(5)?,
    })
}

fn session_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LocalSessionRecord> {
    Ok(LocalSessionRecord {
        id: r.get(0)?,
        agent: r.get(1)?,
        agent_version: r.get(2)?,
        agent_spec: r.get(3)?,
        title: r.get(4)?,
        status: r.get(5)?,
        created_at: r.get(6)?,
        updated_at: r.get(7)?,
        archived_at: r.get(8)?,
    })
}

const AGENT_COLUMNS: &str = "name, version, spec, created_at, updated_at, archived_at";
const SESSION_COLUMNS: &str =
    "id, agent, agent_version, agent_spec, title, status, created_at, updated_at, archived_at";

/// A new event id: `sevt_` and 24 random letters and digits.
fn event_id() -> String {
    format!("sevt_{}", crate::sandbox::names::random_alphanumeric(24))
}

impl Store {
    /// Creates agent `name` at version 1.
    pub fn create_agent(&self, name: &str, spec: &str) -> Result<AgentRecord, AgentWriteError> {
        let mut refused = None;
        let record = self.write(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let exists: bool = tx
                .query_row("SELECT 1 FROM local_agents WHERE name = ?1", [name], |_| {
                    Ok(true)
                })
                .optional()?
                .unwrap_or(false);
            if exists {
                refused = Some(AgentWriteError::Exists(name.to_string()));
                return Ok(None);
            }
            let at = now();
            tx.execute(
                "INSERT INTO local_agents (name, version, spec, created_at, updated_at)
                 VALUES (?1, 1, ?2, ?3, ?3)",
                params![name, spec, at],
            )?;
            tx.commit()?;
            Ok(Some(AgentRecord {
                name: name.to_string(),
                version: 1,
                spec: spec.to_string(),
                created_at: at.clone(),
                updated_at: at,
                archived_at: None,
            }))
        })?;
        match (record, refused) {
            (Some(r), _) => Ok(r),
            (None, Some(e)) => Err(e),
            (None, None) => Err(AgentWriteError::Exists(name.to_string())),
        }
    }

    /// Replaces agent `name`'s definition; with `expected`, only if it is at that version.
    pub fn update_agent(
        &self,
        name: &str,
        spec: &str,
        expected: Option<i64>,
    ) -> Result<AgentRecord, AgentWriteError> {
        let mut refused = None;
        let record = self.write(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let current = tx
                .query_row(
                    &format!("SELECT {AGENT_COLUMNS} FROM local_agents WHERE name = ?1"),
                    [name],
                    agent_row,
                )
                .optional()?;
            let refusal = match &current {
                None => Some(AgentWriteError::NotFound(name.to_string())),
                Some(c) if c.archived_at.is_some() => {
                    Some(AgentWriteError::Archived(name.to_string()))
                }
                Some(c) if expected.is_some_and(|e| e != c.version) => {
                    Some(AgentWriteError::VersionMismatch {
                        name: name.to_string(),
                        current: c.version,
                        expected: expected.unwrap_or_default(),
                    })
                }
                Some(_) => None,
            };
            if let Some(r) = refusal {
                refused = Some(r);
                return Ok(None);
            }
            let Some(mut record) = current else {
                return Ok(None);
            };
            record.version += 1;
            record.spec = spec.to_string();
            record.updated_at = now();
            tx.execute(
                "UPDATE local_agents SET version = ?2, spec = ?3, updated_at = ?4 WHERE name = ?1",
                params![name, record.version, spec, record.updated_at],
            )?;
            tx.commit()?;
            Ok(Some(record))
        })?;
        record.ok_or_else(|| refused.unwrap_or_else(|| AgentWriteError::NotFound(name.into())))
    }

    /// Archives agent `name`: no new sessions; its sessions go on.
    pub fn archive_agent(&self, name: &str) -> Result<AgentRecord, AgentWriteError> {
        let changed = self.write(|conn| {
            Ok(conn.execute(
                "UPDATE local_agents SET archived_at = ?2, updated_at = ?2
                 WHERE name = ?1 AND archived_at IS NULL",
                params![name, now()],
            )?)
        })?;
        match self.agent(name)? {
            Some(record) if changed == 1 || record.archived_at.is_some() => Ok(record),
            _ => Err(AgentWriteError::NotFound(name.to_string())),
        }
    }

    pub fn agent(&self, name: &str) -> Result<Option<AgentRecord>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {AGENT_COLUMNS} FROM local_agents WHERE name = ?1"),
                [name],
                agent_row,
            )
            .optional()?)
    }

    /// Every agent, by name.
    pub fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {AGENT_COLUMNS} FROM local_agents ORDER BY name"
        ))?;
        let rows = stmt.query_map([], agent_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records a new local session of `agent` (at `version`, definition `spec`).
    pub fn create_local_session(
        &self,
        id: &str,
        agent: &AgentRecord,
        title: Option<&str>,
    ) -> Result<LocalSessionRecord, StoreError> {
        let at = now();
        self.write(|conn| {
            conn.execute(
                "INSERT INTO local_sessions (id, agent, agent_version, agent_spec, title, status,
                 created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, 'idle', ?6, ?6)",
                params![id, agent.name, agent.version, agent.spec, title, at],
            )?;
            Ok(())
        })?;
        Ok(LocalSessionRecord {
            id: id.to_string(),
            agent: agent.name.clone(),
            agent_version: agent.version,
            agent_spec: agent.spec.clone(),
            title: title.map(str::to_string),
            status: "idle".into(),
            created_at: at.clone(),
            updated_at: at,
            archived_at: None,
        })
    }

    pub fn local_session(&self, id: &str) -> Result<Option<LocalSessionRecord>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {SESSION_COLUMNS} FROM local_sessions WHERE id = ?1"),
                [id],
                session_row,
            )
            .optional()?)
    }

    /// Local sessions, newest first, at most `limit`.
    pub fn local_sessions(&self, limit: u32) -> Result<Vec<LocalSessionRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {SESSION_COLUMNS} FROM local_sessions ORDER BY created_at DESC, id LIMIT ?1"
        ))?;
        let rows = stmt.query_map([limit], session_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Local sessions not archived (the ones a restarted controller serves again).
    pub fn open_local_sessions(&self) -> Result<Vec<LocalSessionRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {SESSION_COLUMNS} FROM local_sessions WHERE archived_at IS NULL ORDER BY created_at"
        ))?;
        let rows = stmt.query_map([], session_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn set_local_status(
        &self,
        id: &str,
        status: &str,
        archived: bool,
    ) -> Result<(), StoreError> {
        self.write(|conn| {
            let at = now();
            conn.execute(
                "UPDATE local_sessions SET status = ?2, updated_at = ?3,
                 archived_at = CASE WHEN ?4 THEN COALESCE(archived_at, ?3) ELSE archived_at END
                 WHERE id = ?1 AND (archived_at IS NULL OR ?4)",
                params![id, status, at, archived],
            )?;
            Ok(())
        })
    }

    /// Appends `events` to session `id`'s history, all or none.
    pub fn append_local_events(
        &self,
        id: &str,
        events: Vec<Event>,
    ) -> Result<Vec<Stored>, StoreError> {
        self.write(|conn| {
            let tx = conn.transaction()?;
            let mut stored = Vec::with_capacity(events.len());
            for event in events {
                let body = serde_json::to_string(&event).map_err(|e| {
                    StoreError::Sqlite(rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
                })?;
                let kind = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string))
                    .unwrap_or_default();
                let event_id = event.own_id().map_or_else(event_id, str::to_string);
                let at = now();
                tx.execute(
                    "INSERT INTO local_events (session_id, id, type, body, processed_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![id, event_id, kind, body, at],
                )?;
                stored.push(Stored {
                    seq: tx.last_insert_rowid(),
                    id: event_id,
                    processed_at: at,
                    event,
                });
            }
            tx.commit()?;
            Ok(stored)
        })
    }

    /// Session `id`'s events after `after` (a `seq`; 0 from the start), at most `limit`.
    /// An event the loop cannot read back (a newer controller's) is skipped with a warning.
    pub fn local_events(
        &self,
        id: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Stored>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT seq, id, body, processed_at FROM local_events
             WHERE session_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![id, after, limit], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        let mut events = Vec::new();
        for row in rows {
            let (seq, event_id, body, processed_at) = row?;
            match serde_json::from_str::<Event>(&body) {
                Ok(event) => events.push(Stored {
                    seq,
                    id: event_id,
                    processed_at,
                    event,
                }),
                Err(e) => {
                    tracing::warn!(session = id, event = %event_id, error = %e, "skipping an event this controller cannot read");
                }
            }
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::events::text;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        (dir, store)
    }

    #[test]
    fn agents_are_versioned_and_updates_check_the_version() {
        let (_dir, store) = store();
        let a = store.create_agent("coder", "{}").unwrap();
        assert_eq!(a.version, 1);
        assert!(matches!(
            store.create_agent("coder", "{}"),
            Err(AgentWriteError::Exists(_))
        ));
        let b = store.update_agent("coder", "{\"x\":1}", Some(1)).unwrap();
        assert_eq!(b.version, 2);
        assert!(matches!(
            store.update_agent("coder", "{}", Some(1)),
            Err(AgentWriteError::VersionMismatch { current: 2, .. })
        ));
        assert_eq!(store.update_agent("coder", "{}", None).unwrap().version, 3);
        assert!(matches!(
            store.update_agent("nobody", "{}", None),
            Err(AgentWriteError::NotFound(_))
        ));
        store.archive_agent("coder").unwrap();
        assert!(matches!(
            store.update_agent("coder", "{}", None),
            Err(AgentWriteError::Archived(_))
        ));
    }

    #[test]
    fn events_come_back_in_order_after_a_seq() {
        let (_dir, store) = store();
        let agent = store.create_agent("coder", "{}").unwrap();
        store
            .create_local_session("sesn_local_a", &agent, Some("t"))
            .unwrap();
        let first = store
            .append_local_events(
                "sesn_local_a",
                vec![
                    Event::UserMessage {
                        content: text("hi"),
                    },
                    Event::StatusRunning {},
                ],
            )
            .unwrap();
        let all = store.local_events("sesn_local_a", 0, 100).unwrap();
        assert_eq!(all, first);
        let after = store
            .local_events("sesn_local_a", first[0].seq, 100)
            .unwrap();
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].event, Event::StatusRunning {});
        assert!(store.local_events("other", 0, 100).unwrap().is_empty());
    }
}

//! Workspace records: which workspace (by its name under the workspace root) belongs to which
//! session, and when the session ended, which starts the workspace's retention clock.

use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError, WorkspaceRecord, now};

const SELECT: &str =
    "SELECT session_id, COALESCE(dir, session_id), created_at, ended_at FROM workspaces";

fn workspace_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<WorkspaceRecord> {
    Ok(WorkspaceRecord {
        session_id: r.get(0)?,
        dir: r.get(1)?,
        created_at: r.get(2)?,
        ended_at: r.get(3)?,
    })
}

/// Starts session `id`'s workspace retention clock at `at` (if not started already).
pub(super) fn end(conn: &rusqlite::Connection, id: &str, at: &str) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO workspaces (session_id, created_at, ended_at) VALUES (?1, ?2, ?2)
         ON CONFLICT(session_id) DO UPDATE SET ended_at = COALESCE(ended_at, ?2)",
        params![id, at],
    )?;
    Ok(())
}

impl Store {
    /// Records that session `id` has the workspace `dir` (again: a later start reopens an
    /// ended one, keeping the name it was first given).
    pub fn workspace_used(&self, id: &str, dir: &str) -> Result<(), StoreError> {
        self.write(|conn| {
            conn.execute(
                "INSERT INTO workspaces (session_id, created_at, dir) VALUES (?1, ?2, ?3)
             ON CONFLICT(session_id) DO UPDATE SET ended_at = NULL",
                params![id, now(), dir],
            )?;
            Ok(())
        })
    }

    /// The name of session `id`'s workspace under the workspace root, if it has one recorded.
    pub fn workspace_dir(&self, id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT COALESCE(dir, session_id) FROM workspaces WHERE session_id = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Starts session `id`'s workspace retention clock (if not started already).
    pub fn workspace_ended(&self, id: &str) -> Result<(), StoreError> {
        self.write(|conn| end(conn, id, &now()))
    }

    pub fn workspaces(&self) -> Result<Vec<WorkspaceRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("{SELECT} ORDER BY session_id"))?;
        let rows = stmt
            .query_map([], workspace_row)?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Session `id`'s workspace record.
    pub fn workspace(&self, id: &str) -> Result<Option<WorkspaceRecord>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                &format!("{SELECT} WHERE session_id = ?1"),
                [id],
                workspace_row,
            )
            .optional()?)
    }

    pub fn forget_workspace(&self, id: &str) -> Result<(), StoreError> {
        self.write(|conn| {
            conn.execute("DELETE FROM workspaces WHERE session_id = ?1", [id])?;
            Ok(())
        })
    }
}

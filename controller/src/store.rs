//! The controller's records (SQLite): sessions, their slots in the address pool, their state.
//!
//! A slot is held by a live session (`starting` or `running`) only; a partial unique index makes
//! the database refuse two live sessions on one slot, whatever the code does.

use std::path::{Path, PathBuf};

pub mod egress;
mod health;
pub mod local;
mod pool;
mod tool_calls;
pub mod tool_images;
mod work;
mod workspaces;

use rusqlite::{Connection, OptionalExtension, params};

pub use health::StoreHealth;
pub use tool_calls::{ToolCallRecord, clip};
pub use work::{OpenWork, WorkSummary};

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    Starting,
    Running,
    Stopped,
    Failed,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Starting => "starting",
            SessionState::Running => "running",
            SessionState::Stopped => "stopped",
            SessionState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "starting" => SessionState::Starting,
            "running" => SessionState::Running,
            "stopped" => SessionState::Stopped,
            _ => SessionState::Failed,
        }
    }

    pub fn is_live(self) -> bool {
        matches!(self, SessionState::Starting | SessionState::Running)
    }
}

/// One recorded webhook delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRecord {
    pub id: String,
    pub kind: String,
    pub session_id: Option<String>,
    pub received_at: String,
}

/// One recorded session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub id: String,
    pub slot: u32,
    pub state: SessionState,
    /// The agent's token (the database is readable by root only).
    pub token: String,
    /// `sandbox` (gVisor netstack) or `host` (host networking inside the session netns).
    pub network_mode: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub error: Option<String>,
    /// The image the sandbox runs on (`host` with `danger_host_rootfs`), and its digest.
    pub image: Option<String>,
    pub image_digest: Option<String>,
    /// The id the sandbox was started under, which names its network namespace and files:
    /// the session id, or a warm sandbox's pool id when the session claimed one.
    pub sandbox_id: String,
    /// A warm sandbox in the pool, not claimed by any session yet.
    pub warm: bool,
}

/// A session's workspace, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceRecord {
    pub session_id: String,
    /// Its name under the workspace root: the session id, or the pool id of the warm sandbox
    /// the session claimed (whose fresh workspace became the session's).
    pub dir: String,
    pub created_at: String,
    /// When the session ended (terminated, deleted, or stopped with `--end`): the retention
    /// clock starts here.
    pub ended_at: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database: {0}")]
    Sqlite(#[source] rusqlite::Error),
    /// SQLite could not grow the database or its WAL: the write was rolled back whole.
    #[error(
        "the state disk is full: the controller's database cannot take this write, and nothing \
         of it was recorded; free space on the disk that holds [proxy] state_dir"
    )]
    DiskFull(#[source] rusqlite::Error),
    #[error("state database: cannot create {path}: {source}")]
    Create {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "session {0:?} is already live; stop it first (cordon-controller sandbox stop --session {0})"
    )]
    AlreadyLive(String),
    #[error(
        "the address pool is exhausted: all {0} /30 slots are held by live sessions; stop some, or \
         widen [sandbox] address_pool"
    )]
    PoolExhausted(u32),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        // SQLITE_FULL is ENOSPC (or the page limit) on the database or its WAL; growing the
        // WAL's shared-memory index fails as IOERR_SHMSIZE on a full disk.
        let full = e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
            || matches!(&e, rusqlite::Error::SqliteFailure(f, _)
                if f.extended_code == rusqlite::ffi::SQLITE_IOERR_SHMSIZE);
        if full {
            StoreError::DiskFull(e)
        } else {
            StoreError::Sqlite(e)
        }
    }
}

impl StoreError {
    /// The disk holding the database is full: trying again once there is room can succeed.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::DiskFull(_))
    }
}

/// The database.
#[derive(Debug)]
pub struct Store {
    /// Behind a mutex so a `&Store` may be held across awaits on any thread (rusqlite's
    /// connection is `Send` but not `Sync`).
    conn: std::sync::Mutex<Connection>,
    path: PathBuf,
    /// Where failed writes are reported (the controller's metrics and log); unset in the CLI,
    /// which prints the error itself.
    health: std::sync::OnceLock<StoreHealth>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sessions (
    id           TEXT PRIMARY KEY,
    slot         INTEGER NOT NULL,
    state        TEXT NOT NULL,
    token        TEXT NOT NULL,
    network_mode TEXT,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    error        TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS live_slot ON sessions(slot)
    WHERE state IN ('starting', 'running');
CREATE TABLE IF NOT EXISTS workspaces (
    session_id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    ended_at   TEXT
);
CREATE TABLE IF NOT EXISTS webhook_events (
    id          TEXT PRIMARY KEY,
    type        TEXT NOT NULL,
    session_id  TEXT,
    created_at  TEXT,
    received_at TEXT NOT NULL
);
";

/// Now, as the RFC 3339 text every record carries.
pub(crate) fn now() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}

impl Store {
    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reports this database's failed writes (and the end of a full-disk episode) to `health`.
    pub fn report_to(&self, health: StoreHealth) {
        let _ = self.health.set(health);
    }

    /// Runs `change`, every write's one way in: a failed change leaves no transaction open
    /// behind it (SQLite may or may not have rolled back on SQLITE_FULL; the connection is
    /// kept, so an open one would swallow every later write), and its failure, or a write
    /// that ends a full-disk episode, is reported.
    fn write<T>(
        &self,
        change: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn();
        let before = conn.total_changes();
        let result = change(&mut conn);
        if result.is_err() && !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        // A change that wrote rows proves there is room again; one that wrote nothing (a
        // duplicate delivery) proves nothing.
        let wrote = result.is_ok() && conn.total_changes() > before;
        drop(conn);
        if let Some(health) = self.health.get() {
            match &result {
                Err(e) => health.failed(&self.path, e),
                Ok(_) if wrote => health.wrote(&self.path),
                Ok(_) => {}
            }
        }
        result
    }

    /// Opens (creating) the database at `path`; the file is made readable by its owner only.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Create {
                path: dir.into(),
                source,
            })?;
        }
        let conn = Connection::open(path)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| StoreError::Create {
                path: path.into(),
                source,
            },
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // WAL: the webhook receiver writes while CLI commands read.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(work::SCHEMA)?;
        conn.execute_batch(tool_calls::SCHEMA)?;
        conn.execute_batch(tool_images::SCHEMA)?;
        conn.execute_batch(egress::SCHEMA)?;
        conn.execute_batch(local::SCHEMA)?;
        // Columns added after the first release: added to older databases in place.
        for (table, column) in [
            ("sessions", "image TEXT"),
            ("sessions", "image_digest TEXT"),
            ("sessions", "sandbox_id TEXT"),
            ("sessions", "pool INTEGER NOT NULL DEFAULT 0"),
            ("workspaces", "dir TEXT"),
        ] {
            match conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column}")) {
                Ok(()) => {}
                Err(e) if e.to_string().contains("duplicate column") => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Self {
            conn: std::sync::Mutex::new(conn),
            path: path.into(),
            health: std::sync::OnceLock::new(),
        })
    }

    /// Records `id` as starting on the lowest free slot of `slots`; a stopped or failed record
    /// of the same id is replaced. `warm`: a sandbox for the warm pool, claimable once running.
    pub fn claim(
        &self,
        id: &str,
        slots: u32,
        token: &str,
        warm: bool,
    ) -> Result<SessionRecord, StoreError> {
        self.write(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            refuse_live(&tx, id)?;
            let taken: Vec<u32> = {
                let mut stmt = tx.prepare(
                "SELECT slot FROM sessions WHERE state IN ('starting', 'running') ORDER BY slot",
            )?;
                stmt.query_map([], |r| r.get(0))?
                    .collect::<Result<_, _>>()?
            };
            let slot = (0..slots)
                .find(|s| taken.binary_search(s).is_err())
                .ok_or(StoreError::PoolExhausted(slots))?;
            let at = now();
            tx.execute("DELETE FROM sessions WHERE id = ?1", [id])?;
            tx.execute(
                "INSERT INTO sessions (id, slot, state, token, created_at, updated_at, pool)
             VALUES (?1, ?2, 'starting', ?3, ?4, ?4, ?5)",
                params![id, slot, token, at, warm],
            )?;
            tx.commit()?;
            Ok(())
        })?;
        self.get(id)?
            .ok_or(StoreError::Sqlite(rusqlite::Error::QueryReturnedNoRows))
    }

    /// Records a webhook delivery; `false` when its event id was recorded before (a
    /// duplicate delivery, which CMA's retries make common). `ends_session`: the event ends
    /// session `session_id`, whose workspace retention clock starts in the same transaction,
    /// so a delivery acknowledged as recorded has had all its effect.
    pub fn record_webhook(
        &self,
        id: &str,
        kind: &str,
        session_id: Option<&str>,
        created_at: Option<&str>,
        ends_session: bool,
    ) -> Result<bool, StoreError> {
        self.write(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let at = now();
            let inserted = tx.execute(
                "INSERT OR IGNORE INTO webhook_events (id, type, session_id, created_at, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, kind, session_id, created_at, at],
            )? == 1;
            if let (true, true, Some(session)) = (inserted, ends_session, session_id) {
                workspaces::end(&tx, session, &at)?;
            }
            tx.commit()?;
            Ok(inserted)
        })
    }

    /// Recorded webhook deliveries, newest first.
    pub fn webhooks(&self, limit: u32) -> Result<Vec<WebhookRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, type, session_id, received_at FROM webhook_events
             ORDER BY received_at DESC LIMIT ?1",
        )?;
        let rows = stmt
            .query_map([limit], |r| {
                Ok(WebhookRecord {
                    id: r.get(0)?,
                    kind: r.get(1)?,
                    session_id: r.get(2)?,
                    received_at: r.get(3)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    pub fn set_state(
        &self,
        id: &str,
        state: SessionState,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        self.write(|conn| {
            conn.execute(
                "UPDATE sessions SET state = ?2, error = ?3, updated_at = ?4 WHERE id = ?1",
                params![id, state.as_str(), error, now()],
            )?;
            Ok(())
        })
    }

    /// Records the image session `id` runs on.
    pub fn set_image(&self, id: &str, image: &str, digest: &str) -> Result<(), StoreError> {
        self.write(|conn| {
            conn.execute(
                "UPDATE sessions SET image = ?2, image_digest = ?3 WHERE id = ?1",
                params![id, image, digest],
            )?;
            Ok(())
        })
    }

    pub fn set_running(&self, id: &str, network_mode: &str) -> Result<(), StoreError> {
        self.write(|conn| {
            conn.execute(
                "UPDATE sessions SET state = 'running', network_mode = ?2, error = NULL,
                 updated_at = ?3 WHERE id = ?1",
                params![id, network_mode, now()],
            )?;
            Ok(())
        })
    }

    pub fn get(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT id, slot, state, token, network_mode, created_at, updated_at, error,
                 image, image_digest, COALESCE(sandbox_id, id), pool FROM sessions
                 WHERE id = ?1",
                [id],
                row,
            )
            .optional()?)
    }

    /// Every record, live first, then by id.
    pub fn all(&self) -> Result<Vec<SessionRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, slot, state, token, network_mode, created_at, updated_at, error,
             image, image_digest, COALESCE(sandbox_id, id), pool FROM sessions
             ORDER BY state NOT IN ('starting', 'running'), id",
        )?;
        let rows = stmt.query_map([], row)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    pub fn live(&self) -> Result<Vec<SessionRecord>, StoreError> {
        Ok(self
            .all()?
            .into_iter()
            .filter(|r| r.state.is_live())
            .collect())
    }
}

/// `AlreadyLive` when session `id` is recorded as starting or running.
fn refuse_live(tx: &rusqlite::Transaction<'_>, id: &str) -> Result<(), StoreError> {
    let existing: Option<String> = tx
        .query_row("SELECT state FROM sessions WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()?;
    if existing.is_some_and(|s| SessionState::parse(&s).is_live()) {
        return Err(StoreError::AlreadyLive(id.to_string()));
    }
    Ok(())
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRecord> {
    Ok(SessionRecord {
        id: r.get(0)?,
        slot: r.get(1)?,
        state: SessionState::parse(&r.get::<_, String>(2)?),
        token: r.get(3)?,
        network_mode: r.get(4)?,
        created_at: r.get(5)?,
        updated_at: r.get(6)?,
        error: r.get(7)?,
        image: r.get(8)?,
        image_digest: r.get(9)?,
        sandbox_id: r.get(10)?,
        warm: r.get(11)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_held_by_live_sessions_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        let a = store.claim("a", 2, "t1", false).unwrap();
        let b = store.claim("b", 2, "t2", false).unwrap();
        assert_eq!((a.slot, b.slot), (0, 1));
        assert!(matches!(
            store.claim("c", 2, "t3", false),
            Err(StoreError::PoolExhausted(2))
        ));
        assert!(matches!(
            store.claim("a", 2, "t4", false),
            Err(StoreError::AlreadyLive(_))
        ));
        store.set_state("a", SessionState::Stopped, None).unwrap();
        let c = store.claim("c", 2, "t3", false).unwrap();
        assert_eq!(c.slot, 0, "a stopped session's slot is free again");
        // A stopped id may start again.
        store
            .set_state("b", SessionState::Failed, Some("boom"))
            .unwrap();
        let again = store.claim("b", 2, "t5", false).unwrap();
        assert_eq!(again.state, SessionState::Starting);
        assert_eq!(again.error, None);
        store.set_running("b", "host").unwrap();
        let live: Vec<_> = store.live().unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(live, ["b", "c"]);
        assert_eq!(store.all().unwrap().len(), 3);
    }
}

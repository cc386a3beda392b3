//! The proxy's egress decisions, ingested from its audit log (`crate::egress`) so the dashboard
//! can page through one session's decisions without scanning the log per page view.
//!
//! `time` is an integer (Unix milliseconds), not the record's RFC 3339 text: the proxy writes
//! "up to nanoseconds" of fraction, so texts of different lengths would not sort as times, and
//! an 8-byte integer keeps the `(session, time)` index about a third the size of one keyed on
//! a 30-byte string (more entries per page, fewer pages per range), and makes retention
//! cut-offs and per-minute buckets plain arithmetic.
//!
//! Ids are `AUTOINCREMENT`: never reused, even once retention has emptied the table, so "rows
//! with id > N" (live updates) can never skip a row that took an old id again.

use std::path::Path;

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::{Store, StoreError};

pub use query::{
    EgressCursor, EgressPage, EgressRate, MAX_RATE_MINUTES, ParseCursorError, SessionEgressCounts,
};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS egress (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    time              INTEGER NOT NULL,
    session           TEXT NOT NULL,
    kind              TEXT NOT NULL,
    decision_id       TEXT NOT NULL,
    method            TEXT,
    host              TEXT,
    port              INTEGER,
    path              TEXT,
    decision          TEXT NOT NULL CHECK (decision IN ('allow', 'deny', 'error', 'other')),
    would_deny        INTEGER NOT NULL DEFAULT 0,
    reason_class      TEXT NOT NULL,
    reason            TEXT NOT NULL,
    status            INTEGER,
    credentials       TEXT,
    placeholders      TEXT,
    policy_generation TEXT NOT NULL
);
-- A session's page, newest first: an index range, read backwards (the rowid, the last column
-- of every index, breaks ties in time).
CREATE INDEX IF NOT EXISTS egress_session_time ON egress(session, time);
-- Three readers share this one: the latest denials (decision = 'deny', newest first), the
-- per-minute rates of the last hour (a covering range per decision) and retention by age
-- (the CHECK above makes the four decisions every row there is).
CREATE INDEX IF NOT EXISTS egress_decision_time ON egress(decision, time);
-- Rows per session and decision, kept by the same transactions that insert and prune: the
-- overview's counts cost a row per session instead of a scan of every decision.
CREATE TABLE IF NOT EXISTS egress_counts (
    session  TEXT NOT NULL,
    decision TEXT NOT NULL,
    rows     INTEGER NOT NULL,
    PRIMARY KEY (session, decision)
) WITHOUT ROWID;
-- How far each audit file has been ingested, written in the transaction that inserts what
-- was read: a restart neither reads a line twice nor skips one.
CREATE TABLE IF NOT EXISTS egress_position (
    path        TEXT PRIMARY KEY,
    device      INTEGER NOT NULL,
    inode       INTEGER NOT NULL,
    byte_offset INTEGER NOT NULL,
    head        BLOB NOT NULL
);
";

/// What the proxy decided (`allow | deny | error`); `Other` for a value a newer proxy may add,
/// so such a record is still shown rather than dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EgressDecision {
    Allow,
    Deny,
    Error,
    Other,
}

impl EgressDecision {
    pub fn as_str(self) -> &'static str {
        match self {
            EgressDecision::Allow => "allow",
            EgressDecision::Deny => "deny",
            EgressDecision::Error => "error",
            EgressDecision::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "allow" => EgressDecision::Allow,
            "deny" => EgressDecision::Deny,
            "error" => EgressDecision::Error,
            _ => EgressDecision::Other,
        }
    }
}

/// What a record is about: one HTTP request, or a connection refused or spliced before any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EgressKind {
    Request,
    Connection,
}

impl EgressKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EgressKind::Request => "request",
            EgressKind::Connection => "connection",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "connection" => EgressKind::Connection,
            _ => EgressKind::Request,
        }
    }
}

/// One egress decision as stored: the audit record's fields the dashboard shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EgressRecord {
    /// When the proxy wrote the record, Unix milliseconds (UTC).
    pub time_ms: i64,
    /// The session, `unknown` for an unregistered source, `tool:<name>` for a custom tool; ""
    /// when the record named none. Kept either way, so the overview counts it.
    pub session: String,
    pub kind: EgressKind,
    pub decision_id: String,
    pub method: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    /// Without the query string (the proxy never records one).
    pub path: Option<String>,
    pub decision: EgressDecision,
    /// Report mode let through what the policy denied (`decision` is then `allow`).
    pub would_deny: bool,
    pub reason_class: String,
    pub reason: String,
    pub status: Option<u16>,
    /// Credentials injected, as `secret->header`: names, never values.
    pub credentials: Vec<String>,
    /// Placeholders swapped for their secrets, as `secret->header`.
    pub placeholders: Vec<String>,
    pub policy_generation: String,
}

impl EgressRecord {
    /// `time_ms` as RFC 3339 (UTC, milliseconds).
    pub fn time_rfc3339(&self) -> String {
        let nanos = i128::from(self.time_ms) * 1_000_000;
        time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| self.time_ms.to_string())
    }
}

/// A stored decision and its id (ids grow with every insert, in the audit log's order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EgressRow {
    pub id: i64,
    #[serde(flatten)]
    pub record: EgressRecord,
}

/// Where the ingester is in an audit file: the file's identity, the offset just past the last
/// whole line ingested, and the file's first bytes (up to [`AuditPosition::HEAD_LEN`]) to tell
/// a truncated-and-rewritten file (same inode, new content) from the one that was read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditPosition {
    pub device: u64,
    pub inode: u64,
    pub offset: u64,
    pub head: Vec<u8>,
}

impl AuditPosition {
    /// Every record starts with its time to the nanosecond and a random per-process id, so
    /// two files agreeing on this many first bytes are the same records.
    pub const HEAD_LEN: usize = 128;
}

/// The rows one [`Store::insert_egress`] added: ids `first..=last`, and the sessions they
/// belong to (deduplicated), for the live updates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsertedEgress {
    pub first_id: i64,
    pub last_id: i64,
    pub sessions: Vec<String>,
}

/// The columns [`row`] reads, as a literal for `concat!` (the queries are constants, which the
/// plan tests check as written).
macro_rules! columns {
    () => {
        "id, time, session, kind, decision_id, method, host, port, path, decision, would_deny, \
         reason_class, reason, status, credentials, placeholders, policy_generation"
    };
}

mod query;
mod retention;

/// A name list as stored: JSON, NULL when empty (most records inject nothing).
fn names_json(names: &[String]) -> Option<String> {
    if names.is_empty() {
        None
    } else {
        serde_json::to_string(names).ok()
    }
}

fn names(json: Option<String>) -> Vec<String> {
    json.and_then(|j| serde_json::from_str(&j).ok())
        .unwrap_or_default()
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EgressRow> {
    Ok(EgressRow {
        id: r.get(0)?,
        record: EgressRecord {
            time_ms: r.get(1)?,
            session: r.get(2)?,
            kind: EgressKind::parse(&r.get::<_, String>(3)?),
            decision_id: r.get(4)?,
            method: r.get(5)?,
            host: r.get(6)?,
            port: r.get(7)?,
            path: r.get(8)?,
            decision: EgressDecision::parse(&r.get::<_, String>(9)?),
            would_deny: r.get(10)?,
            reason_class: r.get(11)?,
            reason: r.get(12)?,
            status: r.get(13)?,
            credentials: names(r.get(14)?),
            placeholders: names(r.get(15)?),
            policy_generation: r.get(16)?,
        },
    })
}

impl Store {
    /// Inserts `records`, read from the audit file at `path`, and records `position` as how far
    /// that file is ingested, in one transaction: both or neither. `None` when no row was
    /// added (the position alone may have moved).
    pub fn insert_egress(
        &self,
        path: &Path,
        records: &[EgressRecord],
        position: &AuditPosition,
    ) -> Result<Option<InsertedEgress>, StoreError> {
        self.write(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut inserted: Option<InsertedEgress> = None;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO egress (time, session, kind, decision_id, method, host, port,
                     path, decision, would_deny, reason_class, reason, status, credentials,
                     placeholders, policy_generation)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
                )?;
                let mut counts: std::collections::HashMap<(&str, EgressDecision), i64> =
                    std::collections::HashMap::new();
                for r in records {
                    insert.execute(params![
                        r.time_ms,
                        r.session,
                        r.kind.as_str(),
                        r.decision_id,
                        r.method,
                        r.host,
                        r.port,
                        r.path,
                        r.decision.as_str(),
                        r.would_deny,
                        r.reason_class,
                        r.reason,
                        r.status,
                        names_json(&r.credentials),
                        names_json(&r.placeholders),
                        r.policy_generation,
                    ])?;
                    let id = tx.last_insert_rowid();
                    let batch = inserted.get_or_insert_with(|| InsertedEgress {
                        first_id: id,
                        last_id: id,
                        sessions: Vec::new(),
                    });
                    batch.last_id = id;
                    *counts.entry((&r.session, r.decision)).or_default() += 1;
                }
                let mut count = tx.prepare_cached(
                    "INSERT INTO egress_counts (session, decision, rows) VALUES (?1, ?2, ?3)
                     ON CONFLICT (session, decision) DO UPDATE SET rows = rows + ?3",
                )?;
                let mut sessions = std::collections::BTreeSet::new();
                for ((session, decision), n) in counts {
                    count.execute(params![session, decision.as_str(), n])?;
                    sessions.insert(session.to_string());
                }
                if let Some(batch) = &mut inserted {
                    batch.sessions = sessions.into_iter().collect();
                }
            }
            tx.execute(
                "INSERT INTO egress_position (path, device, inode, byte_offset, head)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (path) DO UPDATE SET device = ?2, inode = ?3, byte_offset = ?4,
                 head = ?5",
                params![
                    path.to_string_lossy(),
                    // SQLite integers are signed: the bits round-trip through i64.
                    position.device as i64,
                    position.inode as i64,
                    position.offset as i64,
                    position.head,
                ],
            )?;
            tx.commit()?;
            Ok(inserted)
        })
    }

    /// How far the audit file at `path` was ingested, if it ever was.
    pub fn audit_position(&self, path: &Path) -> Result<Option<AuditPosition>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT device, inode, byte_offset, head FROM egress_position WHERE path = ?1",
                [path.to_string_lossy()],
                |r| {
                    Ok(AuditPosition {
                        device: r.get::<_, i64>(0)? as u64,
                        inode: r.get::<_, i64>(1)? as u64,
                        offset: r.get::<_, i64>(2)?.max(0) as u64,
                        head: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }
}

#[cfg(test)]
mod tests;

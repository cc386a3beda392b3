//! The dashboard's reads of the egress decisions. Each is one index range (or a row per
//! session); `tests.rs` checks their query plans so a schema change cannot silently turn one
//! into a scan.

use rusqlite::params;
use serde::Serialize;

use super::{EgressDecision, EgressRow, row};
use crate::store::{Store, StoreError};

/// Where a page of a session's decisions ended: the next page holds what is older than this
/// (keyset pagination: a page costs the same deep in the history as at its top, and rows
/// inserted meanwhile neither shift nor repeat what follows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EgressCursor {
    pub time_ms: i64,
    pub id: i64,
}

/// Written in URLs as `<time_ms>.<id>`.
impl std::fmt::Display for EgressCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.time_ms, self.id)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("not a page cursor (expected <time_ms>.<id>): {0:?}")]
pub struct ParseCursorError(String);

impl std::str::FromStr for EgressCursor {
    type Err = ParseCursorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parsed = s
            .split_once('.')
            .and_then(|(time, id)| Some((time.parse().ok()?, id.parse().ok()?)));
        match parsed {
            Some((time_ms, id)) => Ok(EgressCursor { time_ms, id }),
            None => Err(ParseCursorError(s.chars().take(64).collect())),
        }
    }
}

/// One page of a session's decisions, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EgressPage {
    pub rows: Vec<EgressRow>,
    /// The cursor of the next (older) page; `None` when this page is the last.
    pub next: Option<EgressCursor>,
    /// The highest id in the table when the page was read (same snapshot): live updates
    /// continue with [`Store::egress_since`] from here, missing nothing and repeating nothing.
    pub latest_id: i64,
}

/// Decisions in one minute (allowed includes what report mode let through: `would_deny`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EgressRate {
    /// The minute's start, Unix milliseconds.
    pub minute_ms: i64,
    pub allowed: u64,
    pub denied: u64,
    pub errors: u64,
}

/// One session's stored decisions by outcome (what retention kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionEgressCounts {
    pub session: String,
    pub allowed: u64,
    pub denied: u64,
    pub errors: u64,
}

/// A session's page. `time <= ?2` bounds the index range; the OR only sorts out rows of the
/// cursor's own millisecond, which a row-value comparison would leave SQLite to scan for.
pub(super) const SESSION_PAGE: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM egress WHERE session = ?1 AND time <= ?2 AND (time < ?2 OR id < ?3)
     ORDER BY time DESC, id DESC LIMIT ?4"
);

/// Live updates. `+session` keeps SQLite off the session index, which would read the
/// session's whole history to find its few new rows; the rowid range reads only the new rows.
pub(super) const SINCE: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM egress WHERE id > ?1 AND (?2 IS NULL OR +session = ?2) ORDER BY id LIMIT ?3"
);

pub(super) const DENIALS: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM egress WHERE decision = 'deny' ORDER BY time DESC, id DESC LIMIT ?1"
);

/// Per-minute counts, every minute from `?1` to `?2` (minute numbers), none left out: a count
/// of one index range per minute and decision, where a GROUP BY over the hour's rows would sort
/// them all first.
pub(super) const RATES: &str = "WITH RECURSIVE minutes(m) AS (
         SELECT ?1 UNION ALL SELECT m + 1 FROM minutes WHERE m < ?2
     )
     SELECT m * 60000,
         (SELECT count(*) FROM egress WHERE decision = 'allow'
             AND time >= m * 60000 AND time < (m + 1) * 60000),
         (SELECT count(*) FROM egress WHERE decision = 'deny'
             AND time >= m * 60000 AND time < (m + 1) * 60000),
         (SELECT count(*) FROM egress WHERE decision = 'error'
             AND time >= m * 60000 AND time < (m + 1) * 60000)
     FROM minutes";

/// The most minutes [`Store::egress_rates`] returns (a day): a wrong `since` costs little.
pub const MAX_RATE_MINUTES: i64 = 24 * 60;

impl Store {
    /// Session `session`'s decisions, newest first: the `limit` older than `before`, or the
    /// newest `limit` without one.
    pub fn egress_for_session(
        &self,
        session: &str,
        before: Option<EgressCursor>,
        limit: u32,
    ) -> Result<EgressPage, StoreError> {
        // Without a cursor, one past every row: the same statement (and plan) either way.
        let before = before.unwrap_or(EgressCursor {
            time_ms: i64::MAX,
            id: i64::MAX,
        });
        let mut conn = self.conn();
        // One read transaction: `latest_id` and the rows are the same snapshot.
        let tx = conn.transaction()?;
        let latest_id = latest_id(&tx)?;
        let rows: Vec<EgressRow> = tx
            .prepare_cached(SESSION_PAGE)?
            .query_map(params![session, before.time_ms, before.id, limit], row)?
            .collect::<Result<_, _>>()?;
        tx.commit()?;
        let next = match rows.last() {
            Some(last) if rows.len() == limit as usize => Some(EgressCursor {
                time_ms: last.record.time_ms,
                id: last.id,
            }),
            _ => None,
        };
        Ok(EgressPage {
            rows,
            next,
            latest_id,
        })
    }

    /// Decisions with an id above `after_id`, of `session` (`None`: of every session), oldest
    /// first, at most `limit`: the live updates after a page. Cheap when `after_id` is recent
    /// (the last id the caller was told of, see `crate::egress::EgressSubscription`): the
    /// scan is of the rows inserted since, whichever session they belong to, not of the
    /// session's history.
    pub fn egress_since(
        &self,
        session: Option<&str>,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<EgressRow>, StoreError> {
        let conn = self.conn();
        let rows = conn
            .prepare_cached(SINCE)?
            .query_map(params![after_id, session, limit], row)?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// The highest id stored (0 when none): where live updates start.
    pub fn egress_latest_id(&self) -> Result<i64, StoreError> {
        latest_id(&self.conn())
    }

    /// The latest `limit` denials (`decision` = deny) across all sessions, newest first.
    pub fn recent_denials(&self, limit: u32) -> Result<Vec<EgressRow>, StoreError> {
        let conn = self.conn();
        let rows = conn
            .prepare_cached(DENIALS)?
            .query_map([limit], row)?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Decisions per minute, oldest first, for every minute from the one holding `since_ms`
    /// to the one holding `until_ms` (Unix milliseconds; at most [`MAX_RATE_MINUTES`], the
    /// latest), minutes without decisions as zeros. `decision = other` is in none of them.
    pub fn egress_rates(
        &self,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<EgressRate>, StoreError> {
        let last = until_ms.div_euclid(60_000);
        let first = since_ms
            .div_euclid(60_000)
            .max(last - (MAX_RATE_MINUTES - 1));
        if first > last {
            return Ok(Vec::new());
        }
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(RATES)?;
        let count = |r: &rusqlite::Row<'_>, i| r.get::<_, i64>(i).map(|n| n.max(0) as u64);
        let rates = stmt
            .query_map(params![first, last], |r| {
                Ok(EgressRate {
                    minute_ms: r.get(0)?,
                    allowed: count(r, 1)?,
                    denied: count(r, 2)?,
                    errors: count(r, 3)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rates)
    }

    /// Stored decisions per session (including "" and `unknown`), by session.
    pub fn egress_counts_by_session(&self) -> Result<Vec<SessionEgressCounts>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT session, decision, rows FROM egress_counts ORDER BY session")?;
        let mut sessions: Vec<SessionEgressCounts> = Vec::new();
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        for found in rows {
            let (session, decision, n) = found?;
            if sessions.last().is_none_or(|s| s.session != session) {
                sessions.push(SessionEgressCounts {
                    session,
                    allowed: 0,
                    denied: 0,
                    errors: 0,
                });
            }
            let Some(counts) = sessions.last_mut() else {
                continue;
            };
            let n = n.max(0) as u64;
            match EgressDecision::parse(&decision) {
                EgressDecision::Allow => counts.allowed += n,
                EgressDecision::Deny => counts.denied += n,
                EgressDecision::Error => counts.errors += n,
                EgressDecision::Other => {}
            }
        }
        Ok(sessions)
    }
}

fn latest_id(conn: &rusqlite::Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("SELECT coalesce(max(id), 0) FROM egress", [], |r| r.get(0))?)
}

/// The plan SQLite picks for `sql` (test support: plans are checked, not timed).
#[cfg(test)]
pub(super) fn plan(store: &Store, sql: &str) -> Vec<String> {
    let conn = store.conn();
    let mut stmt = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .expect("plan");
    let unbound = std::iter::repeat_n(rusqlite::types::Null, stmt.parameter_count());
    stmt.query_map(rusqlite::params_from_iter(unbound), |r| {
        r.get::<_, String>(3)
    })
    .expect("plan rows")
    .collect::<Result<_, _>>()
    .expect("plan rows")
}

//! Retention: decisions older than a maximum age, and beyond a maximum number of rows, are
//! deleted, a bounded chunk per transaction, so pruning a large backlog never holds SQLite's
//! write lock (which the webhook receiver and the ingester also need) for long.

use std::collections::HashMap;

use rusqlite::params;

use crate::store::{Store, StoreError};

/// Rows older than `?1` (a range per decision on `egress_decision_time`: the table's CHECK
/// lists every decision a row can have), after id `?2`. `+id`: a filter, not the rowid range
/// SQLite would otherwise scan instead of the index.
pub(super) const BY_AGE: &str = "SELECT id, session, decision FROM egress
     WHERE decision IN ('allow', 'deny', 'error', 'other') AND time < ?1 AND +id > ?2 LIMIT ?3";

impl Store {
    /// Deletes up to `chunk` decisions that are older than `older_than_ms` (Unix milliseconds)
    /// or beyond the newest `max_rows`, oldest ids first, and keeps the per-session counts in
    /// step. Returns how many were deleted: call again while it returns `chunk`.
    pub fn prune_egress(
        &self,
        older_than_ms: i64,
        max_rows: u64,
        chunk: u32,
    ) -> Result<u64, StoreError> {
        self.write(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut doomed: Vec<(i64, String, String)> = Vec::new();
            // By count: ids are assigned in increasing order and only retention deletes, so
            // the rows beyond the newest `max_rows` are those with id <= max(id) - max_rows,
            // a rowid range, where counting the rows would read them all. (Rows deleted by
            // age out of id order leave gaps: then fewer than `max_rows` are kept, never more.)
            let newest: i64 = tx.query_row("SELECT coalesce(max(id), 0) FROM egress", [], |r| {
                r.get(0)
            })?;
            let last_excess = newest.saturating_sub(i64::try_from(max_rows).unwrap_or(i64::MAX));
            if last_excess > 0 {
                let mut stmt = tx.prepare_cached(
                    "SELECT id, session, decision FROM egress WHERE id <= ?1 ORDER BY id LIMIT ?2",
                )?;
                let rows = stmt.query_map(params![last_excess, chunk], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?;
                for found in rows {
                    doomed.push(found?);
                }
            }
            // By age, with what is left of the chunk.
            let room = (chunk as usize).saturating_sub(doomed.len());
            if room > 0 {
                let mut stmt = tx.prepare_cached(BY_AGE)?;
                // Rows already taken by count are not taken twice.
                let after = doomed.last().map_or(0, |d| d.0);
                let rows = stmt.query_map(params![older_than_ms, after, room as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?;
                for found in rows {
                    doomed.push(found?);
                }
            }
            let mut counts: HashMap<(&str, &str), i64> = HashMap::new();
            {
                let mut delete = tx.prepare_cached("DELETE FROM egress WHERE id = ?1")?;
                for (id, session, decision) in &doomed {
                    delete.execute([id])?;
                    *counts.entry((session, decision)).or_default() += 1;
                }
                let mut count = tx.prepare_cached(
                    "UPDATE egress_counts SET rows = rows - ?3 WHERE session = ?1 AND decision = ?2",
                )?;
                for ((session, decision), n) in &counts {
                    count.execute(params![session, decision, n])?;
                }
            }
            tx.execute("DELETE FROM egress_counts WHERE rows <= 0", [])?;
            tx.commit()?;
            Ok(doomed.len() as u64)
        })
    }
}

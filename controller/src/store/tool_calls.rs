//! The tool calls a session made, one row each, for the dashboard's session timeline: what was
//! called, a short summary of its input, an excerpt of its result, when and for how long.
//! Bounded per row (summaries are cut), and kept with the session's other records.

use rusqlite::params;

use super::{Store, StoreError};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tool_calls (
    id            INTEGER PRIMARY KEY,
    session_id    TEXT NOT NULL,
    tool_use_id   TEXT NOT NULL,
    name          TEXT NOT NULL,
    custom        INTEGER NOT NULL,
    input_summary TEXT NOT NULL,
    result_excerpt TEXT NOT NULL,
    is_error      INTEGER NOT NULL,
    started_ms    INTEGER NOT NULL,
    duration_ms   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tool_calls_session ON tool_calls(session_id, started_ms);
";

/// Longest input summary and result excerpt kept, in characters.
pub(super) const SUMMARY_CHARS: usize = 300;
pub(super) const EXCERPT_CHARS: usize = 600;

/// One tool call, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ToolCallRecord {
    pub tool_use_id: String,
    pub name: String,
    pub custom: bool,
    pub input_summary: String,
    pub result_excerpt: String,
    pub is_error: bool,
    /// Unix milliseconds.
    pub started_ms: i64,
    pub duration_ms: i64,
}

/// `text` cut to at most `max` characters, marked when cut.
pub fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((at, _)) => format!("{}…", &text[..at]),
    }
}

impl Store {
    /// Records a finished tool call of `session`.
    pub fn record_tool_call(&self, session: &str, call: &ToolCallRecord) -> Result<(), StoreError> {
        self.write(|conn| {
            conn.execute(
                "INSERT INTO tool_calls (session_id, tool_use_id, name, custom, input_summary,
                 result_excerpt, is_error, started_ms, duration_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    session,
                    call.tool_use_id,
                    call.name,
                    call.custom,
                    clip(&call.input_summary, SUMMARY_CHARS),
                    clip(&call.result_excerpt, EXCERPT_CHARS),
                    call.is_error,
                    call.started_ms,
                    call.duration_ms
                ],
            )?;
            Ok(())
        })
    }

    /// `session`'s tool calls, newest first, at most `limit`.
    pub fn tool_calls(&self, session: &str, limit: u32) -> Result<Vec<ToolCallRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT tool_use_id, name, custom, input_summary, result_excerpt, is_error,
                    started_ms, duration_ms
             FROM tool_calls WHERE session_id = ?1 ORDER BY started_ms DESC, id DESC LIMIT ?2",
        )?;
        let rows = stmt
            .query_map(params![session, limit], |r| {
                Ok(ToolCallRecord {
                    tool_use_id: r.get(0)?,
                    name: r.get(1)?,
                    custom: r.get(2)?,
                    input_summary: r.get(3)?,
                    result_excerpt: r.get(4)?,
                    is_error: r.get(5)?,
                    started_ms: r.get(6)?,
                    duration_ms: r.get(7)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: &str, at: i64) -> ToolCallRecord {
        ToolCallRecord {
            tool_use_id: id.into(),
            name: "bash".into(),
            custom: false,
            input_summary: "x".repeat(1000),
            result_excerpt: "hi".into(),
            is_error: false,
            started_ms: at,
            duration_ms: 5,
        }
    }

    #[test]
    fn tool_calls_come_back_newest_first_with_long_inputs_clipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        store.record_tool_call("s1", &call("a", 1)).unwrap();
        store.record_tool_call("s1", &call("b", 2)).unwrap();
        store.record_tool_call("s2", &call("c", 3)).unwrap();
        let calls = store.tool_calls("s1", 10).unwrap();
        assert_eq!(
            calls
                .iter()
                .map(|c| c.tool_use_id.as_str())
                .collect::<Vec<_>>(),
            ["b", "a"]
        );
        assert_eq!(calls[0].input_summary.chars().count(), SUMMARY_CHARS + 1);
        assert!(calls[0].input_summary.ends_with('…'));
        assert_eq!(store.tool_calls("s1", 1).unwrap().len(), 1);
    }

    #[test]
    fn clip_cuts_on_character_boundaries() {
        assert_eq!(clip("héllo", 2), "hé…");
        assert_eq!(clip("hé", 2), "hé");
    }
}

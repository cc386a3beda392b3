//! The images tool calls answered with (a browser's screenshots, a custom tool's chart), kept
//! for the dashboard's session timeline. Bounded per session (the newest
//! [`MAX_IMAGES_PER_SESSION`] and at most [`MAX_BYTES_PER_SESSION`] bytes; older ones are
//! dropped as new ones come), and by age: with the session's egress decisions (the
//! dashboard's retention prunes both), and in any case after [`MAX_AGE_MS`].

use rusqlite::params;

use super::{Store, StoreError};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tool_images (
    id          INTEGER PRIMARY KEY,
    session_id  TEXT NOT NULL,
    tool_use_id TEXT NOT NULL,
    position    INTEGER NOT NULL,
    media_type  TEXT NOT NULL,
    data        BLOB NOT NULL,
    created_ms  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tool_images_call ON tool_images(session_id, tool_use_id, position);
CREATE INDEX IF NOT EXISTS tool_images_age ON tool_images(created_ms);
";

/// Images kept per session.
pub const MAX_IMAGES_PER_SESSION: i64 = 50;
/// Bytes of images kept per session.
pub const MAX_BYTES_PER_SESSION: i64 = 64 * 1024 * 1024;

/// Images older than this go whatever else happens (the dashboard's retention, when it runs,
/// may take them sooner): a controller without a dashboard still does not keep them forever.
pub const MAX_AGE_MS: i64 = 7 * 24 * 3600 * 1000;

/// The media types kept (and served back): those CMA takes in results.
pub const IMAGE_TYPES: [&str; 4] = ["image/png", "image/jpeg", "image/gif", "image/webp"];

impl Store {
    /// Keeps the images of one call of `session` (`(media type, bytes)`, in the result's
    /// order), then drops the session's oldest beyond the bounds. Types other than
    /// [`IMAGE_TYPES`] are skipped.
    pub fn record_tool_images(
        &self,
        session: &str,
        tool_use_id: &str,
        images: &[(String, Vec<u8>)],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        if images.is_empty() {
            return Ok(());
        }
        self.write(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for (position, (media_type, data)) in images.iter().enumerate() {
                if !IMAGE_TYPES.contains(&media_type.as_str()) {
                    continue;
                }
                tx.execute(
                    "INSERT INTO tool_images (session_id, tool_use_id, position, media_type, data,
                     created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        session,
                        tool_use_id,
                        position as i64,
                        media_type,
                        data,
                        now_ms
                    ],
                )?;
            }
            // The newest first; everything past either bound goes.
            let doomed: Vec<i64> = {
                let mut stmt = tx.prepare_cached(
                    "SELECT id, length(data) FROM tool_images WHERE session_id = ?1
                     ORDER BY id DESC",
                )?;
                let rows = stmt.query_map([session], |r| Ok((r.get(0)?, r.get(1)?)))?;
                let (mut count, mut bytes) = (0i64, 0i64);
                let mut doomed = Vec::new();
                for row in rows {
                    let (id, length): (i64, i64) = row?;
                    count += 1;
                    bytes += length;
                    if count > MAX_IMAGES_PER_SESSION || bytes > MAX_BYTES_PER_SESSION {
                        doomed.push(id);
                    }
                }
                doomed
            };
            for id in doomed {
                tx.execute("DELETE FROM tool_images WHERE id = ?1", [id])?;
            }
            tx.execute(
                "DELETE FROM tool_images WHERE created_ms < ?1",
                [now_ms.saturating_sub(MAX_AGE_MS)],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Image `position` of call `tool_use_id` of `session`: its media type and bytes.
    pub fn tool_image(
        &self,
        session: &str,
        tool_use_id: &str,
        position: u32,
    ) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT media_type, data FROM tool_images
             WHERE session_id = ?1 AND tool_use_id = ?2 AND position = ?3",
        )?;
        let mut rows = stmt.query_map(params![session, tool_use_id, position], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        Ok(rows.next().transpose()?)
    }

    /// The positions of the kept images of each call of `session`.
    pub fn tool_image_positions(
        &self,
        session: &str,
    ) -> Result<std::collections::HashMap<String, Vec<u32>>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT tool_use_id, position FROM tool_images WHERE session_id = ?1
             ORDER BY tool_use_id, position",
        )?;
        let mut by_call: std::collections::HashMap<String, Vec<u32>> = Default::default();
        for row in stmt.query_map([session], |r| Ok((r.get(0)?, r.get(1)?)))? {
            let (call, position): (String, u32) = row?;
            by_call.entry(call).or_default().push(position);
        }
        Ok(by_call)
    }

    /// Deletes the images kept before `older_than_ms` (Unix milliseconds); how many.
    pub fn prune_tool_images(&self, older_than_ms: i64) -> Result<u64, StoreError> {
        self.write(|conn| {
            let deleted = conn.execute(
                "DELETE FROM tool_images WHERE created_ms < ?1",
                [older_than_ms],
            )?;
            Ok(deleted as u64)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(n: usize) -> (String, Vec<u8>) {
        ("image/png".to_string(), vec![7u8; n])
    }

    #[test]
    fn images_are_kept_per_call_and_bounded_per_session() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        store
            .record_tool_images(
                "s1",
                "toolu_a",
                &[
                    png(10),
                    ("image/svg+xml".into(), b"<svg/>".to_vec()),
                    png(20),
                ],
                1_000,
            )
            .unwrap();
        assert_eq!(store.tool_image("s1", "toolu_a", 0).unwrap(), Some(png(10)));
        // Kept at its position in the result; the SVG was not kept.
        assert_eq!(store.tool_image("s1", "toolu_a", 1).unwrap(), None);
        assert_eq!(store.tool_image("s1", "toolu_a", 2).unwrap(), Some(png(20)));
        assert_eq!(store.tool_image("s2", "toolu_a", 0).unwrap(), None);
        assert_eq!(
            store.tool_image_positions("s1").unwrap()["toolu_a"],
            vec![0, 2]
        );

        // By count: the oldest go first.
        for i in 0..MAX_IMAGES_PER_SESSION {
            store
                .record_tool_images("s1", &format!("toolu_{i}"), &[png(1)], 2_000)
                .unwrap();
        }
        let kept = store.tool_image_positions("s1").unwrap();
        assert!(
            !kept.contains_key("toolu_a"),
            "the oldest call's images went"
        );
        assert_eq!(kept.len(), MAX_IMAGES_PER_SESSION as usize);

        // By bytes: one large image pushes out what does not fit with it.
        let big = (MAX_BYTES_PER_SESSION - 10) as usize;
        store
            .record_tool_images("s3", "toolu_small", &[png(100)], 3_000)
            .unwrap();
        store
            .record_tool_images("s3", "toolu_big", &[png(big)], 3_000)
            .unwrap();
        let kept = store.tool_image_positions("s3").unwrap();
        assert_eq!(kept.keys().collect::<Vec<_>>(), ["toolu_big"]);

        // By age: the dashboard's retention, and anything older than MAX_AGE_MS at any insert.
        assert_eq!(store.prune_tool_images(2_500).unwrap(), 50);
        store
            .record_tool_images("s4", "toolu_late", &[png(1)], 3_001 + MAX_AGE_MS)
            .unwrap();
        assert!(store.tool_image_positions("s3").unwrap().is_empty());
        assert_eq!(store.tool_image_positions("s4").unwrap().len(), 1);
        assert!(store.tool_image_positions("s1").unwrap().is_empty());
    }
}

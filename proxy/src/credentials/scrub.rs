//! Response scrubbing: a real secret value in an upstream response (an echo service, an error
//! page that quotes the request) is replaced by its placeholder before the sandbox sees it.
//!
//! Bodies arrive in chunks, and a value may straddle two of them, so the scrubber holds back
//! the end of a chunk when it could be the start of a value, and only that: a stream whose
//! chunks end in ordinary bytes (server-sent events) is not delayed.

use std::sync::{Arc, Mutex};

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;

use super::placeholders::PlaceholderIndex;
use super::{Presentation, Secret, SecretSet};

/// One thing to replace. The needle is secret material: this type has no `Debug` that shows it.
pub struct ScrubPattern {
    pub needle: Vec<u8>,
    pub replacement: Vec<u8>,
}

impl std::fmt::Debug for ScrubPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScrubPattern(<redacted>)")
    }
}

/// What to scrub for `secret` with `placeholder` standing in: its raw value (which also covers
/// `Bearer` and `token` forms), and for a `basic` secret the base64 `user:value` it is sent as.
pub fn patterns_for(secret: &Secret, placeholder: &str) -> Vec<ScrubPattern> {
    let mut patterns = vec![ScrubPattern {
        needle: secret.value.expose().as_bytes().to_vec(),
        replacement: placeholder.as_bytes().to_vec(),
    }];
    if let Presentation::Basic { user } = &secret.presentation {
        patterns.push(ScrubPattern {
            needle: STANDARD
                .encode(format!("{user}:{}", secret.value.expose()))
                .into_bytes(),
            replacement: STANDARD
                .encode(format!("{user}:{placeholder}"))
                .into_bytes(),
        });
    }
    patterns
}

/// What to look for and what to put in its place, compiled once and shared by every response
/// it applies to (building the automaton costs tens of microseconds; see
/// `ConnectionContext::scrub_table`, which caches it per connection).
pub struct ScrubTable {
    matcher: AhoCorasick,
    patterns: Vec<ScrubPattern>,
    /// Whether some needle starts with this byte: most chunk ends are ruled out in one lookup.
    first_bytes: [bool; 256],
    longest: usize,
}

impl std::fmt::Debug for ScrubTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScrubTable")
            .field("patterns", &self.patterns.len())
            .finish()
    }
}

/// One connection's scrub table, rebuilt only when the secret set, the placeholders or the
/// host change (a TLS connection has one host; a plaintext proxy connection may switch).
#[derive(Debug, Default)]
pub struct ScrubCache {
    entry: Mutex<Option<CacheEntry>>,
}

#[derive(Debug)]
struct CacheEntry {
    secrets: Arc<SecretSet>,
    placeholders: Arc<PlaceholderIndex>,
    host: String,
    table: Option<Arc<ScrubTable>>,
}

impl ScrubCache {
    /// The table for `host` under `secrets`, from the cache or from `build`. `placeholders`
    /// gives the current placeholder index; it is read after `build`, which may mint.
    pub fn get_or_build(
        &self,
        secrets: &Arc<SecretSet>,
        host: &str,
        placeholders: impl Fn() -> Arc<PlaceholderIndex>,
        build: impl FnOnce() -> Option<ScrubTable>,
    ) -> Option<Arc<ScrubTable>> {
        let mut entry = self.entry.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cached) = entry.as_ref()
            && Arc::ptr_eq(&cached.secrets, secrets)
            && Arc::ptr_eq(&cached.placeholders, &placeholders())
            && cached.host == host
        {
            return cached.table.clone();
        }
        let table = build().map(Arc::new);
        *entry = Some(CacheEntry {
            secrets: secrets.clone(),
            placeholders: placeholders(),
            host: host.to_string(),
            table: table.clone(),
        });
        table
    }
}

/// Streaming replacement of secret values, for one response.
#[derive(Debug)]
pub struct Scrubber {
    table: Arc<ScrubTable>,
    carry: Vec<u8>,
    replaced: u64,
    /// Never hold bytes back (a stream that may end in trailers, after which held bytes could
    /// not be sent): values split across chunks are then not recognised.
    no_holdback: bool,
}

impl ScrubTable {
    /// A table for `patterns`; `None` when there is nothing to look for.
    pub fn new(patterns: Vec<ScrubPattern>) -> Option<Self> {
        let patterns: Vec<_> = patterns
            .into_iter()
            .filter(|p| !p.needle.is_empty())
            .collect();
        if patterns.is_empty() {
            return None;
        }
        let matcher = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(patterns.iter().map(|p| &p.needle))
            .ok()?;
        let mut first_bytes = [false; 256];
        for p in &patterns {
            first_bytes[usize::from(p.needle[0])] = true;
        }
        let longest = patterns.iter().map(|p| p.needle.len()).max().unwrap_or(0);
        Some(Self {
            matcher,
            patterns,
            first_bytes,
            longest,
        })
    }

    /// Every match in `bytes` replaced: the output up to the end of the last match, where that
    /// end is in `bytes`, and how many there were.
    fn replace_all(&self, bytes: &[u8], cut: usize) -> (Vec<u8>, usize, u64) {
        let mut out = Vec::with_capacity(bytes.len());
        let mut last = 0;
        let mut count = 0;
        for m in self.matcher.find_iter(bytes) {
            // A match that starts in the held-back tail may be the short end of a longer value
            // the next chunk completes: it is looked at again then.
            if m.start() >= cut {
                break;
            }
            out.extend_from_slice(&bytes[last..m.start()]);
            out.extend_from_slice(&self.patterns[m.pattern().as_usize()].replacement);
            last = m.end();
            count += 1;
        }
        (out, last, count)
    }

    /// The length of the longest end of `tail` that some needle starts with (and is longer
    /// than): those bytes may be the first part of a value the next chunk completes.
    fn partial_suffix(&self, tail: &[u8]) -> usize {
        let most = tail.len().min(self.longest.saturating_sub(1));
        (1..=most)
            .rev()
            .find(|&k| {
                let suffix = &tail[tail.len() - k..];
                self.first_bytes[usize::from(suffix[0])]
                    && self
                        .patterns
                        .iter()
                        .any(|p| p.needle.len() > k && p.needle.starts_with(suffix))
            })
            .unwrap_or(0)
    }
}

impl Scrubber {
    /// A scrubber for one response.
    pub fn new(table: Arc<ScrubTable>) -> Self {
        Self {
            table,
            carry: Vec::new(),
            replaced: 0,
            no_holdback: false,
        }
    }

    /// Stops holding bytes back (see the field); whatever is held now goes out with the next
    /// chunk.
    pub fn disable_holdback(&mut self) {
        self.no_holdback = true;
    }

    /// How many values were replaced so far.
    pub fn replaced(&self) -> u64 {
        self.replaced
    }

    /// Scrubs the next chunk. Returns what may be sent now; at `end` that is everything left.
    pub fn push(&mut self, chunk: &[u8], end: bool) -> Bytes {
        let buf = if self.carry.is_empty() {
            std::borrow::Cow::Borrowed(chunk)
        } else {
            let mut joined = std::mem::take(&mut self.carry);
            joined.extend_from_slice(chunk);
            std::borrow::Cow::Owned(joined)
        };
        // What may be the start of a value is decided on the whole buffer first, so a shorter
        // value inside a longer one that straddles the chunk end cannot win.
        let hold = if end || self.no_holdback {
            0
        } else {
            self.table.partial_suffix(&buf)
        };
        let cut = buf.len() - hold;
        let (mut out, last, count) = self.table.replace_all(&buf, cut);
        self.replaced += count;
        let keep_from = last.max(cut);
        out.extend_from_slice(&buf[last..keep_from]);
        self.carry = buf[keep_from..].to_vec();
        Bytes::from(out)
    }

    /// `bytes` with every value replaced (a header value: no chunks); `None` when unchanged.
    pub fn scrub_all(&mut self, bytes: &[u8]) -> Option<Vec<u8>> {
        let (mut out, last, count) = self.table.replace_all(bytes, bytes.len());
        if count == 0 {
            return None;
        }
        self.replaced += count;
        out.extend_from_slice(&bytes[last..]);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrubber() -> Scrubber {
        Scrubber::new(Arc::new(table()))
    }

    fn table() -> ScrubTable {
        ScrubTable::new(vec![
            ScrubPattern {
                needle: b"ghp_REALSECRET".to_vec(),
                replacement: b"ghp_placeholder00".to_vec(),
            },
            ScrubPattern {
                needle: b"c2VjcmV0".to_vec(),
                replacement: b"cGxhY2Vob2xkZXI=".to_vec(),
            },
        ])
        .unwrap()
    }

    /// Feeds `text` in chunks of every size from 1 to its length; the output never contains
    /// the value and always equals the one-shot replacement.
    #[test]
    fn replaces_values_across_every_chunk_boundary() {
        let text =
            b"echo: Bearer ghp_REALSECRET, basic c2VjcmV0 and ghp_REAL (not it) ghp_REALSECRET";
        let expected = b"echo: Bearer ghp_placeholder00, basic cGxhY2Vob2xkZXI= and ghp_REAL (not it) ghp_placeholder00";
        for size in 1..=text.len() {
            let mut s = scrubber();
            let mut out = Vec::new();
            let chunks: Vec<_> = text.chunks(size).collect();
            for (i, chunk) in chunks.iter().enumerate() {
                let piece = s.push(chunk, i + 1 == chunks.len());
                assert!(
                    !piece.windows(14).any(|w| w == b"ghp_REALSECRET"),
                    "size {size}"
                );
                out.extend_from_slice(&piece);
            }
            assert_eq!(out, expected, "size {size}");
            assert_eq!(s.replaced(), 3);
        }
    }

    #[test]
    fn a_longer_value_wins_over_one_inside_it_across_chunks() {
        let table = Arc::new(
            ScrubTable::new(vec![
                ScrubPattern {
                    needle: b"abcdef".to_vec(),
                    replacement: b"[A]".to_vec(),
                },
                ScrubPattern {
                    needle: b"bcd".to_vec(),
                    replacement: b"[B]".to_vec(),
                },
            ])
            .unwrap(),
        );
        let text = b"xabcdefy bcd abcdef";
        for size in 1..=text.len() {
            let mut s = Scrubber::new(table.clone());
            let chunks: Vec<_> = text.chunks(size).collect();
            let out: Vec<u8> = chunks
                .iter()
                .enumerate()
                .flat_map(|(i, c)| s.push(c, i + 1 == chunks.len()).to_vec())
                .collect();
            assert_eq!(out, b"x[A]y [B] [A]", "size {size}");
        }
    }

    #[test]
    fn holds_back_only_what_could_start_a_value() {
        let mut s = scrubber();
        assert_eq!(&s.push(b"data: hello\n\n", false)[..], b"data: hello\n\n");
        assert_eq!(&s.push(b"data: ghp_RE", false)[..], b"data: ");
        assert_eq!(&s.push(b"ALLY\n", false)[..], b"ghp_REALLY\n");
        // The end of the stream flushes whatever was held.
        assert_eq!(&s.push(b"tail ghp_", false)[..], b"tail ");
        assert_eq!(&s.push(b"", true)[..], b"ghp_");
    }

    #[test]
    fn without_holdback_every_byte_goes_out_at_once() {
        let mut s = scrubber();
        s.disable_holdback();
        assert_eq!(&s.push(b"data: ghp_RE", false)[..], b"data: ghp_RE");
        assert_eq!(
            &s.push(b"ghp_REALSECRET!", false)[..],
            b"ghp_placeholder00!"
        );
    }

    #[test]
    fn scrubs_header_values_and_hides_needles_from_debug() {
        let mut s = scrubber();
        assert_eq!(
            s.scrub_all(b"token ghp_REALSECRET").unwrap(),
            b"token ghp_placeholder00"
        );
        assert!(s.scrub_all(b"nothing here").is_none());
        assert!(!format!("{s:?}").contains("REALSECRET"));
        assert!(ScrubTable::new(vec![]).is_none());
    }
}

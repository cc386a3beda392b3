//! Per-session placeholders: stand-in values a sandbox may hold for tools that insist on having
//! a token (git, npm, gh, SDKs).
//!
//! The admin API mints one per (session, secret). The proxy swaps it for the real value in
//! request headers toward the secret's bound hosts, refuses it anywhere else (exfiltration) and
//! from any other session, and puts it back where an upstream response echoes the real value.
//!
//! A placeholder is the secret's `placeholder_prefix` and 32 random base62 characters (about 190
//! bits), so it cannot be guessed and never collides with another session's. It is not a
//! secret: it is worthless outside the proxy.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use aho_corasick::{AhoCorasick, MatchKind};
use arc_swap::ArcSwap;
use rand::Rng;
use rand::distr::Alphanumeric;

/// Random characters after the prefix.
const RANDOM_LEN: usize = 32;

/// Who a placeholder belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub session: String,
    pub secret: String,
}

/// Why a placeholder could not be minted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MintError {
    #[error("session {0:?} is not registered; register it with PUT /sessions/{{id}} first")]
    UnknownSession(String),
    #[error("secret {0:?} is not in the secret store")]
    UnknownSecret(String),
}

/// Every live placeholder, and a matcher over all of them.
#[derive(Debug, Default)]
pub struct Placeholders {
    table: RwLock<HashMap<String, BTreeMap<String, String>>>,
    index: ArcSwap<PlaceholderIndex>,
}

/// A snapshot of every live placeholder, searchable in one pass. Rebuilt on each mint and
/// session removal (rare), read lock-free on every request.
#[derive(Debug, Default)]
pub struct PlaceholderIndex {
    matcher: Option<AhoCorasick>,
    owners: Vec<Owner>,
}

/// One placeholder found in some bytes.
#[derive(Debug, Clone, Copy)]
pub struct Found<'a> {
    pub owner: &'a Owner,
    pub start: usize,
    pub end: usize,
}

impl PlaceholderIndex {
    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    /// Every placeholder in `haystack`, left to right, not overlapping.
    pub fn find<'a>(&'a self, haystack: &'a [u8]) -> impl Iterator<Item = Found<'a>> + 'a {
        self.matcher
            .iter()
            .flat_map(move |m| m.find_iter(haystack))
            .map(|m| Found {
                owner: &self.owners[m.pattern().as_usize()],
                start: m.start(),
                end: m.end(),
            })
    }
}

impl Placeholders {
    /// The placeholder of `secret` for `session`, minting it on first use. `prefix` is the
    /// secret's `placeholder_prefix`.
    pub fn get_or_mint(&self, session: &str, secret: &str, prefix: &str) -> String {
        if let Some(existing) = self.get(session, secret) {
            return existing;
        }
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = table.get(session).and_then(|s| s.get(secret)) {
            return existing.clone();
        }
        let random: String = rand::rng()
            .sample_iter(Alphanumeric)
            .take(RANDOM_LEN)
            .map(char::from)
            .collect();
        let placeholder = format!("{prefix}{random}");
        table
            .entry(session.to_string())
            .or_default()
            .insert(secret.to_string(), placeholder.clone());
        self.rebuild(&table);
        placeholder
    }

    /// The placeholders already minted for `session`, by secret name.
    pub fn of_session(&self, session: &str) -> BTreeMap<String, String> {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        table.get(session).cloned().unwrap_or_default()
    }

    /// The placeholder of `secret` for `session`, if one was minted.
    pub fn get(&self, session: &str, secret: &str) -> Option<String> {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        table.get(session).and_then(|s| s.get(secret)).cloned()
    }

    /// Forgets a session's placeholders (the session ended): from now on they are plain
    /// strings, swapped nowhere.
    pub fn remove_session(&self, session: &str) {
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        if table.remove(session).is_some() {
            self.rebuild(&table);
        }
    }

    pub fn index(&self) -> Arc<PlaceholderIndex> {
        self.index.load_full()
    }

    fn rebuild(&self, table: &HashMap<String, BTreeMap<String, String>>) {
        let mut owners = Vec::new();
        let mut patterns = Vec::new();
        for (session, secrets) in table {
            for (secret, placeholder) in secrets {
                owners.push(Owner {
                    session: session.clone(),
                    secret: secret.clone(),
                });
                patterns.push(placeholder.as_bytes());
            }
        }
        // Patterns are plain byte strings of bounded length; building cannot fail in practice,
        // and if it did every placeholder would stay unswapped (fail closed: nothing real is
        // sent), which the error log says.
        let matcher = if patterns.is_empty() {
            None
        } else {
            match AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&patterns)
            {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::error!(error = %e, "cannot index placeholders; none will be swapped");
                    None
                }
            }
        };
        self.index
            .store(Arc::new(PlaceholderIndex { matcher, owners }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mints_once_per_session_and_secret() {
        let placeholders = Placeholders::default();
        let a = placeholders.get_or_mint("sesn_a", "github", "ghp_");
        assert!(a.starts_with("ghp_") && a.len() == 4 + RANDOM_LEN, "{a}");
        assert_eq!(placeholders.get_or_mint("sesn_a", "github", "ghp_"), a);
        let b = placeholders.get_or_mint("sesn_b", "github", "ghp_");
        assert_ne!(a, b);
        assert_eq!(placeholders.of_session("sesn_a").len(), 1);
    }

    #[test]
    fn the_index_finds_owners_and_forgets_removed_sessions() {
        let placeholders = Placeholders::default();
        let a = placeholders.get_or_mint("sesn_a", "github", "ghp_");
        let b = placeholders.get_or_mint("sesn_b", "npm", "npm_");
        let text = format!("token {a} and {b}!");
        let index = placeholders.index();
        let found: Vec<_> = index.find(text.as_bytes()).collect();
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].owner.session, "sesn_a");
        assert_eq!(&text[found[0].start..found[0].end], a);
        assert_eq!(found[1].owner.secret, "npm");
        placeholders.remove_session("sesn_a");
        let index = placeholders.index();
        assert_eq!(index.find(text.as_bytes()).count(), 1);
        assert!(placeholders.get("sesn_a", "github").is_none());
    }
}

//! The audit log: one JSON line per decided request and per refused connection.
//!
//! Records name what was decided and why, never what was carried: no query strings, no header
//! values, no credentials. docs/AUDIT.md is the schema.

use std::borrow::Cow;
use std::cell::RefCell;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::Serialize;

use crate::config::AuditTarget;

mod json;

/// One audit record. Optional fields are omitted when unknown. It borrows what the request or
/// connection already holds: it is built, encoded and dropped once per request. It is encoded
/// by `json.rs`; the derived `Serialize` is that encoder's reference in tests.
#[derive(Debug, Clone, Serialize, Default)]
pub struct AuditRecord<'a> {
    /// RFC 3339 UTC.
    pub time: String,
    /// `request` or `connection`.
    pub kind: &'static str,
    pub decision_id: &'a str,
    /// Request records: the id of the connection that carried the request, shared by every
    /// request on one keep-alive or HTTP/2 connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<&'a str>,
    pub session: &'a str,
    /// The labels the session was registered with (a custom tool's calls: the calling
    /// session); omitted when it has none.
    #[serde(skip_serializing_if = "labels_empty")]
    pub labels: Option<&'a std::collections::BTreeMap<String, String>>,
    pub source: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_destination: Option<std::net::SocketAddr>,
    pub mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Path without the query string.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<&'static str>,
    /// allow | deny | error
    pub decision: &'static str,
    /// The policy denied, and report mode let it through (`decision` is then `allow`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub would_deny: bool,
    /// Closed set. Requests: policy | policy_failure | fronting | bad_request | ssrf | resolve |
    /// upstream | upstream_timeout | credential | exfiltration | body_too_large | internal.
    /// Connections: policy | policy_failure | bad_request | bad_client_hello | timeout | no_sni |
    /// raw_tcp | tls_handshake | ssrf | resolve | upstream | upstream_timeout | internal.
    pub reason_class: &'static str,
    pub reason: &'a str,
    pub policy_generation: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_address: Option<std::net::SocketAddr>,
    /// Credentials injected, as `secret->header` (names only, never values).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<String>,
    /// Placeholders swapped for real values, as `secret->header`.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub placeholders: &'a [String],
    /// Real secret values found in the response and replaced by placeholders.
    #[serde(skip_serializing_if = "is_zero")]
    pub secrets_scrubbed: u64,
    /// Request bodies read for the policy (its manifest asks): bytes read before the decision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_read: Option<u64>,
    /// The policy saw only a prefix of the body (`truncated_body`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub body_truncated: bool,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub policy_us: u64,
    pub duration_ms: u64,
}

fn labels_empty(labels: &Option<&std::collections::BTreeMap<String, String>>) -> bool {
    labels.is_none_or(|l| l.is_empty())
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Records larger than this in total wait for no timer: the writer that fills the buffer
/// writes it out, which bounds the memory a burst can hold.
const MAX_PENDING: usize = 256 * 1024;

/// Where records are written.
///
/// With a flush interval (`[audit] flush_interval_ms`, the default), records are encoded into
/// a buffer and written by a background thread once per interval, in one `write`: one system
/// call per interval instead of one per request (a sixth of the proxy's system calls for small
/// keep-alive requests). A record reaches the file at most one interval after its request ends;
/// shutdown (SIGTERM or SIGINT) writes what is buffered, SIGKILL loses at most one interval.
/// Without one, each record is written at once. Either way records are written whole, in
/// order, never interleaved.
pub struct AuditLog {
    shared: Arc<Shared>,
}

struct Shared {
    /// Encoded records not yet written.
    pending: Mutex<Vec<u8>>,
    /// Held while writing, so batches reach the sink in the order they were taken.
    sink: Mutex<Sink>,
    /// Write each record at once: unbuffered, or closed.
    immediate: AtomicBool,
}

struct Sink {
    out: Box<dyn Write + Send>,
    /// The log file again (a second handle), to cut off a batch written in part: a full disk
    /// must not leave half a record. `None` for standard output.
    file: Option<std::fs::File>,
    /// The previous batch's buffer, swapped in for `pending` so neither reallocates.
    spare: Vec<u8>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").finish_non_exhaustive()
    }
}

thread_local! {
    /// Each thread encodes into its own buffer, outside the lock.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl AuditLog {
    /// Opens the target; `flush_interval` `None` writes every record at once.
    pub fn open(target: &AuditTarget, flush_interval: Option<Duration>) -> std::io::Result<Self> {
        let (out, file): (Box<dyn Write + Send>, _) = match target {
            AuditTarget::Stdout => (Box::new(std::io::stdout()), None),
            AuditTarget::File(path) => {
                let file = open_append(path)?;
                let again = file.try_clone()?;
                (Box::new(file), Some(again))
            }
        };
        let shared = Arc::new(Shared {
            pending: Mutex::new(Vec::new()),
            sink: Mutex::new(Sink {
                out,
                file,
                spare: Vec::new(),
            }),
            immediate: AtomicBool::new(flush_interval.is_none()),
        });
        if let Some(interval) = flush_interval {
            let weak = Arc::downgrade(&shared);
            std::thread::Builder::new()
                .name("cordon-audit".into())
                .spawn(move || flush_every(&weak, interval))?;
        }
        Ok(Self { shared })
    }

    /// Writes a request or connection record.
    pub fn write(&self, record: &AuditRecord<'_>) {
        self.write_line(|line| {
            json::record(record, line);
            Some(())
        });
    }

    /// Writes another kind's record (DNS queries).
    pub fn write_other<R: Serialize>(&self, record: &R) {
        self.write_line(|line| {
            serde_json::to_writer(&mut *line, record)
                .map_err(|e| tracing::error!(error = %e, "cannot encode an audit record"))
                .ok()
        });
    }

    /// Encodes one line with `encode` (which reports its own failure) and buffers or writes it.
    fn write_line(&self, encode: impl Fn(&mut Vec<u8>) -> Option<()>) {
        let full = SCRATCH.with(|scratch| {
            let mut fresh = Vec::new();
            // Not re-entered through this crate; a fresh buffer if it ever is.
            let mut borrowed = scratch.try_borrow_mut().ok();
            let line = borrowed.as_deref_mut().unwrap_or(&mut fresh);
            line.clear();
            encode(line)?;
            line.push(b'\n');
            Some(self.shared.append(line))
        });
        if full.is_some_and(|full| full || self.shared.immediate.load(Ordering::Relaxed)) {
            self.shared.flush();
        }
    }

    /// Writes what is buffered and every later record at once. Called at shutdown.
    pub fn close(&self) {
        self.shared.immediate.store(true, Ordering::Relaxed);
        self.shared.flush();
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.close();
    }
}

impl Shared {
    /// Buffers one line; whether the buffer is now full.
    fn append(&self, line: &[u8]) -> bool {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.extend_from_slice(line);
        pending.len() >= MAX_PENDING
    }

    fn flush(&self) {
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        let sink = &mut *sink;
        {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            if pending.is_empty() {
                return;
            }
            std::mem::swap(&mut *pending, &mut sink.spare);
        }
        let mut written = 0;
        let result = loop {
            if written == sink.spare.len() {
                break sink.out.flush();
            }
            match sink.out.write(&sink.spare[written..]) {
                Ok(0) => break Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        if let Err(e) = result {
            // Whole records or none: what part of this batch reached the file is cut off
            // again, so the log never holds half a line (a full disk, say).
            if written > 0
                && let Some(file) = &sink.file
                && let Ok(meta) = file.metadata()
            {
                let _ = file.set_len(meta.len().saturating_sub(written as u64));
            }
            let records = sink.spare.iter().filter(|b| **b == b'\n').count();
            tracing::error!(error = %e, records, "cannot write the audit log; these records are lost");
        }
        sink.spare.clear();
        if sink.spare.capacity() > MAX_PENDING * 2 {
            sink.spare.shrink_to(MAX_PENDING);
        }
    }
}

/// The background writer: flushes once per interval until the log is dropped.
fn flush_every(shared: &Weak<Shared>, interval: Duration) {
    loop {
        std::thread::sleep(interval);
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.flush();
    }
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// Now, as RFC 3339 UTC with nanoseconds (`2026-11-27T08:12:03.123456789Z`): always nine
/// fraction digits, so records sort as text. The digits are written directly: this runs once
/// per request, and `time`'s RFC 3339 formatter or `write!` with padded fields cost about
/// 2,300 instructions, most of a microsecond.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let mut out = String::with_capacity(32);
    digits(&mut out, now.year().clamp(0, 9999) as u32, 4);
    out.push('-');
    digits(&mut out, u8::from(now.month()).into(), 2);
    out.push('-');
    digits(&mut out, now.day().into(), 2);
    out.push('T');
    digits(&mut out, now.hour().into(), 2);
    out.push(':');
    digits(&mut out, now.minute().into(), 2);
    out.push(':');
    digits(&mut out, now.second().into(), 2);
    out.push('.');
    digits(&mut out, now.nanosecond(), 9);
    out.push('Z');
    out
}

/// `value`'s last `width` decimal digits, zero-padded.
fn digits(out: &mut String, value: u32, width: u32) {
    for place in (0..width).rev() {
        let digit = (value / 10u32.pow(place)) % 10;
        out.push(char::from(b'0' + digit as u8));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc_with_nanoseconds() {
        let stamp = now_rfc3339();
        let parsed =
            time::OffsetDateTime::parse(&stamp, &time::format_description::well_known::Rfc3339)
                .unwrap();
        assert_eq!(parsed.offset(), time::UtcOffset::UTC);
        assert_eq!(
            stamp.len(),
            "2026-11-27T08:12:03.123456789Z".len(),
            "{stamp}"
        );
        let age = time::OffsetDateTime::now_utc() - parsed;
        assert!(age >= time::Duration::ZERO && age < time::Duration::seconds(5));
    }
}

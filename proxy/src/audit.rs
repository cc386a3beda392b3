//! The audit log: one JSON line per decided request and per refused connection.
//!
//! Records name what was decided and why, never what was carried: no query strings, no header
//! values, no credentials. docs/AUDIT.md is the schema.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;

use crate::config::AuditTarget;

/// One audit record. Optional fields are omitted when unknown.
#[derive(Debug, Clone, Serialize, Default)]
pub struct AuditRecord {
    /// RFC 3339 UTC.
    pub time: String,
    /// `request` or `connection`.
    pub kind: &'static str,
    pub decision_id: String,
    /// Request records: the id of the connection that carried the request, shared by every
    /// request on one keep-alive or HTTP/2 connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<String>,
    pub session: String,
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_destination: Option<String>,
    pub mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Path without the query string.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<&'static str>,
    /// allow | deny | error
    pub decision: &'static str,
    /// Closed set. Requests: policy | policy_failure | fronting | bad_request | ssrf | resolve |
    /// upstream | upstream_timeout | credential | exfiltration | internal. Connections: policy |
    /// policy_failure | bad_request | bad_client_hello | timeout | no_sni | raw_tcp |
    /// tls_handshake | ssrf | resolve | upstream | upstream_timeout | internal.
    pub reason_class: &'static str,
    pub reason: String,
    pub policy_generation: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_address: Option<String>,
    /// Credentials injected, as `secret->header` (names only, never values).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<String>,
    /// Placeholders swapped for real values, as `secret->header`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub placeholders: Vec<String>,
    /// Real secret values found in the response and replaced by placeholders.
    #[serde(skip_serializing_if = "is_zero")]
    pub secrets_scrubbed: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub policy_us: u64,
    pub duration_ms: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Where records are written. Each record is one `write` of one line, so concurrent writers
/// never interleave within a line.
pub struct AuditLog {
    sink: Mutex<Box<dyn Write + Send>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").finish_non_exhaustive()
    }
}

impl AuditLog {
    pub fn open(target: &AuditTarget) -> std::io::Result<Self> {
        let sink: Box<dyn Write + Send> = match target {
            AuditTarget::Stdout => Box::new(std::io::stdout()),
            AuditTarget::File(path) => Box::new(open_append(path)?),
        };
        Ok(Self {
            sink: Mutex::new(sink),
        })
    }

    /// Writes one record: an [`AuditRecord`], or another kind's record (DNS queries).
    pub fn write<R: Serialize>(&self, record: &R) {
        let mut line = match serde_json::to_vec(record) {
            Ok(line) => line,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode an audit record");
                return;
            }
        };
        line.push(b'\n');
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = sink.write_all(&line).and_then(|()| sink.flush()) {
            tracing::error!(error = %e, "cannot write the audit log");
        }
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

/// Now, as RFC 3339 UTC (nanosecond precision).
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}

//! One audit log line, parsed into what the controller stores.
//!
//! The controller reads docs/AUDIT.md's schema with a struct of its own rather than the
//! proxy's `AuditRecord`: linking the data plane to parse one file would put the proxy's whole
//! dependency tree in the control plane. Only the stored fields are named; every other field
//! (and any a newer proxy adds) is ignored.

use serde::Deserialize;

use crate::store::egress::{EgressDecision, EgressKind, EgressRecord};

#[derive(Deserialize)]
struct AuditLine {
    time: String,
    kind: String,
    #[serde(default)]
    decision_id: String,
    #[serde(default)]
    session: String,
    method: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    path: Option<String>,
    decision: Option<String>,
    #[serde(default)]
    would_deny: bool,
    #[serde(default)]
    reason_class: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    policy_generation: String,
    status: Option<u16>,
    #[serde(default)]
    credentials: Vec<String>,
    #[serde(default)]
    placeholders: Vec<String>,
}

/// Why a line was not stored. Deliberately without the line or serde's message, which quotes
/// it: a malformed line may hold anything, and it is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum MalformedLine {
    #[error("not a JSON object")]
    NotJson,
    #[error("a field is missing or has the wrong type")]
    Fields,
    #[error("`time` is not RFC 3339")]
    Time,
    #[error("a decision record without `decision`")]
    NoDecision,
    #[error("too long to read, or left unfinished in a rotated file")]
    Cut,
}

/// The line's decision; `None` for a record that is not one (`dns`, or a kind a newer proxy
/// adds), which is skipped without being counted as malformed.
pub(super) fn parse(line: &[u8]) -> Result<Option<EgressRecord>, MalformedLine> {
    let line: AuditLine = serde_json::from_slice(line).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => MalformedLine::Fields,
        _ => MalformedLine::NotJson,
    })?;
    let kind = match line.kind.as_str() {
        "request" => EgressKind::Request,
        "connection" => EgressKind::Connection,
        _ => return Ok(None),
    };
    let time =
        time::OffsetDateTime::parse(&line.time, &time::format_description::well_known::Rfc3339)
            .map_err(|_| MalformedLine::Time)?;
    let time_ms =
        i64::try_from(time.unix_timestamp_nanos() / 1_000_000).map_err(|_| MalformedLine::Time)?;
    let decision = line.decision.ok_or(MalformedLine::NoDecision)?;
    Ok(Some(EgressRecord {
        time_ms,
        session: line.session,
        kind,
        decision_id: line.decision_id,
        method: line.method,
        host: line.host,
        port: line.port,
        path: line.path,
        decision: EgressDecision::parse(&decision),
        would_deny: line.would_deny,
        reason_class: line.reason_class,
        reason: line.reason,
        status: line.status,
        credentials: line.credentials,
        placeholders: line.placeholders,
        policy_generation: line.policy_generation,
    }))
}

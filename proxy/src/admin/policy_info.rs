//! `GET /policy`: the generation serving now, and the bundle files it was built from as they
//! were read (not as they are on disk now), each with its SHA-256, so an operator can tell
//! exactly which text decides.

use cordon_policy::{EvalPath, GenerationInfo, OverLimit};
use serde::Serialize;
use time::format_description::well_known::Rfc3339;

use crate::state::GatewayState;

#[derive(Debug, Serialize)]
struct PolicyInfo<'a> {
    id: &'a str,
    revision: Option<&'a str>,
    content_hash: &'a str,
    /// RFC 3339, UTC.
    loaded_at: String,
    /// Modules served (test modules excluded).
    modules: usize,
    query: &'a str,
    /// `vm` (the compiled fast path) or `interpreter`.
    evaluator: &'static str,
    /// Why the interpreter serves, when it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    interpreter_reason: Option<&'a str>,
    /// The manifest's `metadata.cordon.request_body`, when the policy reads bodies.
    #[serde(skip_serializing_if = "Option::is_none")]
    request_body: Option<RequestBody<'a>>,
    /// `[policy] bundle`, as configured.
    bundle: String,
    files: Vec<File<'a>>,
}

#[derive(Debug, Serialize)]
struct RequestBody<'a> {
    max_bytes: usize,
    max_decoded_bytes: usize,
    /// `deny` or `truncate`.
    over_limit: &'static str,
    /// Absent: every host.
    #[serde(skip_serializing_if = "Option::is_none")]
    hosts: Option<&'a [String]>,
}

#[derive(Debug, Serialize)]
struct File<'a> {
    path: &'a str,
    /// `module`, `test`, `data` or `manifest`.
    kind: &'static str,
    bytes: usize,
    sha256: &'a str,
}

pub(super) fn policy(state: &GatewayState) -> serde_json::Value {
    let generation = state.policy.generation();
    let bundle = state.policy.config().bundle.display().to_string();
    serde_json::to_value(describe(generation.info(), bundle)).unwrap_or_default()
}

fn describe(info: &GenerationInfo, bundle: String) -> PolicyInfo<'_> {
    let (evaluator, interpreter_reason) = match &info.path {
        EvalPath::Vm => ("vm", None),
        EvalPath::Interpreter { reason } => ("interpreter", Some(reason.as_str())),
    };
    PolicyInfo {
        id: &info.id,
        revision: info.revision.as_deref(),
        content_hash: &info.content_hash,
        loaded_at: time::OffsetDateTime::from(info.loaded_at)
            .format(&Rfc3339)
            .unwrap_or_default(),
        modules: info.modules,
        query: &info.query,
        evaluator,
        interpreter_reason,
        request_body: info.request_body.as_ref().map(|config| RequestBody {
            max_bytes: config.max_bytes,
            max_decoded_bytes: config.max_decoded_bytes,
            over_limit: match config.over_limit {
                OverLimit::Deny => "deny",
                OverLimit::Truncate => "truncate",
            },
            hosts: config.hosts.as_deref(),
        }),
        bundle,
        files: info
            .files
            .iter()
            .map(|f| File {
                path: &f.path,
                kind: f.kind.as_str(),
                bytes: f.len(),
                sha256: &f.sha256,
            })
            .collect(),
    }
}

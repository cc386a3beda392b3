//! `metadata.cordon.request_body` in a bundle's `.manifest`: the policy's opt-in to request
//! bodies.
//!
//! Bodies cost the proxy a buffer and a parse per request, and take requests off the
//! streaming path, so they are read only for bundles that ask. The key lives under OPA's
//! free-form `metadata` object rather than at the manifest's top level: `opa build` keeps
//! `metadata` when it rewrites a manifest into an archive and drops keys it does not know, and
//! `opa` itself loads such a manifest unchanged.

use serde::Deserialize;

/// Bytes of a request body read for the policy unless the manifest says otherwise: enough for
/// JSON-RPC calls, model API requests with a prompt, GraphQL documents and git push commands.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
/// Decoded bytes (after `Content-Encoding`) the policy may see unless the manifest says
/// otherwise: the bound that turns a decompression bomb into a `body_error`.
pub const DEFAULT_MAX_DECODED_BODY_BYTES: usize = 1024 * 1024;
/// The largest `max_bytes` a manifest may ask for: a body is held in memory for the length of
/// one decision, once per concurrent request.
pub const MAX_BODY_BYTES_CEILING: usize = 16 * 1024 * 1024;
/// The largest `max_decoded_bytes` a manifest may ask for.
pub const MAX_DECODED_BODY_BYTES_CEILING: usize = 64 * 1024 * 1024;

/// What the proxy does with a body larger than `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverLimit {
    /// Refuse the request (413) without asking the policy: it never decides on part of a body.
    #[default]
    Deny,
    /// Ask the policy with the first `max_bytes` only: `truncated_body: true`, no
    /// `parsed_body` and no convenience fields (as opa-envoy-plugin does with Envoy's
    /// `allow_partial_message`).
    Truncate,
}

/// A bundle's request-body settings, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestBodyConfig {
    /// Bytes of the body (as received, before decoding) the proxy buffers for the policy.
    pub max_bytes: usize,
    /// Bytes the body may decode to (`Content-Encoding: gzip`/`deflate`); never less than
    /// `max_bytes`.
    pub max_decoded_bytes: usize,
    pub over_limit: OverLimit,
    /// Lower-cased host names whose requests carry bodies (`*.example.com` matches every
    /// subdomain, not `example.com` itself); `None` for every host.
    pub hosts: Option<Vec<String>>,
}

impl Default for RequestBodyConfig {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_BODY_BYTES,
            max_decoded_bytes: DEFAULT_MAX_DECODED_BODY_BYTES,
            over_limit: OverLimit::Deny,
            hosts: None,
        }
    }
}

impl RequestBodyConfig {
    /// Whether requests to `host` (the normalised `input.destination.host`) are read with
    /// their bodies.
    pub fn wants(&self, host: &str) -> bool {
        let Some(hosts) = &self.hosts else {
            return true;
        };
        hosts
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(suffix) => host
                    .strip_suffix(suffix)
                    .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')),
                None => pattern.eq_ignore_ascii_case(host),
            })
    }

    /// What to do with a body of this request longer than `max_bytes`. A git push is always
    /// read as a prefix: its ref updates come before the pack, and are whole once their
    /// flush-pkt has arrived (`input.cordon.git`), however large the pack behind them.
    pub fn over_limit_for(&self, method: &str, path: &str) -> OverLimit {
        if crate::input::body::is_receive_pack(method, path) {
            OverLimit::Truncate
        } else {
            self.over_limit
        }
    }

    /// The limits the body parser applies.
    pub fn limits(&self) -> crate::input::BodyLimits {
        crate::input::BodyLimits {
            max_bytes: self.max_bytes,
            max_decoded_bytes: self.max_decoded_bytes,
        }
    }
}

/// The manifest's `metadata.cordon` object: Cordon's namespace, so unknown keys are errors
/// (a misspelt key would otherwise silently leave bodies off).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CordonMetadata {
    #[serde(default)]
    request_body: Option<RawRequestBody>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequestBody {
    max_bytes: Option<u64>,
    max_decoded_bytes: Option<u64>,
    over_limit: Option<OverLimit>,
    hosts: Option<Vec<String>>,
}

/// Reads `metadata.cordon.request_body` from the manifest's `metadata` (any JSON; OPA requires
/// an object). `Ok(None)` when the bundle does not ask for bodies.
pub(super) fn parse(
    metadata: Option<&serde_json::Value>,
) -> Result<Option<RequestBodyConfig>, String> {
    let Some(metadata) = metadata else {
        return Ok(None);
    };
    let Some(metadata) = metadata.as_object() else {
        return Err("metadata must be a JSON object, as OPA requires".to_string());
    };
    let Some(cordon) = metadata.get("cordon") else {
        return Ok(None);
    };
    let cordon: CordonMetadata =
        serde_json::from_value(cordon.clone()).map_err(|e| format!("metadata.cordon: {e}"))?;
    let Some(raw) = cordon.request_body else {
        return Ok(None);
    };
    let key = "metadata.cordon.request_body";
    let size = |name: &str, value: Option<u64>, default: usize, ceiling: usize| {
        let value = value.map_or(Ok(default), |v| usize::try_from(v).map_err(|_| ()));
        match value {
            Ok(v) if (1..=ceiling).contains(&v) => Ok(v),
            _ => Err(format!(
                "{key}.{name} must be between 1 and {ceiling} bytes; leave it out for the \
                 default ({default})"
            )),
        }
    };
    let max_bytes = size(
        "max_bytes",
        raw.max_bytes,
        DEFAULT_MAX_BODY_BYTES,
        MAX_BODY_BYTES_CEILING,
    )?;
    let max_decoded_bytes = size(
        "max_decoded_bytes",
        raw.max_decoded_bytes,
        DEFAULT_MAX_DECODED_BODY_BYTES.max(max_bytes),
        MAX_DECODED_BODY_BYTES_CEILING,
    )?;
    if max_decoded_bytes < max_bytes {
        return Err(format!(
            "{key}.max_decoded_bytes ({max_decoded_bytes}) is less than max_bytes \
             ({max_bytes}); raise it to at least max_bytes"
        ));
    }
    let hosts = match raw.hosts {
        None => None,
        Some(hosts) => {
            let mut checked = Vec::with_capacity(hosts.len());
            for host in hosts {
                let name = host.strip_prefix("*.").unwrap_or(&host);
                let valid = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
                if !valid {
                    return Err(format!(
                        "{key}.hosts: {host:?} is not a host name; write names such as \
                         \"api.example.com\" or \"*.example.com\" (no scheme, port or path)"
                    ));
                }
                checked.push(host.to_ascii_lowercase());
            }
            Some(checked)
        }
    };
    Ok(Some(RequestBodyConfig {
        max_bytes,
        max_decoded_bytes,
        over_limit: raw.over_limit.unwrap_or_default(),
        hosts,
    }))
}

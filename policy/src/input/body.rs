//! Request bodies for policies that ask for them (`metadata.cordon.request_body` in the
//! bundle's manifest): the raw text, the parsed body, and convenience fields, from the bytes
//! the proxy buffered. Sans-IO: the proxy reads up to the limit and hands the bytes over.
//!
//! The shapes follow opa-envoy-plugin, so OPA-Envoy body policies run unchanged:
//!
//! - `attributes.request.http.body` is the text as Envoy sends it without `pack_as_bytes`:
//!   every byte that is not part of valid UTF-8 replaced by one `!` (Envoy's
//!   `MessageUtil::sanitizeUtf8String`), so its length in bytes is the body's.
//! - `parsed_body` is the JSON document for JSON content types, and for
//!   `application/x-www-form-urlencoded` an object of arrays of strings (Go's
//!   `url.ParseQuery`, which opa-envoy-plugin uses); absent for anything else.
//! - `truncated_body` is `true` when the policy sees less than the whole body, and then
//!   nothing is parsed (a partial JSON-RPC batch must not look like a whole one).
//!
//! Cordon adds `input.cordon`: `body_error` (why something expected is missing), `jsonrpc`,
//! `graphql` and `git`. docs/POLICY.md, "Request bodies", gives every shape.

mod encoding;
mod form;
mod git;
mod graphql;
mod jsonrpc;
mod media;

use std::borrow::Cow;
use std::collections::BTreeMap;

use regorus::Value;

pub use git::{GitCommand, GitPush, GitRefAction, is_receive_pack};
pub use graphql::{GraphQl, GraphQlOperation, GraphQlOperationType, GraphQlRequest};
pub use jsonrpc::{JsonRpc, JsonRpcKind, JsonRpcMessage};

use super::RequestInput;
use crate::bundle::{DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_DECODED_BODY_BYTES};

/// How much of a body is read and decoded for the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// Bytes of the body as received (before `Content-Encoding` is undone).
    pub max_bytes: usize,
    /// Bytes the body may decode to; more is a decompression bomb (`decoded_too_large`).
    pub max_decoded_bytes: usize,
}

impl Default for BodyLimits {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_BODY_BYTES,
            max_decoded_bytes: DEFAULT_MAX_DECODED_BODY_BYTES,
        }
    }
}

/// What the body parser needs to know about the request that carries the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyRequest<'a> {
    pub method: Cow<'a, str>,
    /// Path with query string, as received.
    pub path: Cow<'a, str>,
    /// The `Content-Type` field value, if any.
    pub content_type: Option<Cow<'a, str>>,
    /// The `Content-Encoding` field value, if any (repeated fields joined with `,`).
    pub content_encoding: Option<Cow<'a, str>>,
}

impl<'a> BodyRequest<'a> {
    /// The method, path and content headers of `request`.
    pub fn of(request: &'a RequestInput) -> Self {
        let field = |name: &str| -> Option<Cow<'a, str>> {
            let mut values = request
                .headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str());
            let first = values.next()?;
            match values.next() {
                None => Some(Cow::Borrowed(first)),
                Some(second) => {
                    let mut joined = format!("{first},{second}");
                    for value in values {
                        joined.push(',');
                        joined.push_str(value);
                    }
                    Some(Cow::Owned(joined))
                }
            }
        };
        Self {
            method: Cow::Borrowed(&request.method),
            path: Cow::Borrowed(&request.path),
            content_type: field("content-type"),
            content_encoding: field("content-encoding"),
        }
    }
}

/// `input.parsed_body`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParsedBody {
    /// A JSON body, as its document.
    Json(Value),
    /// An `application/x-www-form-urlencoded` body: every value of a name, in order.
    Form(BTreeMap<String, Vec<String>>),
}

/// Why a field the policy may expect is missing (`input.cordon.body_error.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyErrorKind {
    /// The body was longer than `max_bytes`; the policy sees the first `max_bytes`.
    TooLarge,
    /// The body decodes to more than `max_decoded_bytes` (a decompression bomb, or just big).
    DecodedTooLarge,
    /// `Content-Encoding` says gzip or deflate and the bytes are not.
    InvalidEncoding,
    /// A `Content-Encoding` Cordon does not decode (`br`, `zstd`, several codings).
    UnsupportedEncoding,
    /// A JSON content type whose body is not JSON (or not UTF-8).
    InvalidJson,
    /// A form body with a bad percent escape or a `;` separator (Go rejects both).
    InvalidForm,
    /// A GraphQL request whose document does not parse.
    InvalidGraphql,
    /// A git receive-pack request whose command list is not valid pkt-lines.
    InvalidGit,
}

impl BodyErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BodyErrorKind::TooLarge => "too_large",
            BodyErrorKind::DecodedTooLarge => "decoded_too_large",
            BodyErrorKind::InvalidEncoding => "invalid_encoding",
            BodyErrorKind::UnsupportedEncoding => "unsupported_encoding",
            BodyErrorKind::InvalidJson => "invalid_json",
            BodyErrorKind::InvalidForm => "invalid_form",
            BodyErrorKind::InvalidGraphql => "invalid_graphql",
            BodyErrorKind::InvalidGit => "invalid_git",
        }
    }
}

/// `input.cordon.body_error`: `{kind, message}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyError {
    pub kind: BodyErrorKind,
    pub message: String,
}

impl BodyError {
    fn new(kind: BodyErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// A request body as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyInput {
    /// `attributes.request.http.body`: the decoded body with invalid UTF-8 bytes as `!`;
    /// absent from the document when empty (protojson leaves out empty strings).
    pub text: String,
    /// `parsed_body`.
    pub parsed: Option<ParsedBody>,
    /// `truncated_body`: the policy sees only a prefix of the body.
    pub truncated: bool,
    /// `cordon.body_error`: the first thing that went wrong.
    pub error: Option<BodyError>,
    /// `cordon.jsonrpc`.
    pub jsonrpc: Option<JsonRpc>,
    /// `cordon.graphql`.
    pub graphql: Option<GraphQl>,
    /// `cordon.git`: the ref updates of a git push.
    pub git: Option<GitPush>,
}

impl BodyInput {
    /// Reads `body`, the bytes the proxy received (at most `limits.max_bytes` are looked at).
    /// `more` says the proxy stopped reading before the end of the body.
    pub fn parse(body: &[u8], more: bool, request: &BodyRequest<'_>, limits: BodyLimits) -> Self {
        let (received, mut truncated) = match body.get(..limits.max_bytes) {
            Some(prefix) if prefix.len() < body.len() => (prefix, true),
            _ => (body, more),
        };
        let mut error = truncated.then(|| {
            BodyError::new(
                BodyErrorKind::TooLarge,
                format!(
                    "the body is larger than {} bytes; the policy sees its first {} bytes, unparsed",
                    limits.max_bytes, limits.max_bytes
                ),
            )
        });
        let encoding = request.content_encoding.as_deref();
        let decoded =
            match encoding::decode(received, encoding, limits.max_decoded_bytes, truncated) {
                Ok(decoded) => decoded,
                Err(e) => return Self::empty(truncated, Some(error.unwrap_or(e))),
            };
        if !decoded.complete && !truncated {
            truncated = true;
            error = Some(BodyError::new(
                BodyErrorKind::DecodedTooLarge,
                format!(
                    "the body decodes to more than {} bytes; the policy sees its first {} decoded bytes, unparsed",
                    limits.max_decoded_bytes, limits.max_decoded_bytes
                ),
            ));
        }
        let bytes = decoded.bytes;
        let mut input = Self {
            text: media::envoy_text(&bytes),
            truncated,
            error,
            ..Self::empty(false, None)
        };
        // A push's commands come before its pack, so they are read from a prefix too: they are
        // complete once their flush-pkt has arrived, however long the pack behind them.
        if git::is_receive_pack(&request.method, &request.path) {
            match git::commands(&bytes) {
                Ok(Some(push)) => input.git = Some(push),
                Ok(None) if !input.truncated => input.fail(BodyError::new(
                    BodyErrorKind::InvalidGit,
                    "the receive-pack request ends before its command list does",
                )),
                Ok(None) => {}
                Err(message) => input.fail(BodyError::new(BodyErrorKind::InvalidGit, message)),
            }
        }
        if !input.truncated {
            input.parse_whole(&bytes, request);
        }
        input
    }

    fn empty(truncated: bool, error: Option<BodyError>) -> Self {
        Self {
            text: String::new(),
            parsed: None,
            truncated,
            error,
            jsonrpc: None,
            graphql: None,
            git: None,
        }
    }

    /// Records `error` unless an earlier one explains more.
    fn fail(&mut self, error: BodyError) {
        self.error.get_or_insert(error);
    }

    /// `parsed_body` and the JSON and GraphQL conveniences, for a body seen whole.
    fn parse_whole(&mut self, bytes: &[u8], request: &BodyRequest<'_>) {
        if bytes.is_empty() {
            return;
        }
        match media::MediaType::of(request.content_type.as_deref()) {
            media::MediaType::Json => {
                // The policy must read the bytes the upstream reads: a body that is not UTF-8
                // is not JSON, rather than JSON with `!` where the bad bytes were.
                let parsed = std::str::from_utf8(bytes)
                    .map_err(|e| format!("the body is not UTF-8: {e}"))
                    .and_then(|text| Value::from_json_str(text).map_err(|e| e.to_string()));
                match parsed {
                    Ok(document) => {
                        self.jsonrpc = jsonrpc::messages(&document);
                        match graphql::from_json(&document, &request.path) {
                            Ok(graphql) => self.graphql = graphql,
                            Err(message) => {
                                self.fail(BodyError::new(BodyErrorKind::InvalidGraphql, message))
                            }
                        }
                        self.parsed = Some(ParsedBody::Json(document));
                    }
                    Err(message) => self.fail(BodyError::new(
                        BodyErrorKind::InvalidJson,
                        format!("the content type is JSON but the body is not: {message}"),
                    )),
                }
            }
            media::MediaType::Form => match form::parse(&self.text) {
                Ok(fields) => self.parsed = Some(ParsedBody::Form(fields)),
                Err(message) => self.fail(BodyError::new(BodyErrorKind::InvalidForm, message)),
            },
            media::MediaType::Graphql => {
                let parsed = std::str::from_utf8(bytes)
                    .map_err(|e| format!("the body is not UTF-8: {e}"))
                    .and_then(|text| graphql::from_text(text, &request.path));
                match parsed {
                    Ok(graphql) => self.graphql = Some(graphql),
                    Err(message) => {
                        self.fail(BodyError::new(BodyErrorKind::InvalidGraphql, message))
                    }
                }
            }
            media::MediaType::Other => {}
        }
    }
}

#[cfg(test)]
mod tests;

//! The body of `POST /evaluate`, parsed once into a request head the checks can read.
//!
//! The body is read as plain JSON first and each field taken out by hand, rather than through
//! serde's derive: serde's messages quote the value that did not fit (`invalid type: string
//! "Bearer ..."`), and a header value given here must never come back in an error or a log.

use std::net::IpAddr;

use cordon_policy::ListenerMode;
use cordon_policy::input::{Authority, parse_authority};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use serde_json::{Map, Value};

/// What the endpoint takes, for every 400's message.
pub(crate) const SHAPE: &str = "{\"session\": id, \"method\": \"GET\", \"url\": \
     \"https://host[:port]/path?query\", \"headers\"?: {name: value or [values]}, \"body\"?: text, \
     \"mode\"?: \"transparent\" | \"explicit\", \"source\"?: ip}";

/// The largest `body` accepted (the whole admin request is held to the same bound).
pub(crate) const MAX_REQUEST_BODY: usize = 64 * 1024;

/// Longest piece of a bad header name quoted back.
const QUOTED_NAME: usize = 32;

/// Why an evaluate request was refused before anything was decided. Never holds a header
/// value or the URL's query.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum EvaluateError {
    #[error("the body is not JSON ({0})")]
    Json(String),
    #[error("the body is not a JSON object")]
    NotAnObject,
    #[error("unknown field {0:?}")]
    UnknownField(String),
    #[error("missing field {0:?}")]
    MissingField(&'static str),
    #[error("field {field:?} must be {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    #[error("method is not an HTTP method token (such as GET or POST)")]
    BadMethod,
    #[error(
        "url {0}; give an absolute http:// or https:// URL such as https://api.example.test/v1/x?q=1"
    )]
    BadUrl(&'static str),
    #[error(
        "header name {0:?}... is not a valid HTTP field name (letters, digits and \
         !#$%&'*+-.^_`|~ only; no ':' or spaces)"
    )]
    BadHeaderName(String),
    #[error("header {0:?}: the value is not a valid HTTP field value (no CR, LF or NUL)")]
    BadHeaderValue(String),
    #[error("body is larger than {MAX_REQUEST_BODY} bytes")]
    BodyTooLarge,
    #[error("mode must be \"transparent\" or \"explicit\"")]
    BadMode,
    #[error("the proxy has no {} listener, so no request arrives that way", .0.as_str())]
    NoListener(ListenerMode),
    #[error("source must be an IP address")]
    BadSource,
    #[error("source {address} is not one of session {session:?}'s registered sources")]
    NotASource { session: String, address: IpAddr },
    #[error("no session {0:?} is registered")]
    UnknownSession(String),
}

impl EvaluateError {
    pub(crate) fn status(&self) -> http::StatusCode {
        match self {
            EvaluateError::UnknownSession(_) => http::StatusCode::NOT_FOUND,
            _ => http::StatusCode::BAD_REQUEST,
        }
    }

    /// The answer's `error`: what was wrong and, for a malformed request, what is expected.
    pub(crate) fn message(&self) -> String {
        match self {
            EvaluateError::UnknownSession(_) => self.to_string(),
            _ => format!("{self}; expected {SHAPE}"),
        }
    }
}

/// A request to decide, as a sandbox would send it.
#[derive(Debug)]
pub(crate) struct EvaluateRequest {
    pub(crate) session: String,
    /// Which of a shared session's sources sends it; its first one when absent.
    pub(crate) source: Option<IpAddr>,
    /// The listener it arrives on; the proxy's default when absent (see `connection.rs`).
    pub(crate) mode: Option<ListenerMode>,
    pub(crate) method: Method,
    /// `https://`: the request travels in intercepted TLS.
    pub(crate) tls: bool,
    /// The URL's host and port: what the client connects to (SNI, CONNECT target).
    pub(crate) destination: Authority,
    /// Origin form (`/path?query`), as an HTTP/1.1 client sends it.
    pub(crate) uri: Uri,
    /// The given headers, plus `host` (the URL's authority) and `content-length` (the body's)
    /// when not given, as a client would add them.
    pub(crate) headers: HeaderMap,
    pub(crate) body: Option<Vec<u8>>,
}

impl EvaluateRequest {
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, EvaluateError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| EvaluateError::Json(e.to_string()))?;
        let Value::Object(mut fields) = value else {
            return Err(EvaluateError::NotAnObject);
        };
        const KNOWN: [&str; 7] = [
            "session", "method", "url", "headers", "body", "mode", "source",
        ];
        if let Some(unknown) = fields.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(EvaluateError::UnknownField(unknown.clone()));
        }
        let session = required_string(&mut fields, "session")?;
        let method = required_string(&mut fields, "method")?;
        let method = method.trim();
        if method.is_empty() {
            return Err(EvaluateError::BadMethod);
        }
        let method = Method::from_bytes(method.as_bytes()).map_err(|_| EvaluateError::BadMethod)?;
        let url = required_string(&mut fields, "url")?;
        let (tls, destination, authority, uri) = parse_url(&url)?;
        let body = optional_string(&mut fields, "body")?.map(String::into_bytes);
        if body.as_ref().is_some_and(|b| b.len() > MAX_REQUEST_BODY) {
            return Err(EvaluateError::BodyTooLarge);
        }
        let mut headers = parse_headers(fields.remove("headers"))?;
        if !headers.contains_key(http::header::HOST)
            && let Ok(host) = HeaderValue::from_str(&authority)
        {
            headers.insert(http::header::HOST, host);
        }
        if let Some(body) = &body
            && !headers.contains_key(http::header::CONTENT_LENGTH)
            && !headers.contains_key(http::header::TRANSFER_ENCODING)
        {
            headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        let mode = match optional_string(&mut fields, "mode")?.as_deref() {
            None => None,
            Some("transparent") => Some(ListenerMode::Transparent),
            Some("explicit") => Some(ListenerMode::Explicit),
            Some(_) => return Err(EvaluateError::BadMode),
        };
        let source = optional_string(&mut fields, "source")?
            .map(|s| s.parse().map_err(|_| EvaluateError::BadSource))
            .transpose()?;
        Ok(Self {
            session,
            source,
            mode,
            method,
            tls,
            destination,
            uri,
            headers,
            body,
        })
    }
}

fn required_string(
    fields: &mut Map<String, Value>,
    field: &'static str,
) -> Result<String, EvaluateError> {
    optional_string(fields, field)?.ok_or(EvaluateError::MissingField(field))
}

fn optional_string(
    fields: &mut Map<String, Value>,
    field: &'static str,
) -> Result<Option<String>, EvaluateError> {
    match fields.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(EvaluateError::WrongType {
            field,
            expected: "a string",
        }),
    }
}

/// The URL's scheme, destination, authority (for `host`) and origin-form target. Errors never
/// quote the URL: its query may carry a token.
fn parse_url(url: &str) -> Result<(bool, Authority, String, Uri), EvaluateError> {
    // A fragment never leaves the client.
    let url = url.split('#').next().unwrap_or_default();
    let uri: Uri = url
        .parse()
        .map_err(|_| EvaluateError::BadUrl("is not a valid URL"))?;
    let tls = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
        Some("https") => true,
        Some("http") => false,
        Some(_) => {
            return Err(EvaluateError::BadUrl(
                "has a scheme other than http or https",
            ));
        }
        None => return Err(EvaluateError::BadUrl("is not absolute")),
    };
    let authority = uri
        .authority()
        .ok_or(EvaluateError::BadUrl("names no host"))?
        .as_str();
    if authority.contains('@') {
        return Err(EvaluateError::BadUrl(
            "has user info (user@host); give credentials in a header instead",
        ));
    }
    let destination = parse_authority(authority, if tls { 443 } else { 80 })
        .ok_or(EvaluateError::BadUrl("has an invalid host or port"))?;
    let target = match uri.query() {
        Some(query) => format!("{}?{query}", uri.path()),
        None => uri.path().to_string(),
    };
    let origin: Uri = target
        .parse()
        .map_err(|_| EvaluateError::BadUrl("has an invalid path or query"))?;
    Ok((tls, destination, authority.to_string(), origin))
}

/// `{name: value}` or `{name: [values]}` (a repeated field).
fn parse_headers(value: Option<Value>) -> Result<HeaderMap, EvaluateError> {
    let wrong = EvaluateError::WrongType {
        field: "headers",
        expected: "an object of header names to strings or arrays of strings",
    };
    let fields = match value {
        None | Some(Value::Null) => return Ok(HeaderMap::new()),
        Some(Value::Object(fields)) => fields,
        Some(_) => return Err(wrong),
    };
    let mut headers = HeaderMap::new();
    for (name, values) in fields {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| EvaluateError::BadHeaderName(quotable_prefix(&name)))?;
        let values = match values {
            Value::String(one) => vec![one],
            Value::Array(many) => many
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    _ => Err(EvaluateError::WrongType {
                        field: "headers",
                        expected: "an object of header names to strings or arrays of strings",
                    }),
                })
                .collect::<Result<_, _>>()?,
            _ => return Err(wrong),
        };
        for value in values {
            let value = HeaderValue::from_bytes(value.as_bytes())
                .map_err(|_| EvaluateError::BadHeaderValue(header.as_str().to_string()))?;
            headers.append(header.clone(), value);
        }
    }
    Ok(headers)
}

/// The part of a bad header name that is a valid name, shortened: enough to find it, never
/// what followed (a pasted `Authorization: Bearer ...` line stops at the colon).
fn quotable_prefix(name: &str) -> String {
    name.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(*c))
        .take(QUOTED_NAME)
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn parse(json: serde_json::Value) -> Result<EvaluateRequest, EvaluateError> {
        EvaluateRequest::parse(json.to_string().as_bytes())
    }

    #[test]
    fn builds_an_origin_form_request_with_the_headers_a_client_adds() {
        let request = parse(serde_json::json!({
            "session": "s1", "method": "post", "url": "https://API.example.test:8443/v1/x?q=1#frag",
            "headers": {"X-Trace": ["a", "b"]}, "body": "{}"
        }))
        .unwrap();
        assert!(request.tls);
        assert_eq!(request.method, Method::from_bytes(b"post").unwrap());
        assert_eq!(request.destination.host, "api.example.test");
        assert_eq!(request.destination.port, 8443);
        assert_eq!(request.uri.to_string(), "/v1/x?q=1");
        assert_eq!(request.headers["host"], "API.example.test:8443");
        assert_eq!(request.headers["content-length"], "2");
        assert_eq!(request.headers.get_all("x-trace").iter().count(), 2);
    }

    #[test]
    fn refuses_bad_input_without_quoting_values() {
        let secret = "Bearer sk-live-0123456789";
        for (json, status, needle) in [
            (serde_json::json!([]), 400, "not a JSON object"),
            (
                serde_json::json!({"session": "s", "method": "GET"}),
                400,
                "missing field \"url\"",
            ),
            (
                serde_json::json!({"session": "s", "method": "GET", "url": "https://a.test/", "extra": 1}),
                400,
                "unknown field \"extra\"",
            ),
            (
                serde_json::json!({"session": "s", "method": "G T", "url": "https://a.test/"}),
                400,
                "not an HTTP method",
            ),
            (
                serde_json::json!({"session": "s", "method": "GET", "url": "ftp://a.test/?t=sk-live-0123456789"}),
                400,
                "scheme other than http",
            ),
            (
                serde_json::json!({"session": "s", "method": "GET", "url": "https://a.test/", "headers": secret}),
                400,
                "field \"headers\" must be an object",
            ),
            (
                serde_json::json!({"session": "s", "method": "GET", "url": "https://a.test/", "headers": {"authorization": format!("{secret}\r\nx: y")}}),
                400,
                "header \"authorization\": the value is not a valid",
            ),
            (
                serde_json::json!({"session": "s", "method": "GET", "url": "https://a.test/", "headers": {format!("Authorization: {secret}"): ""}}),
                400,
                "header name \"Authorization\"...",
            ),
            (
                serde_json::json!({"session": "s", "method": "GET", "url": "https://a.test/", "body": "x".repeat(MAX_REQUEST_BODY + 1)}),
                400,
                "larger than 65536 bytes",
            ),
        ] {
            let err = parse(json.clone()).unwrap_err();
            let message = err.message();
            assert!(message.ends_with(SHAPE), "{message}");
            assert_eq!(err.status().as_u16(), status, "{json}");
            assert!(message.contains(needle), "{needle}: {message}");
            assert!(!message.contains("sk-live"), "{message}");
        }
        let err = EvaluateRequest::parse(b"{\"session\": ").unwrap_err();
        assert!(err.to_string().contains("not JSON"), "{err}");
    }
}

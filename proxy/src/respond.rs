//! Synthetic responses: every refusal the proxy writes itself, in one place.
//!
//! A refusal carries a `cordon-error` header naming the reason class (a closed set) and a JSON
//! body `{"error", "reason", "decision_id"}`. Internal details (resolver errors, TLS alerts) go
//! to the audit log and tracing, not to the sandbox, except where the reason is the policy's own
//! or names the sandbox's own request.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession as Session;

/// How long a refusal waits for the rest of an HTTP/2 request body it refuses.
const REFUSAL_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Why the proxy answered instead of the upstream. The names are metric and audit values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalClass {
    /// The policy denied the request.
    Policy,
    /// The policy failed (undefined, invalid decision, evaluation error): fail closed.
    PolicyFailure,
    /// SNI, Host and CONNECT target name different hosts.
    Fronting,
    /// The request is malformed (no authority, bad host).
    BadRequest,
    /// The destination resolves to an internal address.
    Ssrf,
    /// The destination name does not resolve.
    Resolve,
    /// The upstream failed (connect, TLS, reset).
    Upstream,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// A credential the decision names cannot be injected, or a placeholder cannot be swapped.
    Credential,
    /// A placeholder was sent outside its secret's binding, or by another session.
    Exfiltration,
    /// The connection's session was deregistered (or its address given to another session)
    /// after the connection was opened.
    SessionEnded,
    /// A request body larger than the policy's bundle lets the proxy read (`over_limit =
    /// "deny"`), or than the proxy can hold on the path that serves the request.
    BodyTooLarge,
    /// A fault of the proxy itself.
    Internal,
}

impl RefusalClass {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalClass::Policy => "policy",
            RefusalClass::PolicyFailure => "policy_failure",
            RefusalClass::Fronting => "fronting",
            RefusalClass::BadRequest => "bad_request",
            RefusalClass::Ssrf => "ssrf",
            RefusalClass::Resolve => "resolve",
            RefusalClass::Upstream => "upstream",
            RefusalClass::UpstreamTimeout => "upstream_timeout",
            RefusalClass::Credential => "credential",
            RefusalClass::Exfiltration => "exfiltration",
            RefusalClass::SessionEnded => "session_ended",
            RefusalClass::BodyTooLarge => "body_too_large",
            RefusalClass::Internal => "internal",
        }
    }

    /// The `decision` label of metrics and audit records for a request refused this way:
    /// `deny` when the policy or a guard refused it, `error` when something failed.
    pub fn decision_label(self) -> &'static str {
        match self {
            RefusalClass::Upstream
            | RefusalClass::UpstreamTimeout
            | RefusalClass::Resolve
            | RefusalClass::Internal => "error",
            _ => "deny",
        }
    }

    /// The short `error` text of the JSON body.
    fn error_text(self) -> &'static str {
        match self {
            RefusalClass::Policy | RefusalClass::PolicyFailure => "denied by egress policy",
            RefusalClass::Fronting => "host does not match the connection's server name",
            RefusalClass::BadRequest => "malformed request",
            RefusalClass::Ssrf => "destination address not allowed",
            RefusalClass::Resolve => "destination host does not resolve",
            RefusalClass::Upstream => "upstream connection failed",
            RefusalClass::UpstreamTimeout => "upstream timed out",
            RefusalClass::Credential => "credential cannot be injected",
            RefusalClass::Exfiltration => "credential placeholder not allowed here",
            RefusalClass::SessionEnded => "the session of this connection has ended",
            RefusalClass::BodyTooLarge => "request body too large for the egress policy",
            RefusalClass::Internal => "internal proxy error",
        }
    }
}

/// A refusal to write.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: u16,
    pub class: RefusalClass,
    pub reason: String,
    /// Extra response headers (a deny decision's `headers`).
    pub headers: Vec<(String, String)>,
    /// Replaces the JSON body (a deny decision's `body`).
    pub body: Option<String>,
    /// The fuller reason for the audit log, when the sandbox is told less (internal addresses,
    /// resolver and TLS errors).
    pub logged_reason: Option<String>,
}

impl Refusal {
    pub fn new(status: u16, class: RefusalClass, reason: impl Into<String>) -> Self {
        Self {
            status,
            class,
            reason: reason.into(),
            headers: Vec::new(),
            body: None,
            logged_reason: None,
        }
    }

    /// The JSON body every refusal carries (unless the decision gave its own).
    fn json_body(&self, decision_id: &str) -> String {
        serde_json::json!({
            "error": self.class.error_text(),
            "reason": self.reason,
            "decision_id": decision_id,
        })
        .to_string()
    }

    /// The refusal as raw HTTP/1.1 bytes, for a connection refused before the HTTP layer
    /// (`connection: close`; the proxy closes it after).
    pub fn http1_bytes(&self, decision_id: &str) -> Vec<u8> {
        let body = self
            .body
            .clone()
            .unwrap_or_else(|| self.json_body(decision_id));
        let content_type = if self.body.is_some() {
            "text/plain; charset=utf-8"
        } else {
            "application/json"
        };
        let reason = http::StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Refused");
        format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
             cordon-error: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n{body}",
            self.status,
            body.len(),
            self.class.as_str()
        )
        .into_bytes()
    }

    /// Writes the refusal. Errors mean the client is gone; there is nobody left to tell.
    pub async fn write(&self, session: &mut Session, decision_id: &str) {
        // An HTTP/2 refusal sent while the client is still sending its body ends the stream
        // with a reset that clients report as a framing error, not as our 403: take what the
        // client is sending (for at most a moment) first, so the refusal is what it sees.
        if session.is_http2() && !session.is_body_done() {
            let drained =
                tokio::time::timeout(REFUSAL_DRAIN_TIMEOUT, session.drain_request_body()).await;
            if !matches!(drained, Ok(Ok(()))) {
                tracing::debug!(
                    "the refused request's body was not drained; the stream may be reset"
                );
            }
        }
        let body = match &self.body {
            Some(body) => body.clone(),
            None => self.json_body(decision_id),
        };
        let Ok(mut header) = ResponseHeader::build(self.status, Some(4 + self.headers.len()))
        else {
            return;
        };
        let content_type = if self.body.is_some() {
            "text/plain; charset=utf-8"
        } else {
            "application/json"
        };
        let mut ok = header.insert_header("content-type", content_type).is_ok()
            && header
                .insert_header("content-length", body.len().to_string())
                .is_ok()
            && header
                .insert_header("cordon-error", self.class.as_str())
                .is_ok()
            && header.insert_header("cache-control", "no-store").is_ok();
        for (name, value) in &self.headers {
            ok &= header.append_header(name.clone(), value.as_str()).is_ok();
        }
        if !ok {
            tracing::warn!("a refusal header was invalid; sending a bare refusal");
        }
        if session
            .write_response_header(Box::new(header))
            .await
            .is_ok()
        {
            let _ = session.write_response_body(Bytes::from(body), true).await;
        }
    }
}

//! The phases after admission, shared by Pingora's `ProxyHttp` hooks (`hooks.rs`) and the
//! HTTP/1.1 relay (`crate::relay`): upstream choice, the upstream request's rewrite, the
//! response's filters, and failure.

use std::time::Instant;

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::protocols::ALPN;
use pingora::protocols::http::ServerSession as Session;
use pingora::proxy::FailToProxy;
use pingora::{Error, ErrorType, Result};

use super::{Authorizer, PROXY_HEADERS, RequestContext};

/// The context headers of a custom tool's requests (docs/TOOLS.md), set by the proxy only.
const TOOL_HEADERS: [&str; 4] = [
    "x-cordon-session",
    "x-cordon-tool",
    "x-cordon-tool-use-id",
    "x-cordon-agent-id",
];
use crate::respond::{Refusal, RefusalClass};

impl Authorizer {
    /// The upstream to connect to: the address `authorize` resolved, verified TLS with the
    /// request's host as SNI, and the client's HTTP version offered (see `upstream::protocols`).
    pub(crate) fn peer(
        &self,
        client_http2: bool,
        ctx: &mut RequestContext,
    ) -> Result<Box<HttpPeer>> {
        let (Some(address), Some(host), Some(port), Some(conn)) =
            (ctx.upstream, ctx.host.clone(), ctx.port, ctx.conn.as_ref())
        else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no upstream was chosen",
            ));
        };
        // The upstream leg mirrors the client's (see `upstream::protocols`).
        ctx.upstream_h2 = ctx.upstream_h2
            || client_http2
            || (conn.tls && self.state.http2_only.contains(&host, port));
        // The SNI is the host name, never empty: an empty SNI makes pingora skip certificate
        // verification.
        let mut peer = HttpPeer::new(address, conn.tls, host);
        let options = &mut peer.options;
        options.verify_cert = true;
        options.verify_hostname = true;
        options.alpn = if conn.tls && ctx.upstream_h2 {
            ALPN::H2H1
        } else {
            ALPN::H1
        };
        options.connection_timeout = Some(self.state.config.upstream.connect_timeout);
        options.read_timeout = Some(self.state.config.upstream.read_timeout);
        ctx.upstream_started = Some(Instant::now());
        Ok(Box::new(peer))
    }

    /// An upstream that speaks only HTTP/2 refuses an HTTP/1.1-only offer: retry once offering
    /// `h2`, and remember the host.
    pub(crate) fn connect_failed(&self, ctx: &mut RequestContext, mut e: Box<Error>) -> Box<Error> {
        if !ctx.upstream_h2
            && crate::upstream::protocols::refused_alpn(&e)
            && let (Some(host), Some(port)) = (ctx.host.as_deref(), ctx.port)
        {
            self.state.http2_only.remember(host, port);
            ctx.upstream_h2 = true;
            e.set_retry(true);
        }
        e
    }

    /// The upstream request: origin-form, no proxy headers, placeholders swapped, the
    /// decision's header changes and credentials applied.
    pub(crate) fn rewrite_request(
        &self,
        client_http2: bool,
        upstream_request: &mut RequestHeader,
        ctx: &RequestContext,
    ) -> Result<()> {
        // HTTP/1 absolute-form (explicit plain HTTP) becomes origin-form with a Host header.
        // An HTTP/2 request keeps its URI: its authority lives there (`:authority`), and
        // pingora needs it to address an HTTP/2 upstream.
        if !client_http2 && upstream_request.uri.scheme().is_some() {
            if let Some(authority) = upstream_request
                .uri
                .authority()
                .map(|a| a.as_str().to_string())
                && upstream_request.headers.get(http::header::HOST).is_none()
            {
                upstream_request.insert_header(http::header::HOST, authority)?;
            }
            let origin: http::Uri = upstream_request
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .parse()
                .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "bad request target"))?;
            upstream_request.set_uri(origin);
        }
        for name in PROXY_HEADERS {
            upstream_request.remove_header(name);
        }
        if ctx.body_was_read() {
            // The proxy answered the client's `Expect: 100-continue` itself and has the body.
            upstream_request.remove_header(&http::header::EXPECT);
        }
        // A custom tool's context headers say which session called it; only the proxy sets
        // them, from the registration, so a sandbox cannot claim another session's call.
        for name in TOOL_HEADERS {
            upstream_request.remove_header(name);
        }
        if let Some(conn) = &ctx.conn
            && conn.session.id.starts_with("tool:")
        {
            let labels = &conn.session.labels;
            for (name, value) in [
                ("x-cordon-session", labels.get("session")),
                ("x-cordon-tool", labels.get("tool")),
                ("x-cordon-tool-use-id", labels.get("tool_use_id")),
                ("x-cordon-agent-id", conn.session.agent_id.as_ref()),
            ] {
                if let Some(value) = value
                    && let Ok(value) = http::HeaderValue::from_str(value)
                {
                    upstream_request.insert_header(name, value)?;
                }
            }
        }
        for (name, values) in &ctx.swaps.headers {
            upstream_request.remove_header(name);
            for value in values {
                let mut value = http::HeaderValue::from_bytes(value).map_err(|_| {
                    Error::explain(
                        ErrorType::InvalidHTTPHeader,
                        "a swapped credential is not a valid header value",
                    )
                })?;
                // Debug logs (pingora's own included) print it as `Sensitive`.
                value.set_sensitive(true);
                upstream_request.append_header(name.clone(), value)?;
            }
        }
        // A compressed response could carry an echoed secret past the scrubber, and a range
        // request could fetch an echoed value in pieces too small to recognise.
        if ctx.scrubber.is_some() {
            upstream_request.insert_header(http::header::ACCEPT_ENCODING, "identity")?;
            upstream_request.remove_header(&http::header::RANGE);
            upstream_request.remove_header(&http::header::IF_RANGE);
        }
        let Some(decision) = &ctx.decision else {
            return Ok(());
        };
        for name in &decision.request_headers_to_remove {
            upstream_request.remove_header(name.as_str());
        }
        // OPA-Envoy semantics: `headers` overwrite on allow; a repeated name adds values.
        let mut set: Vec<&str> = Vec::new();
        for (name, value) in &decision.headers {
            if set.contains(&name.as_str()) {
                upstream_request.append_header(name.clone(), value.as_str())?;
            } else {
                upstream_request.insert_header(name.clone(), value.as_str())?;
                set.push(name);
            }
        }
        // Credentials last, so nothing the client sent or the decision's header changes did
        // can stand in their header's place.
        for injection in &ctx.injections {
            upstream_request.remove_header(injection.header.as_str());
            let mut value =
                http::HeaderValue::from_str(injection.value.expose()).map_err(|_| {
                    Error::explain(
                        ErrorType::InvalidHTTPHeader,
                        "an injected credential is not a valid header value",
                    )
                })?;
            value.set_sensitive(true);
            upstream_request.insert_header(injection.header.clone(), value)?;
        }
        Ok(())
    }

    /// Readies the response header: records the status, prepares scrubbing, adds the
    /// decision's response headers.
    pub(crate) fn filter_response(
        &self,
        session: &Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestContext,
    ) -> Result<()> {
        ctx.status = Some(upstream_response.status.as_u16());
        if ctx.scrubber.is_some() {
            self.prepare_scrubbing(session, upstream_response, ctx)?;
        }
        if let Some(decision) = &ctx.decision {
            for (name, value) in &decision.response_headers_to_add {
                upstream_response.append_header(name.clone(), value.as_str())?;
            }
        }
        Ok(())
    }

    /// HTTP/2 trailers (gRPC's `grpc-message`, say) are scrubbed like headers.
    pub(crate) fn filter_trailers(
        &self,
        trailers: &mut http::HeaderMap,
        ctx: &mut RequestContext,
    ) -> Result<()> {
        let Some(scrubber) = ctx.scrubber.as_mut() else {
            return Ok(());
        };
        let mut rewrites = Vec::new();
        for (name, value) in trailers.iter() {
            if let Some(clean) = scrubber.scrub_all(value.as_bytes()) {
                rewrites.push((name.clone(), clean));
            }
        }
        for (name, clean) in rewrites {
            let value = http::HeaderValue::from_bytes(&clean).map_err(|_| {
                Error::explain(
                    ErrorType::InvalidHTTPHeader,
                    "a scrubbed trailer is invalid",
                )
            })?;
            trailers.insert(name, value);
        }
        Ok(())
    }

    /// Puts the bytes read for the policy that Pingora's retry buffer could not hold in front
    /// of the first bytes read from the client after the decision (see `body.rs`).
    pub(crate) fn replay_request_body(&self, body: &mut Option<Bytes>, ctx: &mut RequestContext) {
        if let Some(replay) = ctx.take_body_replay() {
            *body = Some(match body.take() {
                Some(rest) if !rest.is_empty() => {
                    let mut joined = bytes::BytesMut::with_capacity(replay.len() + rest.len());
                    joined.extend_from_slice(&replay);
                    joined.extend_from_slice(&rest);
                    joined.freeze()
                }
                _ => replay,
            });
        }
    }

    pub(crate) fn count_request_body(&self, body: Option<&Bytes>, ctx: &mut RequestContext) {
        if let Some(body) = body {
            ctx.bytes_up += body.len() as u64;
        }
    }

    /// Scrubs echoed secrets from a response body chunk and counts it.
    pub(crate) fn filter_response_body(
        &self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestContext,
    ) {
        if let Some(scrubber) = &mut ctx.scrubber {
            let chunk = body.take().unwrap_or_default();
            let out = scrubber.push(&chunk, end_of_stream);
            if !out.is_empty() {
                *body = Some(out);
            }
        }
        if let Some(body) = body {
            ctx.bytes_down += body.len() as u64;
        }
    }

    /// A request that failed after admission: the client gets a refusal naming the class and
    /// host (if no response has started), the audit log the full error.
    pub(crate) async fn fail(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestContext,
    ) -> FailToProxy {
        let (status, class) = match e.etype() {
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                (504, RefusalClass::UpstreamTimeout)
            }
            ErrorType::HTTPStatus(code) => (*code, RefusalClass::BadRequest),
            _ => match e.esource() {
                pingora::ErrorSource::Downstream => (400, RefusalClass::BadRequest),
                pingora::ErrorSource::Upstream => (502, RefusalClass::Upstream),
                _ => (500, RefusalClass::Internal),
            },
        };
        let host = ctx.host.clone().unwrap_or_default();
        // The sandbox learns the class and the host; the full error goes to the audit log.
        let (refusal, logged) = match ctx.late_refusal.take() {
            Some(refusal) => (refusal.clone(), refusal),
            None => {
                let refusal =
                    Refusal::new(status, class, format!("{host}: {}", e.etype().as_str()));
                let mut logged = refusal.clone();
                logged.logged_reason = Some(format!("{host}: {e}"));
                (refusal, logged)
            }
        };
        let status = refusal.status;
        // Nothing written yet, or only the proxy's own `100 Continue` (a body read for the
        // policy, or the relay's go-ahead): the client still waits for a final answer.
        let answered = session
            .response_written()
            .is_some_and(|head| !head.status.is_informational());
        if !answered {
            refusal.write(session, &ctx.id).await;
        }
        ctx.status = Some(status);
        ctx.refusal = Some(logged);
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    /// What pingora prints for a failed request: method, host and path, never the query string
    /// (it may carry tokens) or headers.
    pub(crate) fn summary(&self, session: &Session, ctx: &RequestContext) -> String {
        let method = session.req_header().method.as_str();
        let path = ctx.path.as_deref().unwrap_or("/");
        format!(
            "{method} {}{path} (decision {})",
            ctx.host.as_deref().unwrap_or("-"),
            ctx.id
        )
    }
}

//! The per-request phases: admit each request (limits, host pinning, placeholders, the body
//! when the policy asks for it (`body.rs`), policy, credentials, resolution and the SSRF
//! guard) and observe it (audit, metrics) here; the checks that need no live connection in
//! `admission.rs` (the admin API's evaluate runs them too); the phases after admission in
//! `phases.rs`.
//! Pingora's proxy calls them through its `ProxyHttp` hooks (`hooks.rs`), the HTTP/1.1 relay
//! (`crate::relay`) directly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cordon_policy::{Decision, HttpProtocol};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession as Session;
use pingora::{Error, ErrorType, Result};

use crate::audit::{AuditRecord, now_rfc3339};
use crate::connection::ConnectionContext;
use crate::credentials::{ScrubTable, Scrubber, SecretSet, SwapPlan, patterns_for};
use crate::respond::{Refusal, RefusalClass};
use crate::state::GatewayState;

/// Request headers larger than this in total are refused with 431: they would bloat the policy
/// input and are a classic smuggling and resource vector. (Pingora's own HTTP/1 limit is 1 MiB.)
pub const MAX_REQUEST_HEADER_BYTES: usize = 64 * 1024;

/// Hop-by-hop and proxy-addressed headers never forwarded upstream.
const PROXY_HEADERS: [&str; 3] = [
    "proxy-authorization",
    "proxy-connection",
    "proxy-authenticate",
];

/// Pingora's `ProxyHttp` for intercepted and plaintext requests.
#[derive(Debug)]
pub struct Authorizer {
    pub state: Arc<GatewayState>,
}

/// What one request accumulates on its way through the phases.
#[derive(Debug, Default)]
pub struct RequestContext {
    conn: Option<Arc<ConnectionContext>>,
    id: String,
    started: Option<Instant>,
    decision: Option<Decision>,
    refusal: Option<Refusal>,
    host: Option<String>,
    port: Option<u16>,
    upstream: Option<SocketAddr>,
    upstream_started: Option<Instant>,
    /// Offer `h2` first to a TLS upstream (see `upstream::protocols`).
    upstream_h2: bool,
    method: Option<String>,
    path: Option<String>,
    protocol: Option<HttpProtocol>,
    policy_time: Duration,
    status: Option<u16>,
    bytes_up: u64,
    bytes_down: u64,
    injections: Vec<Injection>,
    /// Placeholders to swap for real values in the upstream request.
    swaps: SwapPlan,
    /// Replaces echoed secret values in the response (requests to a secret's bound host).
    scrubber: Option<Scrubber>,
    /// A refusal decided after the request was forwarded, for `fail_to_proxy` to write.
    late_refusal: Option<Refusal>,
    /// The policy denied and report mode let the request through.
    would_deny: bool,
    /// Who forwards a body read for the policy (the relay sets it before admission).
    forwarder: Option<body::BodyForwarder>,
    /// The body was read for the policy: how much, and whether the policy saw all of it.
    body_read: Option<body::BodyRead>,
    /// Bytes read for the policy that must be sent upstream ahead of the rest of the body
    /// (see `body.rs`).
    body_replay: Option<Bytes>,
    /// The share of the proxy's body budget those bytes hold, given back with the request.
    body_budget: Option<body::BudgetShare>,
}

/// A credential to set on the upstream request. Its value prints as `<redacted>`.
#[derive(Debug)]
struct Injection {
    secret: String,
    header: String,
    value: crate::credentials::SecretValue,
}

impl RequestContext {
    /// Whether the upstream leg must offer HTTP/2 (the client's leg is HTTP/2, or the host
    /// refuses HTTP/1.1; see `upstream::protocols`).
    pub(crate) fn upstream_http2(&self) -> bool {
        self.upstream_h2
    }

    pub(crate) fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    /// The relay serves this request: it forwards a body read for the policy itself.
    pub(crate) fn set_relayed(&mut self) {
        self.forwarder = Some(body::BodyForwarder::Relay);
    }

    /// Whether the body was read for the policy (and so is no longer in the client stream).
    pub(crate) fn body_was_read(&self) -> bool {
        self.body_read.is_some()
    }

    /// The bytes read for the policy that the caller must send upstream before the rest.
    pub(crate) fn take_body_replay(&mut self) -> Option<Bytes> {
        self.body_replay.take()
    }

    /// The policy's decision, once it was asked.
    pub(crate) fn decision(&self) -> Option<&Decision> {
        self.decision.as_ref()
    }

    /// The policy denied and report mode lets the request through.
    pub(crate) fn would_deny(&self) -> bool {
        self.would_deny
    }

    /// `secret->header` for each credential to inject (names only, never a value).
    pub(crate) fn credentials(&self) -> Vec<String> {
        self.injections
            .iter()
            .map(|i| format!("{}->{}", i.secret, i.header))
            .collect()
    }

    /// `secret->header` for each placeholder to swap for its value.
    pub(crate) fn placeholders(&self) -> &[String] {
        &self.swaps.swapped
    }
}

impl Authorizer {
    /// A new request's context; `conn` when the caller already knows the connection.
    pub(crate) fn context(&self, conn: Option<Arc<ConnectionContext>>) -> Box<RequestContext> {
        Box::new(RequestContext {
            conn,
            id: self.state.next_decision_id(),
            started: Some(Instant::now()),
            ..RequestContext::default()
        })
    }

    /// Decides the request. A refused request has its refusal written and recorded in `ctx`;
    /// returns whether it was refused.
    pub(crate) async fn admit(&self, session: &mut Session, ctx: &mut RequestContext) -> bool {
        match self.authorize(session, ctx).await {
            Ok(()) => false,
            Err(refusal) => {
                refusal.write(session, &ctx.id).await;
                ctx.status = Some(refusal.status);
                ctx.refusal = Some(refusal);
                true
            }
        }
    }

    fn connection(&self, session: &Session) -> Option<Arc<ConnectionContext>> {
        let peer = session.client_addr()?.as_inet()?;
        let local = session.server_addr()?.as_inet()?;
        self.state.connections.get(*peer, *local)
    }

    /// Decides the request; `Err` is the refusal to send. The checks themselves are in
    /// `admission.rs`, shared with the admin API's evaluate; here are the parts that need the
    /// live request (its connection, its body), the network (resolving) or count it.
    async fn authorize(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
    ) -> Result<(), Refusal> {
        let conn = match ctx.conn.clone() {
            Some(conn) => conn,
            None => self.connection(session).ok_or_else(|| {
                Refusal::new(
                    500,
                    RefusalClass::Internal,
                    "the proxy lost track of this connection",
                )
            })?,
        };
        ctx.conn = Some(conn.clone());
        let header = session.req_header();
        let protocol = if session.is_http2() {
            HttpProtocol::Http2
        } else if header.version == http::Version::HTTP_10 {
            HttpProtocol::Http10
        } else {
            HttpProtocol::Http11
        };
        let head = RequestHead {
            method: &header.method,
            uri: &header.uri,
            headers: &header.headers,
            protocol,
        };
        let admission = self.check_request(&conn, &head, ctx)?;

        // Bodies are read only for a generation that asks, for this host: every other request
        // keeps streaming its body after the decision, at no extra cost.
        let body = match admission.body_config() {
            Some(config) => {
                let forwarder = ctx.forwarder.unwrap_or(body::BodyForwarder::Proxy);
                let read_timeout = self.state.config.upstream.read_timeout;
                // Boxed: the read's state would otherwise enlarge every request's future,
                // including the many whose policy reads no body.
                let read = Box::pin(body::read(
                    session,
                    config,
                    &admission.request,
                    forwarder,
                    read_timeout,
                ))
                .await;
                // Recorded whether or not the read ended in a refusal: the audit says so.
                let read = read.inspect_err(|_| {
                    ctx.body_read = Some(body::BodyRead {
                        bytes: session.body_bytes_read() as u64,
                        truncated: false,
                    });
                })?;
                ctx.body_read = Some(read.read);
                ctx.body_replay = read.replay;
                ctx.body_budget = read.budget;
                Some(read.input)
            }
            None => None,
        };
        let decided = self.decide(&conn, &admission, body.as_ref(), ctx);
        drop(body);
        let metrics = &self.state.metrics;
        metrics.policy_eval.observe(ctx.policy_time.as_secs_f64());
        if ctx.would_deny {
            metrics.would_deny.with_label_values(&["request"]).inc();
        }
        decided?;
        let destination = &admission.destination;
        ctx.scrubber = self.scrubber_for(&conn, admission.secrets(), &destination.host);

        let (address, _how) = self
            .state
            .resolver
            .resolve(&destination.host, destination.port)
            .await
            .map_err(admission::unreachable)?;
        ctx.upstream = Some(address);
        Ok(())
    }

    /// A scrubber for responses from `host`, if any secret is bound to it: only a host a
    /// secret may be sent to can echo one. The stand-in is the session's placeholder (minted
    /// now if needed), or `<prefix>redacted` for a source no session registered. The table is
    /// cached on the connection.
    fn scrubber_for(
        &self,
        conn: &ConnectionContext,
        secrets: &Arc<SecretSet>,
        host: &str,
    ) -> Option<Scrubber> {
        let session = conn.session.id.as_str();
        let table = conn.scrub.get_or_build(
            secrets,
            host,
            || self.state.placeholders.index(),
            || {
                let registered = self.state.sessions.contains(session);
                let mut patterns = Vec::new();
                for secret in secrets.bound_to(host) {
                    let placeholder = if registered {
                        self.state.placeholders.get_or_mint(
                            session,
                            &secret.name,
                            &secret.placeholder_prefix,
                        )
                    } else {
                        format!("{}redacted", secret.placeholder_prefix)
                    };
                    patterns.extend(patterns_for(secret, &placeholder));
                }
                if registered {
                    self.state.forget_placeholders_if_gone(session);
                }
                ScrubTable::new(patterns)
            },
        )?;
        Some(Scrubber::new(table))
    }

    /// Readies a response from a bound host for scrubbing: header values are scrubbed now; a
    /// body loses its `content-length` (replacements change its length) and goes chunked on
    /// HTTP/1. An upgraded stream (101) is not scrubbed: its framing cannot survive length
    /// changes. A compressed body is refused: it could carry an echoed value past the scrubber.
    fn prepare_scrubbing(
        &self,
        session: &Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestContext,
    ) -> Result<()> {
        let status = response.status.as_u16();
        let no_body = session.req_header().method == http::Method::HEAD
            || matches!(status, 101 | 204 | 304)
            || response.status.is_informational();
        // Every content-encoding value, comma-separated lists included.
        let encoded = response
            .headers
            .get_all(http::header::CONTENT_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .any(|e| !e.is_empty() && !e.eq_ignore_ascii_case(b"identity"));
        if encoded && !no_body {
            let host = ctx.host.clone().unwrap_or_default();
            ctx.late_refusal = Some(Refusal::new(
                502,
                RefusalClass::Upstream,
                format!(
                    "{host} sent a compressed response although asked for identity; it cannot be \
                     checked for echoed secrets, so it is not passed on"
                ),
            ));
            return Err(Error::explain(
                ErrorType::InvalidHTTPHeader,
                "encoded response from a credential host",
            ));
        }
        let Some(scrubber) = ctx.scrubber.as_mut() else {
            return Ok(());
        };
        let mut rewrites = Vec::new();
        for name in response.headers.keys() {
            let values: Vec<_> = response.headers.get_all(name).iter().collect();
            let scrubbed: Vec<_> = values
                .iter()
                .map(|v| scrubber.scrub_all(v.as_bytes()))
                .collect();
            if scrubbed.iter().any(Option::is_some) {
                let new: Vec<Vec<u8>> = values
                    .iter()
                    .zip(scrubbed)
                    .map(|(old, new)| new.unwrap_or_else(|| old.as_bytes().to_vec()))
                    .collect();
                rewrites.push((name.clone(), new));
            }
        }
        for (name, values) in rewrites {
            response.remove_header(&name);
            for value in values {
                let value = http::HeaderValue::from_bytes(&value).map_err(|_| {
                    Error::explain(ErrorType::InvalidHTTPHeader, "a scrubbed header is invalid")
                })?;
                response.append_header(name.clone(), value)?;
            }
        }
        if status == 101 {
            // An upgraded stream's framing cannot survive length changes: headers only.
            ctx.scrubber = None;
            return Ok(());
        }
        // gRPC ends in trailers, after which held-back bytes could not be sent: no hold-back
        // (a value split across two messages is then not recognised; trailers are scrubbed).
        let grpc = response
            .headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if grpc && let Some(scrubber) = ctx.scrubber.as_mut() {
            scrubber.disable_holdback();
        }
        if !no_body && response.headers.contains_key(http::header::CONTENT_LENGTH) {
            response.remove_header(&http::header::CONTENT_LENGTH);
            if !session.is_http2() {
                response.set_version(http::Version::HTTP_11);
                response.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
            }
        }
        Ok(())
    }

    fn count_credentials(&self, ctx: &RequestContext, scrubbed: u64) {
        let counter = &self.state.metrics.credentials;
        let refused = match ctx.refusal.as_ref().map(|r| r.class) {
            Some(RefusalClass::Credential) => Some("refused"),
            Some(RefusalClass::Exfiltration) => Some("exfiltration"),
            _ => None,
        };
        if let Some(action) = refused {
            counter.with_label_values(&[action]).inc();
            return;
        }
        for (action, n) in [
            ("injected", ctx.injections.len() as u64),
            ("swapped", ctx.swaps.swapped.len() as u64),
            ("scrubbed", scrubbed),
        ] {
            if n > 0 {
                counter.with_label_values(&[action]).inc_by(n);
            }
        }
    }

    pub(crate) fn audit(&self, session: &Session, ctx: &RequestContext) {
        let scrubbed = ctx.scrubber.as_ref().map_or(0, Scrubber::replaced);
        self.count_credentials(ctx, scrubbed);
        let conn = ctx.conn.as_ref();
        let (decision, class, reason) = match (&ctx.refusal, &ctx.decision) {
            (Some(refusal), _) => (
                refusal.class.decision_label(),
                refusal.class.as_str(),
                refusal
                    .logged_reason
                    .as_deref()
                    .unwrap_or(refusal.reason.as_str()),
            ),
            (None, Some(d)) if ctx.would_deny && d.failure.is_some() => {
                ("allow", "policy_failure", d.reason.as_str())
            }
            (None, Some(d)) => ("allow", "policy", d.reason.as_str()),
            (None, None) => ("error", "internal", "no decision was made"),
        };
        let protocol = ctx.protocol.map(|p| match p {
            HttpProtocol::Http2 => "http2",
            _ => "http1",
        });
        let metrics = &self.state.metrics;
        metrics.count_request(decision, protocol.unwrap_or("http1"));
        metrics.bytes_upstream.inc_by(ctx.bytes_up);
        metrics.bytes_downstream.inc_by(ctx.bytes_down);
        if let Some(started) = ctx.upstream_started {
            self.state
                .metrics
                .upstream_duration
                .observe(started.elapsed().as_secs_f64());
        }
        let status = ctx
            .status
            .or_else(|| session.response_written().map(|r| r.status.as_u16()));
        if let Some(c) = conn {
            self.state
                .sessions
                .count_decision(&c.session.id, decision == "allow");
        }
        self.state.audit.write(&AuditRecord {
            time: now_rfc3339(),
            kind: "request",
            decision_id: &ctx.id,
            connection_id: conn.map(|c| c.id.as_str()),
            session: conn.map_or("unknown", |c| c.session.id.as_str()),
            labels: conn.map(|c| &c.session.labels),
            source: conn.map_or("", |c| c.source.as_str()),
            original_destination: conn.and_then(|c| c.input.original_destination),
            mode: conn.map_or("explicit", |c| c.input.mode.as_str()),
            sni: conn.and_then(|c| c.input.sni.as_deref()),
            method: ctx.method.as_deref(),
            host: ctx.host.as_deref(),
            port: ctx.port,
            path: ctx.path.as_deref(),
            protocol,
            decision,
            // A request another check refused after all is recorded as that refusal.
            would_deny: ctx.would_deny && ctx.refusal.is_none(),
            reason_class: class,
            reason,
            policy_generation: ctx.decision.as_ref().map_or_else(
                || self.state.policy.generation().info().id.to_string().into(),
                |d| (*d.generation).into(),
            ),
            status,
            upstream_address: ctx.upstream,
            credentials: ctx.credentials(),
            placeholders: &ctx.swaps.swapped,
            secrets_scrubbed: scrubbed,
            body_read: ctx.body_read.map(|b| b.bytes),
            body_truncated: ctx.body_read.is_some_and(|b| b.truncated),
            bytes_up: ctx.bytes_up,
            bytes_down: ctx.bytes_down,
            policy_us: ctx.policy_time.as_micros() as u64,
            duration_ms: ctx.started.map_or(0, |s| s.elapsed().as_millis() as u64),
        });
    }
}

mod admission;
pub(crate) mod body;
mod hooks;
mod phases;

pub(crate) use admission::{RequestHead, unreachable};

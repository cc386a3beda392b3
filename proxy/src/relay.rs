//! The HTTP/1.1 relay for intercepted and plaintext client connections.
//!
//! Pingora's proxy is general: per request it boxes a future of about 13 KiB, runs the two
//! directions as separate futures joined by channels, returns the upstream connection to a
//! shared pool (spawning a task to watch it while idle) and takes it back for the next request.
//! For the common agent request (a small GET or POST over a kept-alive connection) that
//! machinery cost more CPU than the policy decision. The relay serves such requests itself with
//! Pingora's own HTTP/1 codec and the same admission, filter, body-counting and audit phases
//! (`crate::authorize`), and keeps each client connection's upstream connection to itself
//! between requests.
//!
//! An upstream connection the client connection stops using (it closes, idles for more than
//! half a second, or asks for another destination) goes to a shared pool like Pingora's, so a
//! client that opens a connection per request still reuses upstream connections.
//!
//! Which requests qualify is decided from the raw head before anything is consumed
//! (`head.rs`): GET, HEAD, POST, PUT, PATCH, DELETE and OPTIONS in origin form, with no body or
//! one plain `Content-Length` of at most 64 KiB (a model API call, a git fetch negotiation), or
//! a longer or chunked body, or one sent with `Expect: 100-continue`, when the policy reads it
//! anyway (`Relay::reads_body`: then it is in memory before the decision, and Pingora's path
//! could not hold more than 64 KiB of it; the proxy answers the expectation itself).
//! Everything else (upgrades, chunked, larger or expecting bodies the policy does not read),
//! and a request the relay cannot finish the same way (an upstream that only speaks HTTP/2),
//! is handed to
//! Pingora's proxy together with the bytes already read, so the two paths never disagree on
//! what a request means. HTTP/2 client connections go to Pingora directly (`gateway.rs`).
//!
//! Bodies. The request head goes upstream first, then the body as it arrives from the client
//! (Pingora's body reader: its framing, its 60 s read timeout per read), then the response is
//! read. When the policy asks for the body (`crate::authorize::body`), admission has read it
//! whole already, and the copy it kept is written instead. What the relay promises about a
//! request with a body:
//! - It is sent once. Only a bodyless GET or HEAD is resent after a kept upstream connection
//!   turns out to have been closed; a POST that may have reached the upstream fails with 502
//!   instead. A kept connection is checked before any request is written, so one the upstream
//!   had closed is replaced before a byte is sent, not after.
//! - A client that stops mid-body gets a 400 in the audit log, and the upstream connection that
//!   carried the partial body is dropped, never kept or pooled: the next request on it would be
//!   read as the rest of the body.
//! - Bytes past the body are the next request's (pipelining), served after this response.
//! - The body is sent before the response is read, not both at once as in Pingora's proxy,
//!   which is why only bodies the sockets' buffers absorb whole are streamed here: an upstream
//!   that answers before reading the body, or stops reading it, is still heard at once. A
//!   longer body the policy read is written from memory the same way; the sockets' buffers
//!   (several MiB on Linux with its default autotuning) absorb most of it, and an upstream that
//!   stops reading fails the request after the upstream read timeout.

pub(crate) mod head;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use pingora::apps::HttpServerApp;
use pingora::connectors::TransportConnector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::protocols::Stream;
use pingora::protocols::http::ServerSession as Session;
use pingora::protocols::http::v1::client::HttpSession as UpstreamSession;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use pingora::upstreams::peer::Peer;
use pingora::{Error, ErrorType, Result, RetryType};
use tokio::io::AsyncReadExt;

use crate::authorize::{Authorizer, RequestContext};
use crate::connection::ConnectionContext;
use head::Head;

/// How long a client connection may sit idle waiting for its next request (Pingora's default
/// HTTP/1 keep-alive).
const IDLE: Duration = Duration::from_secs(60);

/// How long an idle client connection keeps its upstream connection to itself. After that the
/// upstream connection goes to the shared pool (bounded, least recently used first out), so
/// many idle clients do not pin as many upstream connections.
const HELD_IDLE: Duration = Duration::from_millis(500);

/// Bytes asked of the client stream per read while a head is incomplete.
const READ_SIZE: usize = 4096;

/// Serves HTTP/1.x client connections (see the module docs).
pub struct Relay {
    authorizer: Authorizer,
    connector: TransportConnector,
    proxy: Arc<HttpProxy<Authorizer>>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").finish_non_exhaustive()
    }
}

/// The upstream connection a client connection keeps between its requests.
struct Held {
    peer: Box<HttpPeer>,
    stream: Stream,
}

impl Held {
    /// Whether this connection reaches `peer` as `peer` asks: same address, TLS and name.
    fn serves(&self, peer: &HttpPeer) -> bool {
        self.peer._address == peer._address
            && self.peer.scheme == peer.scheme
            && self.peer.sni == peer.sni
    }
}

/// How one relayed request left the client connection.
enum Outcome {
    /// Ready for the next request; the bytes already read of it.
    Next(Stream, BytesMut),
    /// Pingora's to serve after all, from these bytes.
    HandOff(Stream, BytesMut),
    Close,
}

impl Relay {
    pub fn new(
        authorizer: Authorizer,
        connector: TransportConnector,
        proxy: Arc<HttpProxy<Authorizer>>,
    ) -> Self {
        Self {
            authorizer,
            connector,
            proxy,
        }
    }

    /// Serves a client connection's requests until it closes.
    pub async fn serve(
        &self,
        stream: Stream,
        conn: &Arc<ConnectionContext>,
        shutdown: &ShutdownWatch,
    ) {
        let mut held: Option<Held> = None;
        self.serve_requests(stream, conn, shutdown, &mut held).await;
        if let Some(held) = held {
            self.release(held);
        }
    }

    async fn serve_requests(
        &self,
        mut stream: Stream,
        conn: &Arc<ConnectionContext>,
        shutdown: &ShutdownWatch,
        held: &mut Option<Held>,
    ) {
        let mut read = BytesMut::new();
        loop {
            let Some(head) = self.read_head(&mut stream, &mut read, shutdown, held).await else {
                return;
            };
            let outcome = match head {
                Head::Relay => {
                    let closing = *shutdown.borrow();
                    self.relay(stream, read, conn, held, closing, false).await
                }
                Head::IfBodyRead => {
                    let closing = *shutdown.borrow();
                    self.relay(stream, read, conn, held, closing, true).await
                }
                _ => Outcome::HandOff(stream, read),
            };
            (stream, read) = match outcome {
                Outcome::Next(stream, read) => (stream, read),
                Outcome::HandOff(stream, read) => {
                    // Pingora's request may take long (an upload, a stream of events): the
                    // pool watches the upstream connection meanwhile.
                    if let Some(kept) = held.take() {
                        self.release(kept);
                    }
                    match self.hand_off(stream, read, shutdown).await {
                        Some(stream) => (stream, BytesMut::new()),
                        None => return,
                    }
                }
                Outcome::Close => return,
            };
        }
    }

    /// Lets Pingora's proxy serve the request that starts with `read`; returns the connection
    /// if it stays open.
    async fn hand_off(
        &self,
        stream: Stream,
        read: BytesMut,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let mut session = Session::new_http1(stream);
        session.set_keepalive((!*shutdown.borrow()).then_some(IDLE.as_secs()));
        if !read.is_empty() {
            session.set_pipelined_prefix(read);
        }
        let reused = self.proxy.process_new_http(session, shutdown).await?;
        // The settings carry a keep-alive already applied per request, and pipelined bytes
        // only when pipelining is on, which Cordon leaves off.
        let (stream, _settings) = reused.consume();
        Some(stream)
    }

    /// Serves one request whose complete head is in `read`; `if_read`: the relay carries its
    /// body only if the policy reads it ([`Head::IfBodyRead`]).
    async fn relay(
        &self,
        stream: Stream,
        read: BytesMut,
        conn: &Arc<ConnectionContext>,
        held: &mut Option<Held>,
        closing: bool,
        if_read: bool,
    ) -> Outcome {
        // Kept in case the request must go to Pingora after all.
        let replay = read.clone();
        let mut session = Session::new_http1(stream);
        session.set_keepalive(Some(IDLE.as_secs()));
        if let Session::H1(h1) = &mut session {
            // The bytes past this request's body are the next request's, handed back by
            // `finish`; without this Pingora closes a connection a client pipelined on.
            h1.set_pipelining_enabled(true);
        }
        session.set_pipelined_prefix(read);
        if !matches!(session.read_request().await, Ok(true)) {
            // Pingora's parser is stricter than the head check: its own path answers.
            return hand_back(session, replay);
        }
        if closing {
            // After the read: it sets keep-alive from the request's own headers.
            session.set_keepalive(None);
        }
        // Only a bodyless GET or HEAD is ever sent twice (see `exchange`'s caller below).
        let resendable = matches!(
            session.req_header().method,
            http::Method::GET | http::Method::HEAD
        ) && session.is_body_empty();
        if conn.tls
            && self
                .authorizer
                .state
                .http2_only
                .contains_authority(session.req_header())
        {
            // A host known to speak only HTTP/2: Pingora's HTTP/2 client serves it.
            return hand_back(session, replay);
        }
        if if_read && !self.reads_body(session.req_header()) {
            // Streamed by Pingora's proxy, which moves both directions at once.
            return hand_back(session, replay);
        }
        let mut ctx = self.authorizer.context(Some(conn.clone()));
        ctx.set_relayed();
        if self.authorizer.admit(&mut session, &mut ctx).await {
            if expects_continue(&session) && !session.is_body_done() {
                // Refused before the go-ahead: the client may send the body or not, so the
                // next bytes on this connection cannot be told apart. It closes.
                session.set_keepalive(None);
            }
            self.authorizer.audit(&session, &ctx);
            return finish(session).await;
        }
        let peer = match self.authorizer.peer(false, &mut ctx) {
            Ok(peer) => peer,
            Err(e) => return self.failed(session, ctx, e).await,
        };
        if ctx.upstream_http2() {
            // Learned since the check above.
            if ctx.body_was_read() {
                return self.body_needs_http2(session, ctx).await;
            }
            return hand_back(session, replay);
        }
        let kept = match held.take() {
            Some(mut kept) if kept.serves(&peer) => still_clean(&mut kept.stream).then_some(kept),
            other => {
                if let Some(other) = other {
                    self.release(other);
                }
                None
            }
        };
        let (mut upstream, reused) = match kept {
            Some(kept) => (upstream_session(kept.stream, &peer), true),
            None => match self.connector.get_stream(&*peer).await {
                Ok((stream, reused)) => (upstream_session(stream, &peer), reused),
                Err(e) => {
                    let e = e.into_up();
                    let e = self.authorizer.connect_failed(&mut ctx, e);
                    if ctx.upstream_http2() {
                        tracing::warn!(
                            "{} refused HTTP/1.1 ({e}); offering h2 from now on",
                            peer.sni
                        );
                        if ctx.body_was_read() {
                            return self.body_needs_http2(session, ctx).await;
                        }
                        return hand_back(session, replay);
                    }
                    return self.failed(session, ctx, e).await;
                }
            },
        };

        let request = match self.upstream_request(&session, &ctx) {
            Ok(request) => request,
            Err(e) => return self.failed(session, ctx, e).await,
        };
        let mut sent = self
            .exchange(&mut session, &mut upstream, request, &mut ctx)
            .await;
        if reused
            && resendable
            && let Err(e) = &sent
            && stale(e)
        {
            // A kept-alive upstream connection may have closed while idle; a bodyless GET or
            // HEAD may be sent again, once, on a fresh one. Nothing else is: once any byte of
            // a POST may have reached the upstream, only the upstream knows whether it acted.
            // (Built again rather than copied up front: the copy would cost every request.)
            sent = match (
                self.connect(&peer).await,
                self.upstream_request(&session, &ctx),
            ) {
                (Ok(fresh), Ok(request)) => {
                    upstream = fresh;
                    self.exchange(&mut session, &mut upstream, request, &mut ctx)
                        .await
                }
                (Err(e), _) | (_, Err(e)) => Err(e),
            };
        }
        if let Err(e) = sent {
            // The upstream connection is dropped here, never kept: a request may be half sent.
            return self.failed(session, ctx, e).await;
        }

        if let Err(e) = self.respond(&mut session, &mut upstream, &mut ctx).await {
            return self.failed(session, ctx, e).await;
        }
        upstream.respect_keepalive();
        *held = upstream.reuse().await.map(|stream| Held { peer, stream });
        self.authorizer.audit(&session, &ctx);
        finish(session).await
    }

    /// Sends the request (its body read from the client as it arrives, through the request
    /// body phase) and reads the response head. Errors say which side failed: a client that
    /// stops mid-body is the downstream's, everything else the upstream's.
    ///
    /// The body is sent before the response is read, not both at once as Pingora's proxy does:
    /// an upstream that answers early is heard once the body is through, and one that stops
    /// reading mid-body fails the request after the upstream read timeout (the relay's write
    /// timeout, see `upstream_session`) rather than holding it forever.
    ///
    /// Interim (1xx) responses are not passed on: the request asked for none (`Expect` goes to
    /// Pingora), and a 101 without an `Upgrade` request is the upstream's error.
    async fn exchange(
        &self,
        session: &mut Session,
        upstream: &mut UpstreamSession,
        request: Box<RequestHeader>,
        ctx: &mut RequestContext,
    ) -> Result<()> {
        upstream
            .write_request_header(request)
            .await
            .map_err(Error::into_up)?;
        if !ctx.body_was_read() && expects_continue(session) {
            // Admission did not read the body, so the client still waits for the go-ahead; the
            // proxy gives it, as it does after reading a body (the upstream is not asked).
            session
                .write_continue_response()
                .await
                .map_err(Error::into_down)?;
        }
        // The body read for the policy, if it was, then whatever of it is still to come.
        if let Some(read) = ctx.take_body_replay() {
            self.authorizer.count_request_body(Some(&read), ctx);
            // In slices: the write timeout applies to each write, so it bounds a lack of
            // progress, not the time a large body takes to a slow upstream.
            for slice in read.chunks(head::MAX_RELAY_BODY as usize) {
                upstream.write_body(slice).await.map_err(Error::into_up)?;
            }
        }
        while !session.is_body_done() {
            let body = session
                .read_request_body()
                .await
                .map_err(Error::into_down)?;
            self.authorizer.count_request_body(body.as_ref(), ctx);
            let Some(body) = body else { break };
            // Pingora's chunked reader returns empty reads (a chunk's CRLF or head still to
            // come), and its chunked writer takes an empty write for the final `0` chunk: one
            // passed on would end the body early toward the upstream, and the rest would be
            // read there as further requests.
            if body.is_empty() {
                continue;
            }
            upstream.write_body(&body).await.map_err(Error::into_up)?;
        }
        upstream.finish_body().await.map_err(Error::into_up)?;
        loop {
            upstream.read_response().await.map_err(Error::into_up)?;
            match upstream.resp_header().map(|h| h.status.as_u16()) {
                Some(101) => {
                    return Error::e_explain(
                        ErrorType::InvalidHTTPHeader,
                        "101 Switching Protocols to a request that asked for no upgrade",
                    )
                    .map_err(Error::into_up);
                }
                Some(100..=199) => continue,
                _ => return Ok(()),
            }
        }
    }

    /// The request for the upstream: the client's, less `Connection`, through the rewrite phase.
    fn upstream_request(
        &self,
        session: &Session,
        ctx: &RequestContext,
    ) -> Result<Box<RequestHeader>> {
        let mut request = Box::new(session.req_header().clone());
        // `head.rs` let through only `keep-alive` and `close` here: nothing else is hop-by-hop.
        request.remove_header(&http::header::CONNECTION);
        // The proxy answers `Expect: 100-continue` itself (`exchange`, or the body read for
        // the policy): the upstream gets the body at once.
        request.remove_header(&http::header::EXPECT);
        self.authorizer.rewrite_request(false, &mut request, ctx)?;
        Ok(request)
    }

    /// Passes the upstream's response to the client through the response phases, all but the
    /// final flush.
    async fn respond(
        &self,
        session: &mut Session,
        upstream: &mut UpstreamSession,
        ctx: &mut RequestContext,
    ) -> Result<()> {
        let Some(header) = upstream.resp_header() else {
            return Error::e_explain(ErrorType::InternalError, "no upstream response header");
        };
        let mut response = Box::new(header.clone());
        let mut done = upstream.is_body_done();
        frame_for_client(session, &mut response, done);
        self.authorizer
            .filter_response(session, &mut response, ctx)?;
        session
            .write_response_header(response)
            .await
            .map_err(Error::into_down)?;
        while !done {
            let mut body = upstream.read_body_bytes().await.map_err(Error::into_up)?;
            done = body.is_none() || upstream.is_body_done();
            self.authorizer.filter_response_body(&mut body, done, ctx);
            if let Some(body) = body {
                session
                    .write_response_body(body, false)
                    .await
                    .map_err(Error::into_down)?;
            }
        }
        // The end of the body is flushed by `finish`, after the audit record is written: a
        // client that has its whole response can rely on the record being there.
        Ok(())
    }

    /// Whether the active policy reads the body of `request`: it asks for bodies on the
    /// request's host. Up to `max_bytes` of such a body is read before the decision
    /// (`crate::authorize::body`) and kept in memory, and the rest of a longer one (under
    /// `truncate`) streams after it; one declared longer under `deny` is refused from its
    /// head. Pingora's path could hold only 64 KiB of it. (The host is read from the `Host`
    /// header here; admission checks it against the connection's own. A disagreement sends
    /// the request to Pingora's path, where it is refused or decided on a prefix as
    /// `over_limit` says: never forwarded undecided.)
    fn reads_body(&self, request: &RequestHeader) -> bool {
        let Some(host) = request
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(host_name)
        else {
            return false;
        };
        let generation = self.authorizer.state.policy.generation();
        generation
            .request_body()
            .is_some_and(|config| config.wants(&host))
    }

    /// Puts an upstream connection in the shared pool (closed instead if it is not clean).
    fn release(&self, held: Held) {
        let key = held.peer.reuse_hash();
        self.connector.release_stream(held.stream, key, None);
    }

    /// Reads until `read` holds a complete head, or something Pingora must judge; `None` when
    /// the client closed, fell idle, failed, or the proxy is shutting down. A kept upstream
    /// connection is released to the pool once the client has been idle for `HELD_IDLE`.
    async fn read_head(
        &self,
        stream: &mut Stream,
        read: &mut BytesMut,
        shutdown: &ShutdownWatch,
        held: &mut Option<Held>,
    ) -> Option<Head> {
        if *shutdown.borrow() {
            return None;
        }
        let mut watch = shutdown.clone();
        let started = Instant::now();
        loop {
            if !read.is_empty() {
                match head::classify(read) {
                    Head::Partial => {}
                    head => return Some(head),
                }
            }
            read.reserve(READ_SIZE);
            let left = IDLE.saturating_sub(started.elapsed());
            // A kept upstream connection goes to the pool once the client idles, or once its
            // next request arrives in pieces (a client that trickles a head holds nothing).
            if !read.is_empty()
                && let Some(kept) = held.take()
            {
                self.release(kept);
            }
            let wait = if held.is_some() {
                HELD_IDLE.min(left)
            } else {
                left
            };
            let n = tokio::select! {
                biased;
                n = pingora::time::timeout(wait, stream.read_buf(read)) => n,
                _ = watch.changed() => return None,
            };
            match n {
                Ok(Ok(n)) if n > 0 => {}
                Err(_) if held.is_some() => {
                    if let Some(kept) = held.take() {
                        self.release(kept);
                    }
                }
                // Closed mid-head, failed, or idle too long: nothing to answer.
                _ => return None,
            }
        }
    }

    /// A request whose body was read for the policy cannot go to Pingora's proxy any more (the
    /// body is no longer in the client stream), and only Pingora speaks HTTP/2 upstream: the
    /// request fails, and the client's retry finds the host known as HTTP/2-only.
    async fn body_needs_http2(&self, session: Session, ctx: Box<RequestContext>) -> Outcome {
        let host = ctx.host().unwrap_or_default().to_string();
        let e = Error::explain(
            ErrorType::ConnectProxyFailure,
            format!("{host} speaks only HTTP/2, learned after the body was read for the policy"),
        );
        self.failed(session, ctx, e.into_up()).await
    }

    async fn connect(&self, peer: &HttpPeer) -> Result<UpstreamSession> {
        let stream = self
            .connector
            .new_stream(peer)
            .await
            .map_err(Error::into_up)?;
        Ok(upstream_session(stream, peer))
    }

    /// Ends a request that failed after admission as Pingora's path does: a refusal if no
    /// response has started, an audit record, and the client connection closed.
    async fn failed(
        &self,
        mut session: Session,
        mut ctx: Box<RequestContext>,
        e: Box<Error>,
    ) -> Outcome {
        let outcome = self.authorizer.fail(&mut session, &e, &mut ctx).await;
        self.authorizer.audit(&session, &ctx);
        if outcome.can_reuse_downstream {
            finish(session).await
        } else {
            Outcome::Close
        }
    }
}

/// The lower-cased host name of a `Host` header value, without its port.
fn host_name(value: &str) -> String {
    let value = value.trim();
    let name = match value.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => value
            .rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(value, |(name, _)| name),
    };
    name.to_ascii_lowercase()
}

/// Whether a failed exchange on a reused upstream connection looks like the upstream having
/// closed it while idle (as opposed to a slow or broken upstream, which a resend would not
/// fix): what Pingora's codec marks as safe to retry on a reused connection (closed before any
/// response byte, or a socket error rather than a TLS one), and a failed write of the request.
fn stale(e: &Error) -> bool {
    e.esource() != &pingora::ErrorSource::Downstream
        && (matches!(e.retry, RetryType::ReusedOnly) || e.etype() == &ErrorType::WriteError)
}

/// Whether a kept upstream connection is still fit for a request: nothing to read on it (no
/// close, no bytes the upstream sent past its last response). One non-blocking read, as
/// Pingora's pool does when it hands out a connection.
fn still_clean(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    // `unconstrained`: a task out of its scheduling budget would see a pending read.
    let read = std::pin::pin!(tokio::task::unconstrained(stream.read(&mut byte)));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    read.poll(&mut cx).is_pending()
}

/// An upstream session with the peer's timeouts. A write that makes no progress for the read
/// timeout fails too: the relay sends a request body before it reads the response, so an
/// upstream that stops reading (it answered early, or it streams its answer as it reads) must
/// not hold the request forever.
fn upstream_session(stream: Stream, peer: &HttpPeer) -> UpstreamSession {
    let mut session = UpstreamSession::new_with_options(stream, peer);
    session.read_timeout = peer.options.read_timeout;
    session.write_timeout = peer.options.write_timeout.or(peer.options.read_timeout);
    session
}

/// Pingora's HTTP/1 rule: a body the upstream frames by closing its connection goes to the
/// client chunked, so the client's connection survives it.
fn frame_for_client(session: &Session, response: &mut ResponseHeader, done: bool) {
    let no_body = session.req_header().method == http::Method::HEAD
        || matches!(response.status.as_u16(), 204 | 304);
    if !no_body
        && !done
        && !response
            .headers
            .contains_key(http::header::TRANSFER_ENCODING)
        && !response.headers.contains_key(http::header::CONTENT_LENGTH)
    {
        response.set_version(http::Version::HTTP_11);
        // Cannot fail: a static name and value.
        let _ = response.insert_header(http::header::TRANSFER_ENCODING, "chunked");
    }
}

/// Whether the client sent `Expect: 100-continue` (`head.rs` lets no other expectation through).
fn expects_continue(session: &Session) -> bool {
    session
        .req_header()
        .headers
        .contains_key(http::header::EXPECT)
}

/// The client connection back from a session nothing was written to, for Pingora's path.
fn hand_back(session: Session, replay: BytesMut) -> Outcome {
    match session {
        Session::H1(h1) => Outcome::HandOff(h1.into_inner(), replay),
        _ => Outcome::Close,
    }
}

/// Flushes the response (the last chunk of a chunked body included) and keeps the connection
/// if the request allows it.
async fn finish(session: Session) -> Outcome {
    match session.finish().await {
        Ok(Some(reusable)) => {
            let (stream, read) = reusable.into_parts();
            Outcome::Next(stream, read.unwrap_or_default())
        }
        _ => Outcome::Close,
    }
}

#[cfg(test)]
mod tests {
    use super::host_name;

    #[test]
    fn host_names_lose_their_port_and_case() {
        for (value, name) in [
            ("API.Example.test", "api.example.test"),
            ("api.example.test:8443", "api.example.test"),
            ("[::1]:443", "::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            (" a.test ", "a.test"),
        ] {
            assert_eq!(host_name(value), name, "{value}");
        }
    }
}

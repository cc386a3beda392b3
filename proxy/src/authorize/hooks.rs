//! Pingora's `ProxyHttp` hooks: each delegates to the phase it names (see `phases.rs`), so the
//! HTTP/1.1 relay runs the same code without Pingora's per-hook boxing.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, Result};

use super::{Authorizer, RequestContext};

#[async_trait]
impl ProxyHttp for Authorizer {
    /// Boxed: Pingora keeps the context inside each request's future, which it boxes and
    /// moves per request, so a small context is a smaller copy.
    type CTX = Box<RequestContext>;

    fn new_ctx(&self) -> Self::CTX {
        self.context(None)
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        Ok(self.admit(session, ctx).await)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        self.peer(session.is_http2(), ctx)
    }

    /// An upstream that speaks only HTTP/2 refuses an HTTP/1.1-only offer: retry once offering
    /// `h2`, and remember the host.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        e: Box<Error>,
    ) -> Box<Error> {
        self.connect_failed(ctx, e)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        self.rewrite_request(session.is_http2(), upstream_request, ctx)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        self.filter_response(session, upstream_response, ctx)
    }

    /// HTTP/2 trailers (gRPC's `grpc-message`, say) are scrubbed like headers.
    async fn response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Bytes>> {
        self.filter_trailers(trailers, ctx)?;
        Ok(None)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        self.replay_request_body(body, ctx);
        self.count_request_body(body.as_ref(), ctx);
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Duration>> {
        self.filter_response_body(body, end_of_stream, ctx);
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        self.fail(session, e, ctx).await
    }

    /// What pingora prints for a failed request: method, host and path, never the query string
    /// (it may carry tokens) or headers.
    fn request_summary(&self, session: &Session, ctx: &Self::CTX) -> String {
        self.summary(session, ctx)
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Self::CTX) {
        self.audit(session, ctx);
    }
}

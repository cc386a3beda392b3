//! The request body phase, for a policy generation whose manifest asks for bodies
//! (`metadata.cordon.request_body`) on the request's host: the body is read from the client
//! before the request is decided, handed to the policy as a [`BodyInput`], and forwarded
//! afterwards exactly as the client sent it (the policy's decoded copy is never forwarded).
//! Requests whose policy does not ask never come here: their bodies stream as before.
//!
//! Who forwards the bytes read here:
//! - The relay (`crate::relay`: HTTP/1.1, which TLS clients are offered for hosts whose bodies
//!   the policy reads) reads up to `max_bytes` of the body (whole when it fits, whether framed
//!   by length or in chunks; a prefix of a longer one under `truncate`) and writes the copy
//!   kept in the context before the rest, if any.
//! - Pingora's proxy resends what was read from its retry buffer (`enable_retry_buffering`;
//!   `proxy_h1.rs` and `proxy_h2.rs` send `get_retry_buffer()` first, then read the rest of
//!   the body from the client). That buffer holds 64 KiB ([`REPLAY_LIMIT`], pingora-core's
//!   `BODY_BUF_LIMIT`) and empties itself when a read overflows it, so here the proxy reads at
//!   most about that much. When the last read overflowed it anyway, the context keeps its own
//!   copy and the request body phase puts it in front of the next bytes read from the client;
//!   if the body had ended with that read there is no next read to carry it, and the request
//!   is refused (413) rather than forwarded with bytes missing. With a `Content-Length` the
//!   proxy stops before a read that could do both ([`may_end_past_replay`]), so only bodies
//!   without one (chunked, HTTP/2 without `content-length`) can meet that refusal.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cordon_policy::{BodyInput, BodyRequest, OverLimit, RequestBodyConfig, RequestInput};
use pingora::protocols::http::ServerSession as Session;

use crate::respond::{Refusal, RefusalClass};

/// The most of a body Pingora's proxy can resend after it was read for the policy: its retry
/// buffer's size (`BODY_BUF_LIMIT` in pingora-core 0.9, not configurable).
pub(crate) const REPLAY_LIMIT: usize = 64 * 1024;

/// Bytes of request bodies the proxy holds for policies at once, across every request: a
/// body is read whole before its decision (up to `max_bytes`, 16 MiB at most), so many at once
/// could otherwise take the gateway's memory. A read past it is refused with 503.
pub(crate) const BODY_BUDGET: usize = 256 * 1024 * 1024;
/// The budget in KiB, a semaphore's permits.
static BUDGET: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(BODY_BUDGET / 1024);

/// A request's share of [`BODY_BUDGET`], given back when dropped.
#[derive(Debug)]
pub(crate) struct BudgetShare(tokio::sync::SemaphorePermit<'static>);

/// Grows `share` of [`BODY_BUDGET`] to cover `bytes`; false when the budget has no room.
fn reserve(share: &mut Option<BudgetShare>, bytes: usize) -> bool {
    reserve_from(&BUDGET, share, bytes)
}

fn reserve_from(
    budget: &'static tokio::sync::Semaphore,
    share: &mut Option<BudgetShare>,
    bytes: usize,
) -> bool {
    let wanted = bytes.div_ceil(1024) as u32;
    let held = share.as_ref().map_or(0, |s| s.0.num_permits() as u32);
    if wanted <= held {
        return true;
    }
    match budget.try_acquire_many(wanted - held) {
        Ok(more) => {
            match share {
                Some(share) => share.0.merge(more),
                None => *share = Some(BudgetShare(more)),
            }
            true
        }
        Err(_) => false,
    }
}

/// The manifest key that raises the limit, for refusal reasons.
const MAX_BYTES_KEY: &str = "metadata.cordon.request_body.max_bytes";

/// What the body phase read, for the audit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BodyRead {
    /// Bytes of the body read before the decision.
    pub bytes: u64,
    /// The policy saw a prefix of the body (`truncated_body`).
    pub truncated: bool,
}

/// The body as read for the policy.
pub(super) struct ReadBody {
    pub input: BodyInput,
    pub read: BodyRead,
    /// Bytes read that the proxy itself must send ahead of the rest (see the module docs).
    pub replay: Option<Bytes>,
    /// The share of [`BODY_BUDGET`] the bytes read hold.
    pub budget: Option<BudgetShare>,
}

/// Who forwards the body after the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyForwarder {
    /// Pingora's proxy: replays its retry buffer.
    Proxy,
    /// Cordon's relay: writes the bytes read itself.
    Relay,
}

/// Reads the body of `request` for the policy within `config`'s limits; `Err` is the refusal
/// (over the limit with `over_limit = "deny"`, a client that stops mid-body, a body that could
/// not be kept for forwarding).
pub(super) async fn read(
    session: &mut Session,
    config: &RequestBodyConfig,
    request: &RequestInput,
    forwarder: BodyForwarder,
    read_timeout: Duration,
) -> Result<ReadBody, Refusal> {
    let max_bytes = config.max_bytes;
    let over_limit = config.over_limit_for(&request.method, &request.path);
    // A declared length over the limit is refused before a byte is read. (With
    // `Transfer-Encoding` the length is not the framing: such bodies are counted as read.)
    let headers = &session.req_header().headers;
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .filter(|_| !headers.contains_key(http::header::TRANSFER_ENCODING))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if over_limit == OverLimit::Deny && declared.is_some_and(|n| n > max_bytes as u64) {
        return Err(too_large(max_bytes));
    }
    // The relay keeps its own copy of what is read: up to `max_bytes` (a `Content-Length` body
    // within it is read whole), the rest of a longer one streamed after the decision under
    // `truncate`. Pingora's path reads no more than its retry buffer holds.
    let limit = match forwarder {
        // One byte more than the limit, so that a chunked body of exactly `max_bytes` is seen
        // to end (its last chunk and its end come in separate reads).
        BodyForwarder::Relay => max_bytes + 1,
        BodyForwarder::Proxy => {
            session.enable_retry_buffering();
            max_bytes.min(REPLAY_LIMIT)
        }
    };
    if is_expect_continue(session) {
        // The client waits for this before it sends the body; the upstream is not asked (the
        // `Expect` is not forwarded, see `rewrite_request`).
        session
            .write_continue_response()
            .await
            .map_err(|e| client_failed(0, &e))?;
    }
    let mut buffer = BytesMut::new();
    let mut budget = None;
    let mut done = session.is_body_done();
    while !done && buffer.len() < limit {
        if forwarder == BodyForwarder::Proxy
            && declared.is_some_and(|total| may_end_past_replay(total, buffer.len()))
        {
            // The next read could both end the body and overflow Pingora's retry buffer,
            // which would leave nothing to forward the body with: decide on what is here.
            break;
        }
        let chunk = match pingora::time::timeout(read_timeout, session.read_request_body()).await {
            Ok(Ok(chunk)) => chunk,
            failed => {
                // The rest of the body may never come: the connection is not kept for another
                // request (its next bytes could be this body's).
                session.set_keepalive(None);
                return Err(match failed {
                    Ok(Err(e)) => client_failed(buffer.len(), &e),
                    _ => stalled(buffer.len(), read_timeout),
                });
            }
        };
        match chunk {
            Some(chunk) => {
                if !reserve(&mut budget, buffer.len() + chunk.len()) {
                    session.set_keepalive(None);
                    return Err(Refusal::new(
                        503,
                        RefusalClass::BodyTooLarge,
                        format!(
                            "the proxy holds {} MiB of request bodies for policies already, its \
                             limit: retry in a moment",
                            BODY_BUDGET / (1024 * 1024)
                        ),
                    ));
                }
                buffer.extend_from_slice(&chunk);
            }
            None => break,
        }
        done = session.is_body_done();
    }
    let done = done || session.is_body_done();
    let over = !done || buffer.len() > max_bytes;
    if over && over_limit == OverLimit::Deny {
        return Err(if buffer.len() > max_bytes || limit >= max_bytes {
            too_large(max_bytes)
        } else {
            // Pingora's path read all it can hold and the body goes on.
            Refusal::new(
                413,
                RefusalClass::BodyTooLarge,
                format!(
                    "the request body is larger than the {REPLAY_LIMIT} bytes the proxy can read \
                     for the policy on this request (sent over HTTP/2, or framed in a way only \
                     Pingora's path takes), below {MAX_BYTES_KEY} ({max_bytes}); set metadata.cordon.request_body.over_limit \
                     = \"truncate\" to decide on a prefix"
                ),
            )
        });
    }
    let input = BodyInput::parse(&buffer, !done, &BodyRequest::of(request), config.limits());
    let bytes = buffer.len() as u64;
    // The bytes themselves, not a copy, are kept to be sent.
    let buffer = buffer.freeze();
    let replay = match forwarder {
        BodyForwarder::Relay => Some(buffer),
        BodyForwarder::Proxy if !session.retry_buffer_truncated() => None,
        BodyForwarder::Proxy if done => {
            return Err(Refusal::new(
                413,
                RefusalClass::BodyTooLarge,
                format!(
                    "the request body ended {} bytes in, past the {REPLAY_LIMIT} bytes the proxy \
                     can hold to forward after reading it for the policy; refused rather than \
                     forwarded with bytes missing",
                    bytes
                ),
            ));
        }
        BodyForwarder::Proxy => Some(buffer),
    }
    .filter(|bytes| !bytes.is_empty());
    Ok(ReadBody {
        read: BodyRead {
            bytes,
            truncated: input.truncated,
        },
        input,
        budget: replay.as_ref().and(budget),
        replay,
    })
}

/// A body given whole rather than read from a client (the admin API's evaluate): the same
/// limit rule as [`read`] (over `max_bytes` with `over_limit = "deny"` is refused, otherwise
/// the policy sees a prefix).
pub(crate) fn given(
    config: &RequestBodyConfig,
    request: &RequestInput,
    bytes: &[u8],
) -> Result<BodyInput, Refusal> {
    let max_bytes = config.max_bytes;
    if bytes.len() > max_bytes
        && config.over_limit_for(&request.method, &request.path) == OverLimit::Deny
    {
        return Err(too_large(max_bytes));
    }
    Ok(BodyInput::parse(
        bytes,
        false,
        &BodyRequest::of(request),
        config.limits(),
    ))
}

/// Whether one more read of a body of `total` bytes, `read` of them read, could end the body
/// with more than [`REPLAY_LIMIT`] bytes read. A read returns at most `REPLAY_LIMIT` bytes
/// (pingora-core's HTTP/1 body buffer is the same 64 KiB, an HTTP/2 frame far less), so a read
/// cannot end a body with more than that still to come.
fn may_end_past_replay(total: u64, read: usize) -> bool {
    let remaining = total.saturating_sub(read as u64);
    total > REPLAY_LIMIT as u64 && remaining <= REPLAY_LIMIT as u64
}

fn is_expect_continue(session: &Session) -> bool {
    !session.is_http2()
        && session
            .req_header()
            .headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

fn too_large(max_bytes: usize) -> Refusal {
    Refusal::new(
        413,
        RefusalClass::BodyTooLarge,
        format!(
            "the request body is larger than the policy's limit of {max_bytes} bytes \
             ({MAX_BYTES_KEY}; raise it, or set over_limit = \"truncate\" to decide on a prefix)"
        ),
    )
}

fn client_failed(read: usize, e: &pingora::Error) -> Refusal {
    let status = if e.etype() == &pingora::ErrorType::ReadTimedout {
        408
    } else {
        400
    };
    let mut refusal = Refusal::new(
        status,
        RefusalClass::BadRequest,
        format!("the client stopped sending the request body after {read} bytes"),
    );
    refusal.logged_reason = Some(format!(
        "the client stopped sending the request body after {read} bytes: {e}"
    ));
    refusal
}

fn stalled(read: usize, timeout: Duration) -> Refusal {
    Refusal::new(
        408,
        RefusalClass::BadRequest,
        format!(
            "the client sent no more of the request body for {} ms after {read} bytes \
             (upstream.read_timeout_ms)",
            timeout.as_millis()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_of_the_budget_grows_with_the_body_and_is_given_back() {
        static SMALL: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);
        let mut one = None;
        assert!(reserve_from(&SMALL, &mut one, 1));
        assert!(reserve_from(&SMALL, &mut one, 3000));
        assert_eq!(SMALL.available_permits(), 1, "3 KiB held");
        let mut two = None;
        assert!(!reserve_from(&SMALL, &mut two, 2048), "only 1 KiB left");
        assert!(reserve_from(&SMALL, &mut two, 1024));
        drop(one);
        assert_eq!(SMALL.available_permits(), 3, "given back with the request");
    }

    #[test]
    fn stops_only_before_a_read_that_could_end_the_body_past_the_buffer() {
        let limit = REPLAY_LIMIT as u64;
        // A body the buffer holds whole: any read is safe.
        assert!(!may_end_past_replay(limit, 0));
        assert!(!may_end_past_replay(1000, 10));
        // More than a read's worth still to come: the next read cannot end the body.
        assert!(!may_end_past_replay(3 * limit, 0));
        assert!(!may_end_past_replay(limit + 2, 1));
        // At most a read's worth left of a body larger than the buffer.
        assert!(!may_end_past_replay(limit + 1, 0));
        assert!(may_end_past_replay(limit + 1, 1));
        assert!(may_end_past_replay(2 * limit, limit as usize));
    }
}

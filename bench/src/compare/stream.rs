//! Scenario 9: a streamed answer in the shape of a model API's (`POST /v1/messages` with
//! `"stream": true`, answered with server-sent events). Two figures, both against direct:
//! - time to first event: from the request leaving the client to the first event arriving, on
//!   a probe connection that asks for short answers back to back;
//! - event delay: from the upstream handing an event to its TLS stream to the client reading
//!   it, for every event of `connections` answers that each send one every [`INTERVAL`] for
//!   [`STREAM`]. The upstream stamps each event with the bench process's monotonic clock,
//!   which the client (in the same process) reads on arrival, so a proxy that holds events
//!   back shows here whatever it does with them meanwhile.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};

use super::pki::Pki;
use super::scenarios::LLM_HOST;
use super::upstream::{self, Upstream};
use crate::load::{LatencySummary, LoadReport, Route, open_tls};

/// How often a long answer sends an event.
pub(crate) const INTERVAL: Duration = Duration::from_millis(5);
/// How long a long answer lasts.
pub(crate) const STREAM: Duration = Duration::from_secs(10);
/// Events in a probe's short answer.
const PROBE_EVENTS: u64 = 3;
const PROBE_INTERVAL: Duration = Duration::from_millis(1);

/// The request body an SDK sends (the upstream does not read what it says).
const REQUEST: &str = r#"{"model":"bench-model","max_tokens":1024,"stream":true,"messages":[{"role":"user","content":"Write a haiku about proxies."}]}"#;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since the process's epoch: the shared clock of upstream and client.
fn now_ns() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Starts the model API: `POST /v1/messages?events=N&interval_us=U` answers with N events, U
/// microseconds apart, the first at once.
pub(crate) async fn start(pki: &Pki) -> anyhow::Result<Upstream> {
    epoch();
    upstream::serve(pki, |request: Request<Incoming>| async move {
        let query = request.uri().query().unwrap_or("").to_owned();
        let param = |name: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .and_then(|v| v.parse::<u64>().ok())
        };
        let (events, interval) = (
            param("events").unwrap_or(1),
            param("interval_us").unwrap_or(0),
        );
        // An SDK's request is read whole before the answer starts, as the real APIs do.
        if request.into_body().collect().await.is_err() {
            return upstream::fixed(400, "bad body\n");
        }
        let events = futures_util::stream::unfold(0u64, move |n| async move {
            if n >= events {
                return None;
            }
            if n > 0 && interval > 0 {
                tokio::time::sleep(Duration::from_micros(interval)).await;
            }
            Some((Ok::<_, std::io::Error>(Frame::data(event(n))), n + 1))
        });
        let mut response = Response::new(BodyExt::boxed(StreamBody::new(events)));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/event-stream"),
        );
        response.headers_mut().insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-cache"),
        );
        response
    })
    .await
}

/// One event as Anthropic's API sends a text delta, stamped last thing before it is sent.
fn event(n: u64) -> Bytes {
    Bytes::from(format!(
        "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"token {n} of the answer \"}},\"t\":{}}}\n\n",
        now_ns()
    ))
}

/// What one run measured.
#[derive(Debug)]
pub(crate) struct StreamReport {
    /// Time to first event on the probe connection, microseconds.
    pub first_event_us: Histogram<u64>,
    /// Upstream stamp to client arrival, every event of the long answers, microseconds.
    pub event_delay_us: Histogram<u64>,
    pub answers: u64,
    pub events: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    pub errors: Vec<String>,
}

impl StreamReport {
    /// As a load report: answers as requests, the time to first event as the latency.
    pub(crate) fn load(&self) -> LoadReport {
        let seconds = self.elapsed.as_secs_f64().max(f64::EPSILON);
        LoadReport {
            ok: self.answers,
            errors: self.errors.len() as u64,
            error_samples: self.errors.iter().take(5).cloned().collect(),
            statuses: Default::default(),
            connections: 0,
            body_bytes: self.bytes,
            elapsed_s: seconds,
            requests_per_s: self.answers as f64 / seconds,
            connections_per_s: 0.0,
            body_bytes_per_s: self.bytes as f64 / seconds,
            latency: LatencySummary::from_histogram(&self.first_event_us),
        }
    }
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 100_000_000, 3).context("histogram")
}

/// `connections` long answers at once, and the probe asking for short ones until they end.
pub(crate) async fn run(
    route: Route,
    port: u16,
    tls: &std::sync::Arc<rustls::ClientConfig>,
    connections: usize,
) -> anyhow::Result<StreamReport> {
    let started = Instant::now();
    let long_path = format!(
        "/v1/messages?events={}&interval_us={}",
        STREAM.as_micros() / INTERVAL.as_micros(),
        INTERVAL.as_micros()
    );
    let mut long = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (tls, path) = (tls.clone(), long_path.clone());
        long.spawn(async move {
            let mut sender = connect(route, port, &tls).await?;
            answer(&mut sender, port, &path).await
        });
    }
    let probe_path = format!(
        "/v1/messages?events={PROBE_EVENTS}&interval_us={}",
        PROBE_INTERVAL.as_micros()
    );
    let mut report = StreamReport {
        first_event_us: histogram()?,
        event_delay_us: histogram()?,
        answers: 0,
        events: 0,
        bytes: 0,
        elapsed: Duration::ZERO,
        errors: Vec::new(),
    };
    let mut probe = connect(route, port, tls).await?;
    // Give the long answers a moment to start, so every probe runs beside them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    while started.elapsed() + Duration::from_millis(300) < STREAM {
        match answer(&mut probe, port, &probe_path).await {
            Ok(a) => {
                report
                    .first_event_us
                    .saturating_record(a.first_event_us.max(1));
                report.answers += 1;
                report.bytes += a.bytes;
            }
            Err(e) => {
                report.errors.push(format!("{e:#}"));
                probe = connect(route, port, tls).await?;
            }
        }
    }
    while let Some(done) = long.join_next().await {
        match done.context("a stream task panicked")? {
            Ok(a) => {
                report
                    .event_delay_us
                    .add(&a.delays)
                    .context("merging histograms")?;
                report.answers += 1;
                report.events += a.events;
                report.bytes += a.bytes;
            }
            Err(e) => report.errors.push(format!("{e:#}")),
        }
    }
    report.elapsed = started.elapsed();
    if report.events == 0 {
        bail!("no event arrived: {:?}", report.errors);
    }
    Ok(report)
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(
    route: Route,
    port: u16,
    tls: &std::sync::Arc<rustls::ClientConfig>,
) -> anyhow::Result<Sender> {
    let stream = open_tls(route, LLM_HOST, port, tls).await?;
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .context("HTTP/1.1")?;
    tokio::spawn(connection);
    Ok(sender)
}

struct Answer {
    first_event_us: u64,
    delays: Histogram<u64>,
    events: u64,
    bytes: u64,
}

/// One streamed answer: sends the request, reads every event as it comes.
async fn answer(sender: &mut Sender, port: u16, path: &str) -> anyhow::Result<Answer> {
    let request = Request::post(path)
        .header(http::header::HOST, format!("{LLM_HOST}:{port}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, "text/event-stream")
        .header("anthropic-version", "2023-06-01")
        .body(Full::new(Bytes::from_static(REQUEST.as_bytes())))
        .context("building the request")?;
    sender.ready().await.context("connection closed")?;
    let sent = now_ns();
    let response = sender.send_request(request).await.context("request")?;
    if response.status() != http::StatusCode::OK {
        bail!("status {}", response.status());
    }
    let mut body = response.into_body();
    let mut pending = BytesMut::new();
    let mut result = Answer {
        first_event_us: 0,
        delays: histogram()?,
        events: 0,
        bytes: 0,
    };
    while let Some(frame) = body.frame().await {
        let frame = frame.context("reading the stream")?;
        let arrived = now_ns();
        let Some(data) = frame.data_ref() else {
            continue;
        };
        result.bytes += data.len() as u64;
        pending.extend_from_slice(data);
        while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
            let event = pending.split_to(end + 2);
            let stamp = stamp(&event).context("an event without its stamp")?;
            if result.events == 0 {
                result.first_event_us = arrived.saturating_sub(sent) / 1000;
            }
            result
                .delays
                .saturating_record((arrived.saturating_sub(stamp) / 1000).max(1));
            result.events += 1;
        }
    }
    Ok(result)
}

/// The `"t":<ns>` an event carries.
fn stamp(event: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(event).ok()?;
    let at = text.rfind("\"t\":")? + 4;
    let digits: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn events_carry_a_stamp_the_client_reads_back() {
        let before = now_ns();
        let e = event(7);
        let text = std::str::from_utf8(&e).unwrap();
        assert!(text.starts_with("event: content_block_delta\ndata: {"));
        assert!(text.ends_with("}\n\n"));
        assert!(stamp(&e).unwrap() >= before);
    }
}

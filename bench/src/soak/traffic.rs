//! The soak's traffic: for every session's source address, one paced worker per kind of
//! request, together at the target rate. Workers reuse the load generator's connections
//! ([`crate::load::Sender`]) from their session's address; the kinds are what agents send
//! (docs/BENCHMARKS.md "Soak").

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use http::HeaderValue;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::MissedTickBehavior;

use crate::load::{LatencySummary, LoadConfig, Sender, open_tls_from};

/// A request that takes longer is abandoned and counted as `timeout`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Body bytes a disconnecting client reads before it closes (of a 10 MiB answer).
const DISCONNECT_AFTER_BYTES: usize = 64 * 1024;
/// The POSTs' body: about a model API call's JSON, as in scenario 8.
const POST_BYTES: usize = 4096;

/// What one request is. The agent-egress policy allows the first four kinds' requests (with
/// the `github` credential injected) and refuses `Denied` with a request-stage 403.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// GET on a kept-alive connection.
    KeepAliveGet,
    /// POST with a 4 KiB body on a kept-alive connection (a write to an allowed organisation).
    Post,
    /// GET carrying the session's placeholder for the `github` secret, swapped by the proxy.
    Placeholder,
    /// POST to an organisation the policy does not allow writing to: 403 expected.
    Denied,
    /// CONNECT, TLS handshake with a minted leaf, one GET, close.
    NewConnection,
    /// A new connection for a 10 MiB GET, closed after 64 KiB of the body.
    Disconnect,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::KeepAliveGet,
        Kind::Post,
        Kind::Placeholder,
        Kind::Denied,
        Kind::NewConnection,
        Kind::Disconnect,
    ];

    /// The share of the target rate: kept-alive reads and writes dominate agent traffic;
    /// handshakes are rarer and dearer.
    pub fn share(self) -> f64 {
        match self {
            Kind::KeepAliveGet => 0.53,
            Kind::Post => 0.20,
            Kind::Placeholder => 0.10,
            Kind::Denied => 0.10,
            Kind::NewConnection => 0.05,
            Kind::Disconnect => 0.02,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::KeepAliveGet => "keep_alive_get",
            Kind::Post => "post_4k",
            Kind::Placeholder => "placeholder",
            Kind::Denied => "denied",
            Kind::NewConnection => "new_connection",
            Kind::Disconnect => "disconnect",
        }
    }

    fn expected_status(self) -> u16 {
        match self {
            Kind::Denied => 403,
            _ => 200,
        }
    }

    /// The request, on top of the base config (route, host, port, TLS).
    fn config(self, base: &LoadConfig, source: IpAddr) -> LoadConfig {
        let mut c = base.clone();
        c.source = Some(source);
        match self {
            Kind::KeepAliveGet | Kind::Placeholder | Kind::NewConnection => {
                c.path = "/repos/rust-lang/rust".into();
            }
            Kind::Post | Kind::Denied => {
                c.method = http::Method::POST;
                c.path = match self {
                    Kind::Post => "/repos/acme/widgets/issues".into(),
                    _ => "/repos/rust-lang/rust/issues".into(),
                };
                c.body = bytes::Bytes::from(vec![b'x'; POST_BYTES]);
                c.headers.push((
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ));
            }
            Kind::Disconnect => c.path = "/10m".into(),
        }
        c
    }
}

/// One session's address and what churn does to it.
#[derive(Debug)]
pub(crate) struct Source {
    pub address: IpAddr,
    /// The id of the session registered on this address now.
    pub session: RwLock<String>,
    /// False while the session is deregistered.
    pub registered: AtomicBool,
    /// Bumped on every deregistration and registration: a request that saw it change may
    /// have been refused for churn, not for a fault.
    pub generation: AtomicU64,
    /// The live session's placeholder for `github`.
    pub placeholder: RwLock<String>,
}

/// Counters the workers share, read by the sampler while the run goes on.
#[derive(Debug)]
pub(crate) struct Counters {
    pub done: AtomicU64,
    pub unexpected: AtomicU64,
    kinds: BTreeMap<Kind, Mutex<KindTally>>,
}

#[derive(Debug)]
struct KindTally {
    sent: u64,
    ok: u64,
    errors: BTreeMap<String, u64>,
    samples: Vec<String>,
    connections: u64,
    latency_us: Histogram<u64>,
}

/// What one kind of request did over the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KindReport {
    pub kind: Kind,
    pub sent: u64,
    /// Answered with the expected status (403 for `denied`, 200 otherwise).
    pub ok: u64,
    pub connections: u64,
    /// Failures by class; `churn` counts requests whose session was deregistered or
    /// re-registered while they ran (expected), every other class is unexpected.
    pub errors: BTreeMap<String, u64>,
    pub error_samples: Vec<String>,
    /// Of requests answered as expected.
    pub latency: LatencySummary,
}

impl Counters {
    pub(crate) fn new() -> anyhow::Result<Self> {
        let mut kinds = BTreeMap::new();
        for kind in Kind::ALL {
            kinds.insert(
                kind,
                Mutex::new(KindTally {
                    sent: 0,
                    ok: 0,
                    errors: BTreeMap::new(),
                    samples: Vec::new(),
                    connections: 0,
                    latency_us: Histogram::new_with_bounds(1, 100_000_000, 3)
                        .context("histogram")?,
                }),
            );
        }
        Ok(Self {
            done: AtomicU64::new(0),
            unexpected: AtomicU64::new(0),
            kinds,
        })
    }

    fn with<T>(&self, kind: Kind, f: impl FnOnce(&mut KindTally) -> T) -> Option<T> {
        let mut tally = self.kinds.get(&kind)?.lock().ok()?;
        Some(f(&mut tally))
    }

    pub(crate) fn report(&self) -> Vec<KindReport> {
        Kind::ALL
            .iter()
            .filter_map(|&kind| {
                self.with(kind, |t| KindReport {
                    kind,
                    sent: t.sent,
                    ok: t.ok,
                    connections: t.connections,
                    errors: t.errors.clone(),
                    error_samples: t.samples.clone(),
                    latency: LatencySummary::from_histogram(&t.latency_us),
                })
            })
            .collect()
    }
}

/// Everything the workers share.
#[derive(Debug)]
pub(crate) struct Traffic {
    pub base: LoadConfig,
    pub sources: Vec<Arc<Source>>,
    pub counters: Counters,
    pub deadline: Instant,
}

/// Runs every worker until the deadline; returns once all have stopped and dropped their
/// connections.
pub(crate) async fn run(traffic: Arc<Traffic>, rate: f64) -> anyhow::Result<()> {
    let mut workers = tokio::task::JoinSet::new();
    let count = traffic.sources.len();
    for (index, source) in traffic.sources.iter().enumerate() {
        for kind in Kind::ALL {
            let period = Duration::from_secs_f64(count as f64 / (rate * kind.share()));
            // Workers of one kind start spread over one period, not all on the same tick.
            let offset = period.mul_f64(index as f64 / count as f64);
            let (traffic, source) = (traffic.clone(), source.clone());
            workers.spawn(async move { worker(traffic, source, kind, period, offset).await });
        }
    }
    while let Some(done) = workers.join_next().await {
        done.context("a soak worker panicked")?;
    }
    Ok(())
}

async fn worker(
    traffic: Arc<Traffic>,
    source: Arc<Source>,
    kind: Kind,
    period: Duration,
    offset: Duration,
) {
    let mut config = kind.config(&traffic.base, source.address);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
    // Behind schedule (the machine is saturated), skip ticks: the achieved rate is what it
    // is, not a burst that catches up.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut connection: Option<Sender> = None;
    let mut connection_generation = source.generation.load(Ordering::Acquire);
    loop {
        let deadline = tokio::time::Instant::from(traffic.deadline);
        // (A timeout polls its future first: a missed tick would be ready past the deadline.)
        if tokio::time::timeout_at(deadline, ticker.tick())
            .await
            .is_err()
            || Instant::now() >= traffic.deadline
        {
            break;
        }
        // A replaced session is a sandbox that went away: its connections went with it. (The
        // proxy keeps serving a connection under the session it was opened in, so without this
        // an old connection would carry the new session's placeholder and be refused.)
        let current = source.generation.load(Ordering::Acquire);
        if current != connection_generation {
            connection = None;
            connection_generation = current;
        }
        if kind == Kind::Placeholder {
            let placeholder = source
                .placeholder
                .read()
                .map(|p| p.clone())
                .unwrap_or_default();
            config.headers = HeaderValue::from_str(&format!("Bearer {placeholder}"))
                .map(|v| vec![(http::header::AUTHORIZATION, v)])
                .unwrap_or_default();
        }
        let generation = source.generation.load(Ordering::Acquire);
        let registered = source.registered.load(Ordering::Acquire);
        let started = Instant::now();
        let outcome = tokio::time::timeout(
            REQUEST_TIMEOUT,
            one(kind, &config, &traffic.base.host, &mut connection),
        )
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")));
        let churned = !registered
            || !source.registered.load(Ordering::Acquire)
            || source.generation.load(Ordering::Acquire) != generation;
        let elapsed = started.elapsed();
        let class = match &outcome {
            Ok((status, _)) if *status == kind.expected_status() => None,
            _ if churned => Some(("churn".to_owned(), None)),
            Ok((status, _)) => Some((format!("status_{status}"), None)),
            Err(e) => Some((classify(e).to_owned(), Some(format!("{e:#}")))),
        };
        if outcome.is_err() {
            connection = None;
        }
        traffic.counters.done.fetch_add(1, Ordering::Relaxed);
        if class.as_ref().is_some_and(|(c, _)| c != "churn") {
            traffic.counters.unexpected.fetch_add(1, Ordering::Relaxed);
        }
        traffic.counters.with(kind, |t| {
            t.sent += 1;
            match class {
                None => {
                    t.ok += 1;
                    let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
                    t.latency_us.saturating_record(us.max(1));
                }
                Some((class, sample)) => {
                    *t.errors.entry(class).or_default() += 1;
                    if let Some(sample) = sample
                        && t.samples.len() < 5
                        && !t.samples.contains(&sample)
                    {
                        t.samples.push(sample);
                    }
                }
            }
        });
        if let Ok((_, true)) = outcome {
            traffic.counters.with(kind, |t| t.connections += 1);
        }
    }
    // The connection is dropped here, before the run is judged.
    drop(connection);
}

/// One request of `kind`; the status and whether a new connection was opened for it.
async fn one(
    kind: Kind,
    config: &LoadConfig,
    host: &str,
    connection: &mut Option<Sender>,
) -> anyhow::Result<(u16, bool)> {
    match kind {
        Kind::Disconnect => disconnect_mid_response(config, host)
            .await
            .map(|s| (s, true)),
        Kind::NewConnection => {
            let mut sender = Sender::connect(config, host).await?;
            let (status, _) = sender.get(config, host).await?;
            Ok((status, true))
        }
        _ => {
            // The proxy closes a connection after refusing a request on it, as a client
            // honouring `connection: close` would see: open the next one.
            if connection.as_ref().is_some_and(Sender::is_closed) {
                *connection = None;
            }
            let opened = connection.is_none();
            let sender = match connection {
                Some(sender) => sender,
                None => connection.insert(Sender::connect(config, host).await?),
            };
            let (status, _) = sender.get(config, host).await?;
            Ok((status, opened))
        }
    }
}

/// Opens a connection, asks for a large body, reads part of it and closes: the proxy must
/// release both sides of the request it was relaying.
async fn disconnect_mid_response(config: &LoadConfig, host: &str) -> anyhow::Result<u16> {
    let mut tls =
        open_tls_from(config.source, config.route, host, config.port, &config.tls).await?;
    let request = format!(
        "GET {} HTTP/1.1\r\nhost: {host}:{}\r\n\r\n",
        config.path, config.port
    );
    tls.write_all(request.as_bytes())
        .await
        .context("sending the request")?;
    let mut read = Vec::with_capacity(DISCONNECT_AFTER_BYTES + 16 * 1024);
    let mut buf = vec![0u8; 16 * 1024];
    while read.len() < DISCONNECT_AFTER_BYTES {
        let n = tls.read(&mut buf).await.context("reading the answer")?;
        if n == 0 {
            anyhow::bail!("the proxy closed the connection early");
        }
        read.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&read[..read.len().min(64)]);
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    // Dropped without a close_notify or a FIN-after-drain: a client that went away.
    drop(tls);
    Ok(status)
}

/// An error's class, from where in the request it happened.
fn classify(error: &anyhow::Error) -> &'static str {
    let text = format!("{error:#}");
    if text.contains("timed out") {
        "timeout"
    } else if text.contains("CONNECT") && text.contains("refused") {
        "connect_refused"
    } else if text.contains("connecting to") || text.contains("CONNECT") {
        "connect"
    } else if text.contains("TLS handshake") {
        "tls"
    } else {
        "http"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_to_the_whole_rate() {
        let total: f64 = Kind::ALL.iter().map(|k| k.share()).sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
    }

    #[test]
    fn refused_connects_are_told_from_other_failures() {
        let refused = anyhow::anyhow!("CONNECT api.github.com:443 refused: HTTP/1.1 403");
        assert_eq!(classify(&refused), "connect_refused");
        let reset = anyhow::anyhow!("reset").context("TLS handshake for api.github.com");
        assert_eq!(classify(&reset), "tls");
        assert_eq!(classify(&anyhow::anyhow!("timed out")), "timeout");
    }
}

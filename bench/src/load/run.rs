//! The workers: each owns one connection (keep-alive) or opens one per request, sends GETs
//! until the budget is spent, and tallies statuses, bytes and latency.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use tokio::task::JoinSet;

use super::budget::Budget;
use super::config::{ConnectionReuse, LoadConfig};
use super::report::{LatencySummary, LoadReport};
use super::sender::Sender;

/// Error messages kept per run: enough to say what went wrong, not one per failure.
const ERROR_SAMPLES: usize = 5;
/// After a failed connection a keep-alive worker waits this long before the next, so a
/// refusing server is not hammered in a tight loop.
const RECONNECT_PAUSE: Duration = Duration::from_millis(20);

/// Runs the load described by `config` and reports what happened.
pub async fn run(config: &LoadConfig) -> anyhow::Result<LoadReport> {
    config.validate()?;
    let start = Instant::now();
    let shared = Arc::new(Shared {
        config: config.clone(),
        budget: Budget::new(start + config.duration, config.requests),
        next_host: AtomicU64::new(0),
    });
    let mut workers = JoinSet::new();
    for _ in 0..config.connections {
        let shared = shared.clone();
        workers.spawn(async move {
            match shared.config.reuse {
                ConnectionReuse::KeepAlive => keep_alive_worker(shared).await,
                ConnectionReuse::PerRequest => per_request_worker(shared).await,
            }
        });
    }
    let mut total = Tally::new()?;
    while let Some(tally) = workers.join_next().await {
        total.merge(tally.context("a load worker panicked")??);
    }
    Ok(total.report(start.elapsed()))
}

#[derive(Debug)]
struct Shared {
    config: LoadConfig,
    budget: Budget,
    next_host: AtomicU64,
}

impl Shared {
    fn next_host(&self) -> String {
        self.config
            .host_for(self.next_host.fetch_add(1, Ordering::Relaxed))
    }
}

async fn per_request_worker(shared: Arc<Shared>) -> anyhow::Result<Tally> {
    let mut tally = Tally::new()?;
    while shared.budget.take() {
        let started = Instant::now();
        let host = shared.next_host();
        let outcome = async {
            let mut sender = Sender::connect(&shared.config, &host).await?;
            tally.connections += 1;
            sender.get(&shared.config, &host).await
        }
        .await;
        tally.record(outcome, started);
    }
    Ok(tally)
}

async fn keep_alive_worker(shared: Arc<Shared>) -> anyhow::Result<Tally> {
    let mut tally = Tally::new()?;
    while !shared.budget.spent() {
        let host = shared.next_host();
        let sender = match Sender::connect(&shared.config, &host).await {
            Ok(sender) => sender,
            Err(e) => {
                // A failed connection is charged as a failed request, so a run with a request
                // count ends even when no connection can be made.
                if !shared.budget.take() {
                    break;
                }
                tally.record(Err(e), Instant::now());
                tokio::time::sleep(RECONNECT_PAUSE).await;
                continue;
            }
        };
        tally.connections += 1;
        // One task per stream (one for HTTP/1.1); the connection is reopened once they end
        // with budget left, which happens only after an error.
        let mut streams = JoinSet::new();
        for _ in 0..shared.config.streams {
            let (shared, mut sender, host) = (shared.clone(), sender.clone(), host.clone());
            streams.spawn(async move {
                let mut tally = Tally::new()?;
                while shared.budget.take() {
                    let started = Instant::now();
                    let outcome = sender.get(&shared.config, &host).await;
                    let failed = outcome.is_err();
                    tally.record(outcome, started);
                    if failed {
                        break;
                    }
                }
                anyhow::Ok(tally)
            });
        }
        while let Some(stream) = streams.join_next().await {
            tally.merge(stream.context("a load stream panicked")??);
        }
    }
    Ok(tally)
}

#[derive(Debug)]
struct Tally {
    latency_us: Histogram<u64>,
    ok: u64,
    errors: u64,
    error_samples: Vec<String>,
    statuses: BTreeMap<u16, u64>,
    connections: u64,
    body_bytes: u64,
}

impl Tally {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            // 1 us to 100 s at 3 significant digits.
            latency_us: Histogram::new_with_bounds(1, 100_000_000, 3).context("histogram")?,
            ok: 0,
            errors: 0,
            error_samples: Vec::new(),
            statuses: BTreeMap::new(),
            connections: 0,
            body_bytes: 0,
        })
    }

    fn record(&mut self, outcome: anyhow::Result<(u16, u64)>, started: Instant) {
        match outcome {
            Ok((status, bytes)) => {
                *self.statuses.entry(status).or_default() += 1;
                self.body_bytes += bytes;
                if (200..300).contains(&status) {
                    self.ok += 1;
                    let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                    self.latency_us.saturating_record(us.max(1));
                } else {
                    self.error(format!("status {status}"));
                }
            }
            Err(e) => self.error(format!("{e:#}")),
        }
    }

    fn error(&mut self, message: String) {
        self.errors += 1;
        if self.error_samples.len() < ERROR_SAMPLES && !self.error_samples.contains(&message) {
            self.error_samples.push(message);
        }
    }

    fn merge(&mut self, other: Tally) {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
        self.ok += other.ok;
        self.errors += other.errors;
        for message in other.error_samples {
            if self.error_samples.len() < ERROR_SAMPLES && !self.error_samples.contains(&message) {
                self.error_samples.push(message);
            }
        }
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        self.connections += other.connections;
        self.body_bytes += other.body_bytes;
    }

    fn report(self, elapsed: Duration) -> LoadReport {
        let seconds = elapsed.as_secs_f64().max(f64::EPSILON);
        LoadReport {
            ok: self.ok,
            errors: self.errors,
            error_samples: self.error_samples,
            statuses: self.statuses,
            connections: self.connections,
            body_bytes: self.body_bytes,
            elapsed_s: seconds,
            requests_per_s: self.ok as f64 / seconds,
            connections_per_s: self.connections as f64 / seconds,
            body_bytes_per_s: self.body_bytes as f64 / seconds,
            latency: LatencySummary::from_histogram(&self.latency_us),
        }
    }
}

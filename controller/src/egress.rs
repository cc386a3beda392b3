//! Egress decisions in the controller: the proxy's audit log, followed and stored in SQLite
//! (`crate::store::egress`) for the dashboard, with live updates and retention.
//!
//! The dashboard shows a session's decisions within a second of the request and pages through
//! 100k of them in well under 100 ms; scanning the audit log per page view can do neither, so
//! the controller keeps an indexed copy. The audit log stays the record of truth: this copy is
//! pruned (by age and row count) and may miss lines an operator's rotation destroyed before
//! they were read. It does not link the proxy: `record.rs` reads docs/AUDIT.md's schema itself.
//!
//! The file is polled (every [`DEFAULT_POLL_INTERVAL`]) rather than watched with inotify: the
//! proxy already batches its writes (`[audit] flush_interval_ms`), an idle poll costs two
//! `stat`s and a 128-byte read, rotation and truncation are recognised by comparing the file's
//! identity and first bytes either way, and polling needs no new dependency and works on any
//! filesystem the log may sit on.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use crate::store::egress::InsertedEgress;
use crate::store::{Store, StoreError};

mod follow;
mod metrics;
mod record;
mod subscription;

pub use follow::FollowError;
pub use metrics::EgressMetrics;
pub use subscription::EgressSubscription;

use follow::Follower;
use record::MalformedLine;

/// How often the audit file is checked for new lines. With the proxy's 20 ms flush interval a
/// decision is stored about a quarter of a second after its request ends.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Decisions older than this are deleted (and not stored when read late).
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// At most this many decisions are kept: about 0.4 GiB of database at the ~200 bytes a row of
/// short reasons, more with long ones.
pub const DEFAULT_MAX_ROWS: u64 = 2_000_000;
/// How often retention runs.
pub const DEFAULT_PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// Rows deleted per retention transaction: short enough (tens of milliseconds) that the
/// webhook receiver's writes never wait long for SQLite's lock.
const PRUNE_CHUNK: u32 = 5_000;

/// Malformed lines and failures are logged at most this often (each time with a count): a
/// broken writer must not flood the controller's log.
const LOG_INTERVAL: Duration = Duration::from_secs(60);

/// What the ingester follows and keeps.
#[derive(Debug, Clone)]
pub struct EgressIngestConfig {
    /// The proxy's `[audit] path` (default `<state_dir>/audit.log`); a `"-"` (standard output)
    /// proxy has no file to follow, so the caller does not start an ingester for it.
    pub audit_path: PathBuf,
    pub max_age: Duration,
    pub max_rows: u64,
    pub poll_interval: Duration,
    pub prune_interval: Duration,
}

impl EgressIngestConfig {
    /// Following `audit_path`, with the default retention and intervals.
    pub fn new(audit_path: PathBuf) -> Self {
        Self {
            audit_path,
            max_age: DEFAULT_MAX_AGE,
            max_rows: DEFAULT_MAX_ROWS,
            poll_interval: DEFAULT_POLL_INTERVAL,
            prune_interval: DEFAULT_PRUNE_INTERVAL,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Follow(#[from] FollowError),
    #[error("storing egress decisions: {0}")]
    Store(#[from] StoreError),
}

/// The running ingester: where to subscribe to its batches, and its metrics.
#[derive(Debug, Clone)]
pub struct EgressIngester {
    updates: broadcast::Sender<Arc<InsertedEgress>>,
    metrics: EgressMetrics,
}

impl EgressIngester {
    /// Starts following `config.audit_path` into `store` (a store of its own is best: its
    /// writes then never queue behind the dashboard's reads on one connection). Call it within
    /// the tokio runtime; it runs for the runtime's life, logging failures and retrying them
    /// at the next poll.
    pub fn spawn(config: EgressIngestConfig, store: Arc<Store>, metrics: EgressMetrics) -> Self {
        let (updates, _) = broadcast::channel(subscription::CAPACITY);
        let interval = config.poll_interval;
        let worker = Ingester::new(config, store, updates.clone(), metrics.clone());
        tokio::spawn(run(worker, interval));
        Self { updates, metrics }
    }

    /// Live updates from now on.
    pub fn subscribe(&self) -> EgressSubscription {
        EgressSubscription::new(self.updates.subscribe())
    }

    pub fn metrics(&self) -> &EgressMetrics {
        &self.metrics
    }
}

/// Polls, stores, prunes, in a blocking thread (file reads and SQLite commits block), and
/// sleeps only when there was nothing more to do.
async fn run(mut worker: Ingester, interval: Duration) {
    loop {
        let done = tokio::task::spawn_blocking(move || {
            let again = worker.tick();
            (worker, again)
        })
        .await;
        let again;
        (worker, again) = match done {
            Ok(done) => done,
            Err(e) => {
                tracing::error!(error = %e, "the egress ingester stopped");
                return;
            }
        };
        if !again {
            tokio::time::sleep(interval).await;
        }
    }
}

/// A message logged at most once per [`LOG_INTERVAL`], with how often it happened.
#[derive(Debug, Default)]
struct Throttle {
    unlogged: u64,
    last: Option<Instant>,
}

impl Throttle {
    /// Counts `n` occurrences; `Some(count since the last log)` when it is time to log.
    fn note(&mut self, n: u64) -> Option<u64> {
        self.unlogged += n;
        if self.unlogged == 0 || self.last.is_some_and(|t| t.elapsed() < LOG_INTERVAL) {
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// The ingester's state, moved into a blocking thread for each tick.
struct Ingester {
    config: EgressIngestConfig,
    store: Arc<Store>,
    /// Made at the first poll, from the stored position.
    follower: Option<Follower>,
    updates: broadcast::Sender<Arc<InsertedEgress>>,
    metrics: EgressMetrics,
    malformed: Throttle,
    /// Why the latest malformed line was skipped, for the next log line.
    malformed_reason: Option<MalformedLine>,
    failures: Throttle,
    next_prune: Instant,
    pruning: bool,
    #[cfg(test)]
    max_read: Option<usize>,
}

fn now_ms() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
        .unwrap_or(i64::MAX)
}

impl Ingester {
    fn new(
        config: EgressIngestConfig,
        store: Arc<Store>,
        updates: broadcast::Sender<Arc<InsertedEgress>>,
        metrics: EgressMetrics,
    ) -> Self {
        Self {
            config,
            store,
            follower: None,
            updates,
            metrics,
            malformed: Throttle::default(),
            malformed_reason: None,
            failures: Throttle::default(),
            next_prune: Instant::now(),
            pruning: false,
            #[cfg(test)]
            max_read: None,
        }
    }

    /// Decisions older than this (Unix milliseconds) are not kept.
    fn cutoff(&self, now_ms: i64) -> i64 {
        let max_age = i64::try_from(self.config.max_age.as_millis()).unwrap_or(i64::MAX);
        now_ms.saturating_sub(max_age)
    }

    /// One poll and one retention chunk; whether there is more to do at once.
    fn tick(&mut self) -> bool {
        let more = self.poll().unwrap_or_else(|e| {
            if let Some(times) = self.failures.note(1) {
                tracing::error!(error = %e, times, "cannot ingest the proxy's audit log; retrying");
            }
            false
        });
        let pruning = self.prune_step().unwrap_or_else(|e| {
            if let Some(times) = self.failures.note(1) {
                tracing::error!(error = %e, times, "cannot prune egress decisions; retrying");
            }
            false
        });
        more || pruning
    }

    /// Reads what the audit file gained and stores it, with the new position, in one
    /// transaction; whether more can be read at once.
    fn poll(&mut self) -> Result<bool, IngestError> {
        let now = now_ms();
        let cutoff = self.cutoff(now);
        let follower = match &mut self.follower {
            Some(follower) => follower,
            None => {
                let saved = self.store.audit_position(&self.config.audit_path)?;
                let follower = Follower::new(self.config.audit_path.clone(), saved);
                #[cfg(test)]
                let follower = match self.max_read {
                    Some(max) => follower.with_max_read(max),
                    None => follower,
                };
                self.follower.insert(follower)
            }
        };
        let Some(step) = follower.read()? else {
            return Ok(false);
        };
        let mut records = Vec::new();
        let mut malformed = step.dropped;
        if step.dropped > 0 {
            self.malformed_reason = Some(MalformedLine::Cut);
        }
        for line in step.lines.split(|b| *b == b'\n') {
            if line.trim_ascii().is_empty() {
                continue;
            }
            match record::parse(line) {
                // Read late (a backlog, or a first start on an old log): retention would
                // delete it at once.
                Ok(Some(record)) if record.time_ms < cutoff => {}
                Ok(Some(record)) => records.push(record),
                Ok(None) => {}
                Err(why) => {
                    malformed += 1;
                    self.malformed_reason = Some(why);
                }
            }
        }
        let moved = follower.position() != Some(&step.next);
        let inserted = if records.is_empty() && !moved {
            None
        } else {
            self.store
                .insert_egress(&self.config.audit_path, &records, &step.next)?
        };
        follower.commit(&step);
        self.metrics.records_ingested.inc_by(records.len() as u64);
        self.metrics.malformed_lines.inc_by(malformed);
        if let Some(newest) = records.last() {
            self.metrics
                .ingest_lag
                .set((now - newest.time_ms).max(0) as f64 / 1000.0);
        }
        if let Some(lines) = self.malformed.note(malformed) {
            tracing::warn!(
                path = %self.config.audit_path.display(),
                lines,
                reason = %self.malformed_reason.map_or_else(String::new, |r| r.to_string()),
                "skipped audit log lines that are not records (their content is not logged)"
            );
        }
        if let Some(batch) = inserted {
            // No receiver (no page open) is not an error.
            let _ = self.updates.send(Arc::new(batch));
        }
        Ok(step.more)
    }

    /// Starts retention every `prune_interval` and deletes one chunk per call until done;
    /// whether more is left to delete.
    fn prune_step(&mut self) -> Result<bool, StoreError> {
        if !self.pruning {
            if Instant::now() < self.next_prune {
                return Ok(false);
            }
            self.pruning = true;
            self.next_prune = Instant::now() + self.config.prune_interval;
            // The tool calls' images (the timeline shows them with these decisions) go at the
            // same age; they are few per session, so one statement.
            if let Err(e) = self.store.prune_tool_images(self.cutoff(now_ms())) {
                tracing::warn!(error = %e, "pruning the tool calls' images");
            }
        }
        let cutoff = self.cutoff(now_ms());
        let result = self
            .store
            .prune_egress(cutoff, self.config.max_rows, PRUNE_CHUNK);
        let deleted = result.inspect_err(|_| self.pruning = false)?;
        self.metrics.rows_pruned.inc_by(deleted);
        self.pruning = deleted == u64::from(PRUNE_CHUNK);
        Ok(self.pruning)
    }
}

#[cfg(test)]
mod tests;

//! Serving CMA work: drain the work queue, and for each session work item start its sandbox,
//! hold the lease, run the session's tool calls, then tear everything down.
//!
//! A webhook (`session.status_run_started`) wakes a drain; a timer drains anyway, because
//! deliveries can be lost. Per work item: ack -> sandbox -> heartbeat alongside the session
//! runner -> sandbox stopped -> work item force-stopped, unless the lease was lost (then the
//! item belongs to whoever holds it now and is left alone).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, Notify};

use super::client::{CmaClient, Work};
use super::runner::{RunEnd, RunnerConfig, run_session};
use crate::agent::AgentTools;
use crate::http::HttpClient;
use crate::sandbox::{Runtime, agent_endpoint};

/// How a work item ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkEnd {
    Done(RunEnd),
    /// The heartbeat said stop (state stopping/stopped, or the lease was not extended).
    StopRequested,
    /// Someone else holds the lease (412).
    LeaseLost,
    Failed(String),
}

/// The service: one per controller.
#[derive(Debug)]
pub struct Service {
    pub client: CmaClient,
    pub runtime: Mutex<Runtime>,
    pub runner: RunnerConfig,
    pub lease_ttl_secs: u32,
    /// Signalled by the webhook receiver on `session.status_run_started`.
    pub wake: Arc<Notify>,
}

impl Service {
    /// Claims every queued work item and serves each (concurrently); returns once the queue is
    /// empty, with the handles of the items being served.
    pub async fn drain(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<WorkEnd>> {
        let mut serving = Vec::new();
        loop {
            let work = match self.client.poll(super::client::MAX_BLOCK_MS).await {
                Ok(Some(work)) => work,
                Ok(None) => return serving,
                Err(e) => {
                    tracing::warn!(error = %e, "work poll failed");
                    return serving;
                }
            };
            if work.data.kind != "session" {
                tracing::info!(work = %work.id, kind = %work.data.kind, "skipping a work item that is not a session");
                continue;
            }
            if let Err(e) = self.client.ack(&work).await {
                tracing::warn!(work = %work.id, error = %e, "ack failed");
                continue;
            }
            let service = self.clone();
            serving.push(tokio::spawn(async move { service.serve(work).await }));
        }
    }

    /// Drains now, then whenever woken, and at least every `interval`.
    pub async fn run(self: Arc<Self>, interval: Duration) {
        loop {
            let _ = self.drain().await;
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(interval) => {}
            }
        }
    }

    /// Serves one claimed session work item to its end.
    pub async fn serve(self: Arc<Self>, work: Work) -> WorkEnd {
        let session = work.data.id.clone();
        let started = {
            let mut runtime = self.runtime.lock().await;
            // A sandbox that outlived a controller restart serves on: the runner reconciles
            // with the session's history, so nothing is answered twice.
            if agent_endpoint(runtime.config(), &session).is_ok() {
                tracing::info!(session = %session, "resuming a session whose sandbox is running");
                Ok(())
            } else {
                runtime.start(&session).await.map(|_| ())
            }
        };
        if let Err(e) = started {
            tracing::error!(session = %session, error = %e, "sandbox did not start");
            let _ = self.client.stop(&work, true).await;
            return WorkEnd::Failed(e.to_string());
        }
        let end = self.serve_started(&work, &session).await;
        {
            let mut runtime = self.runtime.lock().await;
            if let Err(e) = runtime.stop(&session).await {
                tracing::error!(session = %session, error = %e, "sandbox stop");
            }
        }
        if end != WorkEnd::LeaseLost
            && let Err(e) = self.client.stop(&work, true).await
        {
            tracing::warn!(work = %work.id, error = %e, "work stop failed");
        }
        tracing::info!(session = %session, end = ?end, "session served");
        end
    }

    async fn serve_started(&self, work: &Work, session: &str) -> WorkEnd {
        let config = self.runtime.lock().await.config().clone();
        let (agent, token) = match agent_endpoint(&config, session) {
            Ok(endpoint) => endpoint,
            Err(e) => return WorkEnd::Failed(e.to_string()),
        };
        let tools = AgentTools {
            http: HttpClient::default(),
            agent,
            token,
        };
        // The first heartbeat claims the lease before any tool runs.
        let first = match self.client.heartbeat(work, None, self.lease_ttl_secs).await {
            Ok(h) => h,
            Err(e) if e.is_lease_lost() => return WorkEnd::LeaseLost,
            Err(e) => return WorkEnd::Failed(e.to_string()),
        };
        if !first.keep_serving() {
            return WorkEnd::StopRequested;
        }
        tokio::select! {
            result = run_session(&self.client, work, session, &tools, &self.runner) => match result {
                Ok((end, _)) => WorkEnd::Done(end),
                Err(e) => WorkEnd::Failed(e.to_string()),
            },
            end = self.heartbeat(work, first) => end,
        }
    }

    /// Keeps the lease until it is lost or the item should stop; never returns otherwise.
    async fn heartbeat(&self, work: &Work, mut last: super::client::Heartbeat) -> WorkEnd {
        let mut failing_since: Option<tokio::time::Instant> = None;
        loop {
            tokio::time::sleep(last.next_in()).await;
            match self
                .client
                .heartbeat(work, Some(&last.last_heartbeat), self.lease_ttl_secs)
                .await
            {
                Ok(h) if h.keep_serving() => {
                    failing_since = None;
                    last = h;
                }
                Ok(_) => return WorkEnd::StopRequested,
                Err(e) if e.is_lease_lost() => return WorkEnd::LeaseLost,
                Err(e) => {
                    // No heartbeat for a whole TTL: the lease is gone whatever the server says.
                    let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= Duration::from_secs(last.ttl_seconds) {
                        return WorkEnd::LeaseLost;
                    }
                    tracing::warn!(work = %work.id, error = %e, "heartbeat failed; retrying");
                }
            }
        }
    }
}

//! `cordon-cma-sim`: a Claude Managed Agents simulator for development and tests.
//!
//! It serves the CMA endpoints a self-hosted environment worker uses (../shared/CMA.md): the
//! work queue with leases and 412s, the session object, the event history and its SSE
//! stream, and result posting; and the Agents API an operator uses to register custom tools
//! ([`agents`]). It plays an agent from a scenario file ([`scenario`]): each
//! session issues its tool calls one after another, and each result is checked against the
//! scenario's predicates. It delivers Standard-Webhooks-signed webhooks with CMA's retries.
//! At the end it reports what happened ([`report::Report`]).
//!
//! Cordon's own tests run it in-process ([`Sim::start`]); `make up` and the SDK test run the
//! binary.

pub mod agents;
pub mod api;
pub mod queue;
pub mod report;
pub mod scenario;
pub mod sessions;
pub mod webhook;
pub mod world;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use report::Report;
use scenario::Scenario;
use webhook::Delivery;
use world::{World, WorldConfig};

/// A running simulator.
#[derive(Debug)]
pub struct Sim {
    pub world: Arc<World>,
    pub addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
    deliveries: tokio::task::JoinHandle<()>,
}

impl Sim {
    /// Serves `scenario` on `listen` (port 0 picks one); its sessions open with
    /// [`Sim::open_sessions`], and their webhooks go to `webhooks` when given.
    pub async fn start(
        scenario: &Scenario,
        config: WorldConfig,
        webhooks: Option<Delivery>,
        listen: SocketAddr,
    ) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let world = World::new(scenario, config, tx);
        let app = api::router(world.clone());
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "simulator server stopped");
            }
        });
        let deliveries = tokio::spawn(webhook::deliver_all(world.clone(), webhooks, rx));
        Ok(Self {
            world,
            addr,
            server,
            deliveries,
        })
    }

    /// Opens the scenario's sessions: work items are queued, webhooks sent.
    pub fn open_sessions(&self) {
        self.world.open_sessions();
    }

    /// The base URL a worker should use (`ANTHROPIC_BASE_URL`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits until the run is settled (everything ended, or something failed) or `timeout`
    /// passes; returns the report either way.
    pub async fn wait(&self, timeout: Duration) -> Report {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let progressed = self.world.progress.notified();
            let pending = self
                .world
                .webhooks_pending
                .load(std::sync::atomic::Ordering::SeqCst)
                > 0;
            if self.world.opened() && self.world.settled(pending) {
                return self.world.report();
            }
            // Leases run out on their own; look again at least every second.
            let wake = deadline.min(tokio::time::Instant::now() + Duration::from_secs(1));
            let _ = tokio::time::timeout_at(wake, progressed).await;
            if tokio::time::Instant::now() >= deadline {
                return self.world.report();
            }
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.server.abort();
        self.deliveries.abort();
    }
}

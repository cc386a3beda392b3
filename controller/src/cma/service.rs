//! Serving CMA work: drain the work queue, and for each session work item hold the lease,
//! start its sandbox, run the session's tool calls, then tear everything down.
//!
//! A webhook (`session.status_run_started`) wakes a drain; a timer drains anyway, because
//! deliveries can be lost. Per work item: ack -> recorded in the store -> first heartbeat
//! (claims the lease) -> sandbox -> heartbeats alongside the session runner -> sandbox
//! stopped -> work item force-stopped, unless the lease was lost (then the item belongs to
//! whoever holds it now and is left alone).
//!
//! Restart safety: the item and the heartbeat that holds its lease are in the store, so a
//! restarted controller ([`Service::resume`]) heartbeats on with the same lease, keeps the
//! sandbox if it survived, and the runner's reconcile with the session history answers only
//! what is unanswered. If the lease was lost meanwhile, the sandbox is torn down.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::client::{CmaClient, Heartbeat, MAX_BLOCK_MS, Work, retrying};
use super::events::ToolUse;
use super::runner::{RunEnd, RunnerConfig, ToolExecutor, run_session};
use super::tools::SessionTools;
use crate::metrics::{ControllerMetrics, tool_label};
use crate::sandbox::{Runtime, agent_endpoint};
use crate::store::Store;
use crate::tools::reply::ToolReply;
use cordon_sandbox_agent::tools::{ToolCall, ToolResult};

/// How a work item ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkEnd {
    Done(RunEnd),
    /// The heartbeat said stop (state stopping/stopped, or the lease was not extended).
    StopRequested,
    /// Someone else holds the lease (412), or no heartbeat succeeded for a whole TTL.
    LeaseLost,
    /// `POST /sessions/{id}/stop` on the admin API, or a `session.status_terminated` webhook.
    StoppedByOperator,
    Failed(String),
}

impl WorkEnd {
    /// The metric label and stored end reason.
    pub fn label(&self) -> &'static str {
        match self {
            WorkEnd::Done(RunEnd::Terminated) => "terminated",
            WorkEnd::Done(RunEnd::Idle) => "idle",
            WorkEnd::StopRequested => "stop_requested",
            WorkEnd::LeaseLost => "lease_lost",
            WorkEnd::StoppedByOperator => "stopped_by_operator",
            WorkEnd::Failed(_) => "failed",
        }
    }
}

/// Why serving a session is being stopped from outside the runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `POST /sessions/{id}/stop` or `cordon-controller sessions --stop`.
    Operator,
    /// A `session.status_terminated` webhook (the runner may see it in the stream first).
    Terminated,
}

/// The signal that stops one session's server, and why.
#[derive(Debug, Default)]
struct StopSignal {
    notify: Notify,
    reason: std::sync::Mutex<Option<StopReason>>,
}

impl StopSignal {
    fn reason(&self) -> StopReason {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unwrap_or(StopReason::Operator)
    }
}

/// The sessions being served, each with the signal that stops it.
#[derive(Debug, Default)]
pub struct SessionStops {
    inner: std::sync::Mutex<HashMap<String, Arc<StopSignal>>>,
}

impl SessionStops {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<StopSignal>>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers `session` as served; `None` if it already is.
    fn register(&self, session: &str) -> Option<Arc<StopSignal>> {
        let mut inner = self.lock();
        if inner.contains_key(session) {
            return None;
        }
        let stop = Arc::new(StopSignal::default());
        inner.insert(session.to_string(), stop.clone());
        Some(stop)
    }

    fn remove(&self, session: &str) {
        self.lock().remove(session);
    }

    /// Asks the session's server to stop; `false` when the session is not being served.
    pub fn stop(&self, session: &str, reason: StopReason) -> bool {
        match self.lock().get(session) {
            Some(stop) => {
                stop.reason
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert(reason);
                // notify_one keeps a permit, so a stop asked before the server waits counts.
                stop.notify.notify_one();
                true
            }
            None => false,
        }
    }

    /// Whether `session` is being served.
    pub fn serving(&self, session: &str) -> bool {
        self.lock().contains_key(session)
    }
}

/// The service: one per controller.
#[derive(Debug)]
pub struct Service {
    pub client: CmaClient,
    /// Shared: starts and stops of different sessions run side by side.
    pub runtime: Arc<Runtime>,
    /// The controller's records (its own connection to the state database).
    pub store: Store,
    pub metrics: ControllerMetrics,
    pub runner: RunnerConfig,
    pub lease_ttl_secs: u32,
    /// Signalled by the webhook receiver on `session.status_run_started`.
    pub wake: Arc<Notify>,
    /// Shared with the webhook receiver and the admin API.
    pub stops: Arc<SessionStops>,
    /// The operator's custom tools (`[controller] tools`), if any.
    pub custom_tools: Option<Arc<crate::tools::CustomTools>>,
}

impl Service {
    /// Claims every queued work item and serves each (concurrently); returns once the queue is
    /// empty, with the handles of the items being served.
    pub async fn drain(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<WorkEnd>> {
        let mut serving = Vec::new();
        loop {
            let work = match retrying("work poll", || self.client.poll(MAX_BLOCK_MS)).await {
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
            if self.stops.serving(&work.data.id) {
                // Left unacknowledged, it is offered again once the session is done here.
                tracing::info!(work = %work.id, session = %work.data.id, "the session is being served; not claiming a second work item for it now");
                continue;
            }
            // Recorded before it is acknowledged: an item CMA sees as taken is one a restart
            // can resume. Serving one that could not be recorded would break that promise.
            if let Err(e) = self
                .store
                .begin_work(&work.id, &work.data.id, &work.to_stored())
            {
                // Unacknowledged, it stays queued and is offered again at the next drain.
                // Nothing else could be recorded now either: a full disk is logged once per
                // episode by the store.
                if e.is_disk_full() {
                    tracing::warn!(work = %work.id, "the state disk is full; the work item stays queued");
                } else {
                    tracing::error!(work = %work.id, error = %e, "cannot record the work item; it stays queued");
                }
                return serving;
            }
            if let Err(e) = retrying("ack", || self.client.ack(&work)).await {
                tracing::warn!(work = %work.id, error = %e, "ack failed");
                if let Err(e) = self.store.forget_work(&work.id) {
                    tracing::error!(work = %work.id, error = %e, "cannot forget the unacknowledged work item");
                }
                continue;
            }
            let service = self.clone();
            serving.push(tokio::spawn(async move { service.serve(work, None).await }));
        }
    }

    /// Resumes the work items a previous controller was serving when it stopped.
    pub async fn resume(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<WorkEnd>> {
        let open = match self.store.open_work() {
            Ok(open) => open,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the work items to resume");
                return Vec::new();
            }
        };
        let mut serving = Vec::new();
        let resumed: std::collections::HashSet<String> =
            open.iter().map(|w| w.session_id.clone()).collect();
        // A sandbox no open work item owns would never be served or stopped: remove it.
        self.stop_orphans(&resumed).await;
        for stored in open {
            match Work::from_stored(&stored.item) {
                Ok(work) => {
                    tracing::info!(work = %work.id, session = %work.data.id, "resuming a work item served before a restart");
                    let service = self.clone();
                    let heartbeat = stored.last_heartbeat.clone();
                    serving.push(tokio::spawn(
                        async move { service.serve(work, heartbeat).await },
                    ));
                }
                Err(e) => {
                    tracing::error!(work = %stored.id, error = %e, "a stored work item is unreadable; it is not resumed");
                    let _ = self
                        .store
                        .end_work(&stored.id, "failed: unreadable after restart");
                }
            }
        }
        serving
    }

    async fn stop_orphans(&self, owned: &std::collections::HashSet<String>) {
        let runtime = &self.runtime;
        let live = match runtime.list() {
            Ok(live) => live,
            Err(e) => {
                tracing::error!(error = %e, "cannot list sandboxes");
                return;
            }
        };
        for view in live {
            let is_live = matches!(view.state, "starting" | "running");
            // A local session's sandbox is its loop's (crate::local), never a work item's.
            if is_live && !owned.contains(&view.id) && !crate::local::is_local_session_id(&view.id)
            {
                tracing::info!(session = %view.id, "removing a sandbox no work item owns");
                if let Err(e) = runtime.stop(&view.id).await {
                    tracing::error!(session = %view.id, error = %e, "sandbox stop");
                }
            }
        }
    }

    /// Resumes what was being served, then drains now, whenever woken, and at least every
    /// `interval`.
    pub async fn run(self: Arc<Self>, interval: Duration) {
        let _ = self.resume().await;
        tokio::spawn(self.runtime.clone().keep_warm());
        loop {
            let _ = self.drain().await;
            // Workspaces whose session ended longer ago than the retention go.
            self.runtime.sweep_workspaces().await;
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(interval) => {}
            }
        }
    }

    /// Serves one claimed session work item to its end. `heartbeat` is the lease a previous
    /// controller held (resuming after a restart); `None` claims it afresh.
    pub async fn serve(self: Arc<Self>, work: Work, heartbeat: Option<String>) -> WorkEnd {
        let session = work.data.id.clone();
        let Some(stop) = self.stops.register(&session) else {
            tracing::warn!(work = %work.id, session = %session, "the session is already being served; not serving it twice");
            // Not resumed again after a restart; the item's lease (if any) is not ours to stop.
            let _ = self.store.end_work(
                &work.id,
                "failed: the session was being served by another item",
            );
            return WorkEnd::Failed("already being served".into());
        };
        let end = self
            .serve_registered(&work, &session, heartbeat, &stop)
            .await;
        {
            let runtime = &self.runtime;
            // The proxy forgets a session's counts when its registration goes: keep them.
            let counts = runtime.proxy_admin().egress_counts().await;
            if let Some(e) = counts.get(&session)
                && let Err(err) = self.store.set_egress(&work.id, e.allowed, e.denied)
            {
                tracing::warn!(work = %work.id, error = %err, "cannot keep the egress counts");
            }
            // A terminated session will get no more work: its workspace's retention starts.
            // Any other end (idle, a lost lease, a failure) keeps the workspace for the
            // session's next sandbox.
            let stopped = if end == WorkEnd::Done(RunEnd::Terminated) {
                runtime.end(&session).await
            } else {
                runtime.stop(&session).await
            };
            if let Err(e) = stopped {
                tracing::error!(session = %session, error = %e, "sandbox stop");
            }
        }
        self.stops.remove(&session);
        if end != WorkEnd::LeaseLost
            && let Err(e) = retrying("work stop", || self.client.stop(&work, true)).await
        {
            tracing::warn!(work = %work.id, error = %e, "work stop failed");
        }
        let reason = match &end {
            WorkEnd::Failed(why) => format!("failed: {why}"),
            other => other.label().to_string(),
        };
        if let Err(e) = self.store.end_work(&work.id, &reason) {
            tracing::error!(work = %work.id, error = %e, "cannot record how the work item ended");
        }
        self.metrics
            .work_items
            .with_label_values(&[end.label()])
            .inc();
        if end == WorkEnd::LeaseLost {
            self.metrics.lease_losses.inc();
        }
        tracing::info!(session = %session, end = ?end, "session served");
        end
    }

    async fn serve_registered(
        &self,
        work: &Work,
        session: &str,
        heartbeat: Option<String>,
        stop: &StopSignal,
    ) -> WorkEnd {
        let claimed = Instant::now();
        // The first heartbeat claims (or, after a restart, re-proves) the lease before any
        // sandbox or tool runs: no two workers ever serve one item.
        let first = match retrying("heartbeat", || {
            self.client
                .heartbeat(work, heartbeat.as_deref(), self.lease_ttl_secs)
        })
        .await
        {
            Ok(h) => h,
            Err(e) if e.is_lease_lost() => return WorkEnd::LeaseLost,
            Err(e) => return WorkEnd::Failed(e.to_string()),
        };
        self.note_heartbeat(work, &first);
        if !first.keep_serving() {
            return WorkEnd::StopRequested;
        }
        let image = match self.image_for(work, session).await {
            Ok(image) => image,
            Err(e) => return WorkEnd::Failed(e),
        };
        // A sandbox that outlived a controller restart serves on: the runner reconciles with
        // the session's history, so nothing is answered twice.
        let started = if agent_endpoint(self.runtime.config(), session).is_ok() {
            tracing::info!(session = %session, "resuming a session whose sandbox is running");
            self.runtime.reregister(session).await.map(|()| None)
        } else {
            self.runtime
                .start(session, image.as_deref())
                .await
                .map(Some)
        };
        match started {
            Ok(Some(started)) => {
                let kind = if started.warm { "warm" } else { "cold" };
                self.metrics.sandbox_starts.with_label_values(&[kind]).inc();
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(session = %session, error = %e, "sandbox did not start");
                return WorkEnd::Failed(e.to_string());
            }
        }
        self.metrics
            .session_start
            .observe(claimed.elapsed().as_secs_f64());
        self.metrics.sessions_active.inc();
        let end = self.serve_started(work, session, image, first, stop).await;
        self.metrics.sessions_active.dec();
        end
    }

    /// The image for `session`: `[sandbox.agent_images]`'s entry for its agent, else the
    /// default (`None`). The session is fetched only when there is a mapping to consult.
    async fn image_for(&self, work: &Work, session: &str) -> Result<Option<String>, String> {
        let images = self.runtime.config().agent_images.clone();
        if images.is_empty() {
            return Ok(None);
        }
        let agent = retrying("get session", || self.client.session_agent(work, session))
            .await
            .map_err(|e| format!("cannot read the session's agent to choose its image: {e}"))?;
        let image = agent.as_ref().and_then(|a| images.get(a)).cloned();
        tracing::info!(session = %session, agent = ?agent, image = ?image, "image chosen");
        Ok(image)
    }

    fn note_heartbeat(&self, work: &Work, heartbeat: &Heartbeat) {
        if let Err(e) = self
            .store
            .set_heartbeat(&work.id, &heartbeat.last_heartbeat)
        {
            tracing::warn!(work = %work.id, error = %e, "cannot record the heartbeat; a restart would lose the lease");
        }
    }

    async fn serve_started(
        &self,
        work: &Work,
        session: &str,
        image: Option<String>,
        first: Heartbeat,
        stop: &StopSignal,
    ) -> WorkEnd {
        let tools =
            match SessionTools::new(self.runtime.clone(), self.metrics.clone(), session, image) {
                Ok(tools) => Counted {
                    inner: tools,
                    service: self,
                    work,
                    session,
                    agent_id: tokio::sync::OnceCell::new(),
                },
                Err(e) => return WorkEnd::Failed(e.to_string()),
            };
        if self
            .custom_tools
            .as_ref()
            .is_some_and(|custom| custom.serves_browser())
        {
            tools.inner.warm_browser();
        }
        tokio::select! {
            result = run_session(&self.client, work, session, &tools, &self.runner) => match result {
                Ok((end, _)) => WorkEnd::Done(end),
                Err(e) => WorkEnd::Failed(e.to_string()),
            },
            end = self.heartbeat(work, first) => end,
            () = stop.notify.notified() => match stop.reason() {
                StopReason::Terminated => WorkEnd::Done(RunEnd::Terminated),
                StopReason::Operator => WorkEnd::StoppedByOperator,
            },
        }
    }

    /// Keeps the lease until it is lost or the item should stop; never returns otherwise.
    async fn heartbeat(&self, work: &Work, mut last: Heartbeat) -> WorkEnd {
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
                    self.note_heartbeat(work, &h);
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

/// The sandbox's tools, counted per work item (store) and per tool and outcome (metrics), and
/// the operator's custom tools.
struct Counted<'a> {
    inner: SessionTools,
    service: &'a Service,
    work: &'a Work,
    session: &'a str,
    /// The session's agent, read once, at its first custom tool call.
    agent_id: tokio::sync::OnceCell<Option<String>>,
}

impl Counted<'_> {
    fn count(&self) {
        if let Err(e) = self.service.store.count_tool_call(&self.work.id) {
            tracing::warn!(work = %self.work.id, error = %e, "cannot count the tool call");
        }
    }
}

#[async_trait::async_trait]
impl ToolExecutor for Counted<'_> {
    async fn call(&self, call: &ToolCall) -> ToolResult {
        let result = self.inner.call(call).await;
        let outcome = if result.is_error { "error" } else { "ok" };
        self.service
            .metrics
            .tool_calls
            .with_label_values(&[tool_label(&call.name), outcome])
            .inc();
        self.count();
        result
    }

    async fn custom(&self, call: &ToolUse) -> ToolReply {
        let Some(tools) = &self.service.custom_tools else {
            return ToolReply::error(format!(
                "[cordon] {:?} is a custom tool, and this environment serves no custom tools \
                 ([controller] tools is not set)",
                call.name
            ));
        };
        let agent_id = self
            .agent_id
            .get_or_init(|| async {
                match self.service.client.session_agent(self.work, self.session).await {
                    Ok(agent) => agent,
                    Err(e) => {
                        tracing::warn!(session = %self.session, error = %e, "cannot read the session's agent; custom tool calls go without it");
                        None
                    }
                }
            })
            .await
            .clone();
        let context = crate::tools::CallContext {
            session: self.session.to_string(),
            agent_id,
            tool_use_id: call.id.clone(),
        };
        let reply = tools.call(context, &call.name, call.input.clone()).await;
        self.count();
        reply
    }

    fn journal(
        &self,
        call: &ToolUse,
        reply: &ToolReply,
        started: std::time::SystemTime,
        took: std::time::Duration,
    ) {
        journal(
            &self.service.store,
            self.session,
            call,
            reply,
            started,
            took,
        );
    }
}

/// Records a finished call of `session` for the dashboard's timeline: the call, an excerpt of
/// its reply, and the reply's images. A failure is logged: the call's result still goes out.
pub fn journal(
    store: &Store,
    session: &str,
    call: &ToolUse,
    reply: &ToolReply,
    started: std::time::SystemTime,
    took: std::time::Duration,
) {
    let record = crate::store::ToolCallRecord {
        tool_use_id: call.id.clone(),
        name: call.name.clone(),
        custom: call.custom,
        input_summary: input_summary(&call.input),
        result_excerpt: reply.excerpt(),
        is_error: reply.is_error,
        started_ms: started
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
        duration_ms: took.as_millis() as i64,
    };
    if let Err(e) = store.record_tool_call(session, &record) {
        tracing::warn!(session = %session, error = %e, "cannot record the tool call for the dashboard");
    }
    let images = reply.decoded_images();
    if let Err(e) = store.record_tool_images(
        session,
        &call.id,
        &images,
        record.started_ms + record.duration_ms,
    ) {
        tracing::warn!(session = %session, error = %e, "cannot keep the tool call's images for the dashboard");
    }
}

/// A tool input in one line for the session timeline: a shell command as itself, a file tool's
/// path first, anything else as compact JSON.
pub fn input_summary(input: &serde_json::Value) -> String {
    let field = |k: &str| input.get(k).and_then(|v| v.as_str());
    match (
        field("command"),
        field("file_path").or(field("path")),
        field("pattern"),
    ) {
        (Some(command), _, _) => command.to_string(),
        (None, Some(path), Some(pattern)) => format!("{pattern} in {path}"),
        (None, Some(path), None) => path.to_string(),
        (None, None, Some(pattern)) => pattern.to_string(),
        (None, None, None) => input.to_string(),
    }
}

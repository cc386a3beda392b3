//! One local session's loop: read the next step from the history ([`super::plan`]), record
//! it, act, repeat. Waits while idle; its sandbox is started for the first tool call that
//! needs it and stopped once the session has been idle for [`LocalSessions::sandbox_idle`]
//! (the workspace stays); the loop ends when the session is archived.
//!
//! A model request or a tool call in flight is abandoned when the user interrupts, the
//! session is archived or the run is out of time. The calls of one model answer run one at a
//! time in the model's order, each recorded as started just before it runs and its result as
//! soon as it comes.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::agent::{Agent, AgentSpec};
use super::arguments::{Catalog, Entry, read_call};
use super::context::conversation;
use super::events::{ErrorBody, Event, StopReason, Stored, Usage, text};
use super::manager::{Live, LocalSessions};
use super::model::{Asker, ModelError, backoff, request_body};
use super::plan::{self, Call, Step};
use super::toolset;
use crate::cma::tools::SessionTools;
use crate::tools::CallContext;
use crate::tools::reply::ToolReply;
use crate::tools::schema::InputCheck;
use cordon_sandbox_agent::tools::ToolCall;

/// Events read per query of the history.
const PAGE: u32 = 10_000;
/// Tool calls taken from one model answer; more is a model gone wrong (each call is an event,
/// a result and a message in every later request).
pub const MAX_CALLS_PER_ANSWER: usize = 32;

struct Session {
    manager: Arc<LocalSessions>,
    id: String,
    live: Arc<Live>,
    agent: Agent,
    history: Vec<Stored>,
    tools: Option<SessionTools>,
    /// The tools offered to the model, built at the start of each run (the toolset's schemas
    /// compiled once per run, custom tools as the tools file declares them then).
    catalog: Option<Arc<Catalog>>,
}

/// Runs session `id` until it is archived.
pub async fn run(manager: Arc<LocalSessions>, id: String, live: Arc<Live>) {
    let record = match manager.store.local_session(&id) {
        Ok(Some(record)) => record,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(session = %id, error = %e, "cannot read the local session");
            return;
        }
    };
    // The definition the session was created with. Its custom tools were checked then; one
    // the tools file no longer serves is answered as undeclared when called.
    let agent = serde_json::from_str::<AgentSpec>(&record.agent_spec)
        .map_err(|e| vec![e.to_string()])
        .and_then(|spec| {
            let custom = spec.tools.custom.clone();
            spec.check(Some(&custom))
        });
    let agent = match agent {
        Ok(agent) => agent,
        Err(problems) => {
            tracing::error!(session = %id, problems = ?problems, "the session's agent definition cannot be read; the session is not served");
            return;
        }
    };
    let mut session = Session {
        manager,
        id,
        live,
        agent,
        history: Vec::new(),
        tools: None,
        catalog: None,
    };
    if let Err(e) = session.refresh() {
        tracing::error!(session = %session.id, error = %e, "cannot read the session's events");
        return;
    }
    session.serve().await;
}

impl Session {
    /// Reads the events stored since the last read.
    fn refresh(&mut self) -> Result<(), crate::store::StoreError> {
        loop {
            let after = self.history.last().map_or(0, |s| s.seq);
            let more = self.manager.store.local_events(&self.id, after, PAGE)?;
            let full = more.len() as u32 == PAGE;
            self.history.extend(more);
            if !full {
                return Ok(());
            }
        }
    }

    /// Stores `events`, then reads the history again (a client's events may have come in
    /// between, and the order is the store's).
    fn record(&mut self, events: Vec<Event>) -> bool {
        if let Err(e) = self.manager.append(&self.id, events) {
            tracing::error!(session = %self.id, error = %e, "cannot record the session's events; retrying in 5 s");
            return false;
        }
        if let Err(e) = self.refresh() {
            tracing::error!(session = %self.id, error = %e, "cannot read the session's events");
            return false;
        }
        true
    }

    /// [`Session::record`] for what cannot be had again (a model's answer, paid for; a tool's
    /// result, its effects done): retried while the store refuses (a full disk), until it
    /// takes them or the session must stop. `false` when it stopped first. Once stored they
    /// are never stored again: only reading the history back is retried.
    async fn record_until_stored(&mut self, events: Vec<Event>) -> bool {
        loop {
            match self.manager.append(&self.id, events.clone()) {
                Ok(_) => break,
                Err(e) => {
                    tracing::error!(session = %self.id, error = %e, "cannot record the session's events; retrying in 5 s");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                () = self.stopped() => return false,
            }
        }
        while let Err(e) = self.refresh() {
            tracing::error!(session = %self.id, error = %e, "cannot read the session's events; retrying in 5 s");
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        }
        true
    }

    fn set_status(&self, status: &str) {
        if let Err(e) = self.manager.store.set_local_status(&self.id, status, false) {
            tracing::warn!(session = %self.id, error = %e, "cannot record the session's status");
        }
    }

    async fn serve(&mut self) {
        loop {
            // Each step yields: no session can hold a worker however its history reads.
            tokio::task::yield_now().await;
            let step = plan::next(&self.history, &self.agent, time::OffsetDateTime::now_utc());
            let recorded = match step {
                Step::Done => break,
                Step::Wait => {
                    self.wait().await;
                    true
                }
                Step::Begin => {
                    self.catalog = None;
                    self.set_status("running");
                    self.record(vec![Event::StatusRunning {}])
                }
                Step::Refuse(refusals) => self.record(
                    refusals
                        .into_iter()
                        .map(|r| result_event(&r.call, &ToolReply::error(r.text)))
                        .collect(),
                ),
                Step::Run(calls) => self.run_calls(calls).await,
                Step::AwaitConfirmation(ids) => {
                    self.end_run(StopReason::RequiresAction { event_ids: ids })
                }
                Step::CallModel { .. } => self.call_model().await,
                Step::Idle(reason) => self.end_run(reason),
            };
            if !recorded {
                // The store refused (a full disk): nothing was half-applied; try again.
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                let _ = self.refresh();
            }
        }
        self.tools = None;
        if let Err(e) = self.manager.runtime.end(&self.id).await {
            tracing::warn!(session = %self.id, error = %e, "ending the archived session's sandbox");
        }
        tracing::info!(session = %self.id, "local session archived");
    }

    fn end_run(&mut self, reason: StopReason) -> bool {
        self.manager
            .metrics
            .local
            .runs
            .with_label_values(&[reason.label()])
            .inc();
        self.set_status("idle");
        self.record(vec![Event::StatusIdle {
            stop_reason: reason,
        }])
    }

    /// Waits for a client's event; stops the sandbox once idle long enough.
    async fn wait(&mut self) {
        // A sandbox that outlived a controller restart is stopped on the same clock.
        let has_sandbox = self.tools.is_some()
            || crate::sandbox::agent_endpoint(self.manager.runtime.config(), &self.id).is_ok();
        if has_sandbox {
            let idle = self.manager.sandbox_idle;
            if tokio::time::timeout(idle, self.live.wake.notified())
                .await
                .is_err()
            {
                tracing::info!(session = %self.id, "stopping the idle session's sandbox (its workspace stays)");
                self.tools = None;
                if let Err(e) = self.manager.runtime.stop(&self.id).await {
                    tracing::warn!(session = %self.id, error = %e, "stopping the sandbox");
                }
                self.live.wake.notified().await;
            }
        } else {
            self.live.wake.notified().await;
        }
        if let Err(e) = self.refresh() {
            tracing::error!(session = %self.id, error = %e, "cannot read the session's events");
        }
    }

    /// Resolves when what is in flight must stop: the user interrupts, the session is
    /// archived, or the run is out of time (`limits.max_run_secs`). The events themselves are
    /// read into the history by the next step.
    async fn stopped(&self) {
        // Already asked for before this step began (the history the step saw holds it).
        if super::plan::stop_pending(&self.history) {
            return;
        }
        let deadline = super::plan::run_deadline(&self.history, &self.agent).map(|at| {
            let left = at - time::OffsetDateTime::now_utc();
            tokio::time::Instant::now()
                + std::time::Duration::try_from(left).unwrap_or(std::time::Duration::ZERO)
        });
        let out_of_time = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = out_of_time => {}
            () = self.stop_asked() => {}
        }
    }

    /// Resolves when a `user.interrupt` or the archive's `session.status_terminated` is stored
    /// after the history the step saw.
    async fn stop_asked(&self) {
        let mut after = self.history.last().map_or(0, |s| s.seq);
        loop {
            self.live.wake.notified().await;
            match self.manager.store.local_events(&self.id, after, PAGE) {
                Ok(events) => {
                    if events.iter().any(|s| {
                        matches!(
                            s.event,
                            Event::UserInterrupt {} | Event::StatusTerminated {}
                        )
                    }) {
                        // The next step reads the history again; it needs no other wake-up.
                        return;
                    }
                    after = events.last().map_or(after, |s| s.seq);
                }
                Err(e) => {
                    tracing::warn!(session = %self.id, error = %e, "cannot read the session's events");
                }
            }
        }
    }

    /// The tools the model is offered: the agent's toolset tools and its custom tools as the
    /// tools file declares them now.
    fn catalog(&self) -> Catalog {
        let mut catalog = Catalog::default();
        for name in &self.agent.toolset {
            if let Some(tool) = toolset::find(name) {
                let schema = tool.input_schema();
                catalog.tools.insert(
                    name.clone(),
                    Entry {
                        description: tool.description.to_string(),
                        check: InputCheck::new(&schema).ok(),
                        schema,
                        custom: false,
                    },
                );
            }
        }
        if let Some(custom) = &self.manager.custom_tools {
            for tool in custom.definitions(&self.agent.custom) {
                catalog.tools.insert(
                    tool.name.clone(),
                    Entry {
                        description: tool.description,
                        schema: tool.input_schema,
                        custom: true,
                        check: None,
                    },
                );
            }
        }
        catalog
    }

    async fn call_model(&mut self) -> bool {
        let catalog = match &self.catalog {
            Some(catalog) => catalog.clone(),
            None => {
                let catalog = Arc::new(self.catalog());
                self.catalog = Some(catalog.clone());
                catalog
            }
        };
        let conversation = conversation(
            self.agent.spec.system.as_deref(),
            &self.history,
            self.agent.max_context_chars,
        );
        if conversation.truncated_results > 0 {
            tracing::info!(session = %self.id, cut = conversation.truncated_results, "tool results truncated to fit limits.max_context_chars");
        }
        let body = request_body(&self.agent, conversation.messages, catalog.functions());
        if !self.record(vec![Event::ModelRequestStart {
            model: self.agent.spec.model.name.clone(),
        }]) {
            return false;
        }
        let began = Instant::now();
        let asker = Asker {
            session: &self.id,
            agent: &self.agent.spec.name,
        };
        let mut attempt = 0;
        let outcome = loop {
            attempt += 1;
            let sent = Instant::now();
            let answer = tokio::select! {
                answer = self.manager.model.complete(&self.agent, &asker, &body) => answer,
                () = self.stopped() => break None,
            };
            self.observe(&answer, attempt, sent);
            match answer {
                Ok(answer) => break Some(Ok(answer)),
                Err(e) if e.is_retryable() && attempt <= self.agent.model_retries => {
                    tracing::warn!(session = %self.id, attempt, error = %e, "model request failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff(attempt)) => {}
                        () = self.stopped() => break None,
                    }
                }
                Err(e) => break Some(Err(e)),
            }
        };
        let duration_ms = began.elapsed().as_millis() as u64;
        let events = match outcome {
            // Interrupted or archived: the next step says which.
            None => vec![Event::ModelRequestEnd {
                is_error: true,
                model_usage: Usage::default(),
                finish_reason: Some("interrupted".into()),
                duration_ms,
            }],
            Some(Err(e)) => {
                tracing::warn!(session = %self.id, error = %e, "the model request failed; the run stops");
                self.manager
                    .metrics
                    .local
                    .runs
                    .with_label_values(&["retries_exhausted"])
                    .inc();
                self.set_status("idle");
                vec![
                    Event::ModelRequestEnd {
                        is_error: true,
                        model_usage: Usage::default(),
                        finish_reason: None,
                        duration_ms,
                    },
                    Event::SessionError {
                        error: ErrorBody {
                            kind: e.kind().to_string(),
                            message: format!("{e} (after {attempt} attempt(s))"),
                        },
                    },
                    Event::StatusIdle {
                        stop_reason: StopReason::RetriesExhausted {},
                    },
                ]
            }
            Some(Ok(answer)) => {
                let mut events = vec![Event::ModelRequestEnd {
                    is_error: false,
                    model_usage: answer.usage.unwrap_or_default(),
                    finish_reason: answer.finish_reason.clone(),
                    duration_ms,
                }];
                if !answer.text.is_empty() {
                    events.push(Event::AgentMessage {
                        content: text(answer.text),
                    });
                }
                if answer.calls.len() > MAX_CALLS_PER_ANSWER {
                    tracing::warn!(session = %self.id, calls = answer.calls.len(), "the model asked for more tool calls in one answer than are taken");
                    events.push(Event::SessionError {
                        error: ErrorBody {
                            kind: "model_response".into(),
                            message: format!(
                                "the model asked for {} tool calls in one answer; the first \
                                 {MAX_CALLS_PER_ANSWER} were taken, the rest dropped",
                                answer.calls.len()
                            ),
                        },
                    });
                }
                for call in answer.calls.iter().take(MAX_CALLS_PER_ANSWER) {
                    events.push(read_call(
                        &new_call_id(),
                        &call.name,
                        &call.arguments,
                        &catalog,
                        &self.agent.ask,
                    ));
                }
                events
            }
        };
        self.record_until_stored(events).await;
        true
    }

    /// Counts and audits one model request attempt.
    fn observe(
        &self,
        answer: &Result<super::model::Answer, ModelError>,
        attempt: u32,
        sent: Instant,
    ) {
        let metrics = &self.manager.metrics.local;
        let outcome = match answer {
            Ok(_) => "ok",
            Err(e) => e.kind(),
        };
        metrics.model_requests.with_label_values(&[outcome]).inc();
        metrics.model_duration.observe(sent.elapsed().as_secs_f64());
        let usage = answer
            .as_ref()
            .ok()
            .and_then(|a| a.usage)
            .unwrap_or_default();
        metrics
            .model_tokens
            .with_label_values(&["input"])
            .inc_by(usage.input_tokens);
        metrics
            .model_tokens
            .with_label_values(&["output"])
            .inc_by(usage.output_tokens);
        if let Some(audit) = &self.manager.audit {
            let status = match answer {
                Err(ModelError::Status { status, .. } | ModelError::Refused { status, .. }) => {
                    Some(*status)
                }
                _ => None,
            };
            audit.record_model_call(&crate::tools::audit::ModelCallRecord {
                time: crate::tools::audit::now(),
                kind: "model_call",
                session: &self.id,
                agent: &self.agent.spec.name,
                model: &self.agent.spec.model.name,
                host: self.agent.endpoint.host().unwrap_or_default(),
                outcome,
                status,
                attempt,
                duration_ms: sent.elapsed().as_millis() as u64,
                input_tokens: usage.input_tokens,
                output_tokens: usage.output_tokens,
                tool_calls: answer.as_ref().map_or(0, |a| a.calls.len()),
            });
        }
    }

    /// Starts (or finds) the session's sandbox; `Err` says why there is none.
    async fn sandbox(&mut self) -> Result<(), String> {
        if self.tools.is_some() {
            return Ok(());
        }
        let runtime = &self.manager.runtime;
        let image = self.agent.spec.image.clone();
        let up = if crate::sandbox::agent_endpoint(runtime.config(), &self.id).is_ok() {
            // It outlived a controller restart: the proxy may have lost its registration.
            runtime.reregister(&self.id).await
        } else {
            // Started as a task of its own: an interrupt must not cancel a start halfway.
            let (runtime, id, image) = (runtime.clone(), self.id.clone(), image.clone());
            match tokio::spawn(async move { runtime.start(&id, image.as_deref()).await }).await {
                Ok(started) => started.map(|_| ()),
                Err(e) => return Err(format!("the sandbox start task failed: {e}")),
            }
        };
        up.map_err(|e| e.to_string())?;
        let tools = SessionTools::new(
            runtime.clone(),
            self.manager.metrics.clone(),
            &self.id,
            image,
        )
        .map_err(|e| e.to_string())?;
        if self
            .manager
            .custom_tools
            .as_ref()
            .is_some_and(|c| c.serves_browser())
            && self.agent.custom.iter().any(|n| n.starts_with("browser_"))
        {
            tools.warm_browser();
        }
        self.tools = Some(tools);
        Ok(())
    }

    async fn run_calls(&mut self, calls: Vec<Call>) -> bool {
        let needs_sandbox = calls
            .iter()
            .any(|c| !c.custom || c.tool_use.name.starts_with("browser_"));
        let sandbox = if needs_sandbox {
            self.sandbox().await
        } else {
            Ok(())
        };
        if let Err(why) = sandbox {
            tracing::error!(session = %self.id, error = %why, "the session's sandbox did not start");
            let text = format!("[cordon] the session's sandbox could not start: {why}");
            return self.record(
                calls
                    .iter()
                    .map(|c| result_event(c, &ToolReply::error(text.clone())))
                    .collect(),
            );
        }
        // In the model's order, one at a time, as CMA's runner answers them: a `write` then a
        // `bash` that runs what it wrote must not race. Each call is recorded as started just
        // before it runs and its result as soon as it comes: a restart loses only the call
        // in flight, and never runs it again.
        for call in &calls {
            // Stopped before this call began (an interrupt, the run's time): it is answered as
            // not run, never as cut off.
            let stop_now = tokio::select! {
                biased;
                () = self.stopped() => true,
                () = std::future::ready(()) => false,
            };
            if stop_now {
                return self.refresh().is_ok();
            }
            if !self.record(vec![Event::ToolExecutionStart {
                tool_use_id: call.tool_use.id.clone(),
            }]) {
                return false;
            }
            let began = SystemTime::now();
            let clock = Instant::now();
            let reply = tokio::select! {
                reply = self.execute(call) => reply,
                // Interrupted, archived or out of run time: the next step says which.
                () = self.stopped() => return true,
            };
            crate::cma::service::journal(
                &self.manager.store,
                &self.id,
                &cma_use(call),
                &reply,
                began,
                clock.elapsed(),
            );
            if !self
                .record_until_stored(vec![result_event(call, &reply)])
                .await
            {
                return true;
            }
        }
        true
    }

    /// Runs one call, its reply bounded in depth (it goes into an event that must read back).
    async fn execute(&self, call: &Call) -> ToolReply {
        let reply = self.execute_unchecked(call).await;
        if reply
            .content
            .iter()
            .any(|block| super::events::too_deep(block, super::events::MAX_DEPTH))
        {
            return ToolReply::error(format!(
                "[cordon] {}'s result nests deeper than {} levels and was not kept",
                call.tool_use.name,
                super::events::MAX_DEPTH
            ));
        }
        reply
    }

    /// Runs one call: the toolset in the sandbox, a custom tool as the tools file says.
    async fn execute_unchecked(&self, call: &Call) -> ToolReply {
        if call.custom {
            let Some(custom) = &self.manager.custom_tools else {
                return ToolReply::error(format!(
                    "[cordon] {:?} is a custom tool, and this controller serves no custom tools",
                    call.tool_use.name
                ));
            };
            let context = CallContext {
                session: self.id.clone(),
                // Apart from CMA's agent ids, so no policy rule or tool service meant for a
                // CMA agent ever matches a local one.
                agent_id: Some(format!("local:{}", self.agent.spec.name)),
                tool_use_id: call.tool_use.id.clone(),
            };
            return custom
                .call(context, &call.tool_use.name, call.tool_use.input.clone())
                .await;
        }
        let Some(tools) = &self.tools else {
            return ToolReply::error("[cordon] the session has no sandbox");
        };
        use crate::cma::runner::ToolExecutor;
        let result = tools
            .call(&ToolCall {
                name: call.tool_use.name.clone(),
                input: call.tool_use.input.clone(),
            })
            .await;
        let outcome = if result.is_error { "error" } else { "ok" };
        self.manager
            .metrics
            .tool_calls
            .with_label_values(&[crate::metrics::tool_label(&call.tool_use.name), outcome])
            .inc();
        ToolReply::text(result.is_error, result.text)
    }
}

/// The result event of `call`.
fn result_event(call: &Call, reply: &ToolReply) -> Event {
    if call.custom {
        Event::CustomToolResult {
            custom_tool_use_id: call.tool_use.id.clone(),
            is_error: reply.is_error,
            content: reply.content.clone(),
        }
    } else {
        Event::ToolResult {
            tool_use_id: call.tool_use.id.clone(),
            is_error: reply.is_error,
            content: reply.content.clone(),
        }
    }
}

/// The call as the dashboard's journal takes it.
fn cma_use(call: &Call) -> crate::cma::events::ToolUse {
    crate::cma::events::ToolUse {
        id: call.tool_use.id.clone(),
        name: call.tool_use.name.clone(),
        input: call.tool_use.input.clone(),
        custom: call.custom,
        needs_confirmation: false,
    }
}

/// A new tool-use id: `toolu_` and 24 random letters and digits. Minted here, never taken
/// from the model: some servers number calls from 0 in every answer, and the history keys
/// results by id.
fn new_call_id() -> String {
    format!("toolu_{}", crate::sandbox::names::random_alphanumeric(24))
}

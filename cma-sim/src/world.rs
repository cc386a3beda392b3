//! The simulated CMA: work items with leases, sessions with their event history, the
//! scripted agent that issues each session's tool calls and checks the results, and the
//! agent definitions of the Agents API ([`crate::agents`]).
//!
//! Everything is behind one mutex; the HTTP layer ([`crate::api`]) only translates.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast, mpsc};

use crate::report::{StepReport, WebhookReport};
use crate::scenario::{End, Scenario, SessionScript, Verdict};

/// Knobs of the simulator that are not part of a scenario.
#[derive(Debug, Clone)]
pub struct WorldConfig {
    /// The environment key workers must present (`Authorization: Bearer`).
    pub environment_key: String,
    /// The organization API key the Agents API takes (`ANTHROPIC_API_KEY`).
    pub api_key: String,
    /// Whether work items carry a per-item sessions token (`secret`).
    pub sessions_token: bool,
    /// The longest lease granted, whatever `desired_ttl_seconds` asks.
    pub max_ttl: Duration,
    /// How long a polled but unacknowledged item stays invisible to other polls.
    pub unacked_timeout: Duration,
    /// The delay before an `ask` call's verdict is posted.
    pub confirmation_delay: Duration,
}

impl Default for WorldConfig {
    fn default() -> Self {
        Self {
            environment_key: "sk-ant-oat01-cordon-sim".into(),
            api_key: "sk-ant-api03-cordon-sim".into(),
            sessions_token: true,
            max_ttl: Duration::from_secs(60),
            unacked_timeout: Duration::from_secs(30),
            confirmation_delay: Duration::from_millis(300),
        }
    }
}

/// A failure answer: status, error type, message, optional `error_code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub kind: &'static str,
    pub message: String,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            code: None,
        }
    }

    pub(crate) fn not_found(what: &str) -> Self {
        Self::new(404, "not_found_error", format!("{what} does not exist"))
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request_error", message)
    }
}

/// Who a request's credential is good for.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// Poll and ack: the environment key only.
    Environment,
    /// A work item's own calls: the environment key or the item's sessions token.
    Work(&'a str),
    /// A session's calls: the environment key or the sessions token of its work item.
    Session(&'a str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WorkState {
    Queued,
    Starting,
    Active,
    Stopping,
    Stopped,
}

impl WorkState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            WorkState::Queued => "queued",
            WorkState::Starting => "starting",
            WorkState::Active => "active",
            WorkState::Stopping => "stopping",
            WorkState::Stopped => "stopped",
        }
    }
}

#[derive(Debug)]
pub(crate) struct Lease {
    pub(crate) token: String,
    pub(crate) expires: Instant,
    /// When the holder last heartbeated.
    pub(crate) beat: Instant,
}

#[derive(Debug)]
pub(crate) struct WorkItem {
    pub(crate) id: String,
    pub(crate) session: String,
    pub(crate) state: WorkState,
    pub(crate) sessions_token: Option<String>,
    pub(crate) lease: Option<Lease>,
    pub(crate) handed_out: Option<Instant>,
    pub(crate) created_at: String,
    pub(crate) acknowledged_at: Option<String>,
    pub(crate) started_at: Option<String>,
    pub(crate) latest_heartbeat_at: Option<String>,
    pub(crate) stop_requested_at: Option<String>,
    pub(crate) stopped_at: Option<String>,
    pub(crate) force_stopped: bool,
    pub(crate) heartbeats: u64,
    pub(crate) lease_conflicts: u64,
    pub(crate) lease_expiries: u64,
}

#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) script: SessionScript,
    pub(crate) status: &'static str,
    pub(crate) events: Vec<Value>,
    pub(crate) live: broadcast::Sender<Value>,
    pub(crate) step: usize,
    pub(crate) steps: Vec<StepReport>,
    /// Tool-use id -> step index, for every call issued.
    pub(crate) issued: HashMap<String, usize>,
    pub(crate) answered: HashSet<String>,
    pub(crate) denied: HashSet<String>,
    pub(crate) ended: bool,
    pub(crate) created_at: String,
    /// The step waiting for a new turn: the session idled before it and resumes when the
    /// worker stops the current work item.
    pub(crate) awaiting_turn: Option<usize>,
    /// Steps whose new turn has begun.
    pub(crate) turns_begun: HashSet<usize>,
    /// The agent as it was when the session opened, if the script names one.
    pub(crate) agent: Option<Value>,
}

/// Faults the simulator injects (scenario `[faults]`), each a count of first occurrences.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// The first N polls answer 503.
    #[serde(default)]
    pub poll_errors: u32,
    /// The first N event posts answer 500 (nothing is recorded).
    #[serde(default)]
    pub send_errors: u32,
    /// The first N event streams are closed after their first event.
    #[serde(default)]
    pub stream_drops: u32,
    /// The first N agent reads (`GET /v1/agents/{id}`) are each followed by another client's
    /// edit of that agent, so an update based on them conflicts (409).
    #[serde(default)]
    pub agent_edit_races: u32,
    /// Once this many tool results are recorded, every API call answers 503 for `outage_ms`
    /// (a CMA outage in the middle of a session). Unset: none.
    #[serde(default)]
    pub outage_after_results: Option<u32>,
    /// How long the outage lasts.
    #[serde(default = "default_outage_ms")]
    pub outage_ms: u64,
}

fn default_outage_ms() -> u64 {
    60_000
}

#[derive(Debug, Default)]
pub(crate) struct Inner {
    pub(crate) work: Vec<WorkItem>,
    pub(crate) sessions: BTreeMap<String, Session>,
    /// Agents as the Agents API returns them, oldest first ([`crate::agents`]).
    pub(crate) agents: Vec<Value>,
    pub(crate) violations: Vec<String>,
    pub(crate) webhooks: Vec<WebhookReport>,
    pub(crate) calls: BTreeMap<String, u64>,
    pub(crate) next_id: u64,
    /// A random prefix that makes this run's event ids unique across runs.
    pub(crate) run: String,
    pub(crate) faults: Faults,
    /// Tool results recorded so far (for `outage_after_results`).
    pub(crate) results_recorded: u32,
    /// Until when the API answers 503, once the outage began.
    pub(crate) outage_until: Option<std::time::Instant>,
}

/// A webhook the delivery task should send: (event type, session id).
pub type Outgoing = (String, String);

/// The simulated CMA.
#[derive(Debug)]
pub struct World {
    pub environment_id: String,
    pub config: WorldConfig,
    inner: Mutex<Inner>,
    /// Signalled when a work item becomes pollable (blocked polls wake).
    pub(crate) queue_changed: Notify,
    /// Signalled whenever a report may have changed (the runner checks for completion).
    pub progress: Notify,
    webhooks: mpsc::UnboundedSender<Outgoing>,
    /// Webhooks queued and not yet settled.
    pub webhooks_pending: std::sync::atomic::AtomicUsize,
    /// A handle on itself, for tasks the world spawns (delayed confirmations).
    me: Weak<World>,
    scripts: Vec<SessionScript>,
    opened: std::sync::atomic::AtomicBool,
}

pub(crate) fn now() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}

/// Where a listing starts: 0, or the `page_<n>` cursor a previous page returned.
pub(crate) fn page_start(page: Option<&str>) -> Result<usize, ApiError> {
    match page {
        None => Ok(0),
        Some(cursor) => cursor
            .strip_prefix("page_")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| {
                ApiError::invalid(format!("page {cursor:?} is not a cursor this API returned"))
            }),
    }
}

pub(crate) fn random_token(prefix: &str) -> String {
    use rand::Rng as _;
    let suffix: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    format!("{prefix}{suffix}")
}

impl World {
    /// A 503 while the simulated outage lasts.
    pub(crate) fn outage(&self) -> Result<(), ApiError> {
        match self.lock().outage_until {
            Some(until) if std::time::Instant::now() < until => Err(ApiError::new(
                503,
                "overloaded_error",
                "simulated outage ([faults] outage_after_results)",
            )),
            _ => Ok(()),
        }
    }

    /// A world playing `scenario`; webhooks to deliver go to `webhooks`.
    pub fn new(
        scenario: &Scenario,
        config: WorldConfig,
        webhooks: mpsc::UnboundedSender<Outgoing>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            environment_id: scenario.environment_id.clone(),
            config,
            inner: Mutex::new(Inner {
                faults: scenario.faults.clone(),
                agents: crate::agents::seed(&scenario.agents),
                run: random_token(""),
                ..Default::default()
            }),
            queue_changed: Notify::new(),
            progress: Notify::new(),
            webhooks,
            webhooks_pending: Default::default(),
            me: me.clone(),
            opened: Default::default(),
            scripts: scenario.sessions.clone(),
        })
    }

    /// Whether the sessions were opened.
    pub fn opened(&self) -> bool {
        self.opened.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Opens the scenario's sessions (once; later calls do nothing).
    pub fn open_sessions(&self) {
        if self.opened.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        for script in &self.scripts {
            self.start_session(script.clone());
        }
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send_webhook(&self, kind: &str, session_id: &str) {
        self.webhooks_pending
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self
            .webhooks
            .send((kind.to_string(), session_id.to_string()))
            .is_err()
        {
            self.webhooks_pending
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Counts a call by route, for the report.
    pub fn count_call(&self, route: &str) {
        *self.lock().calls.entry(route.to_string()).or_default() += 1;
    }

    /// Opens a session: its history starts with the prompt and the first tool call; a work
    /// item is queued and `session.status_run_started` is sent.
    pub fn start_session(&self, script: SessionScript) {
        let id = script.id().to_string();
        {
            let mut inner = self.lock();
            inner.next_id += 1;
            self.queue_work(&mut inner, &id);
            let (live, _) = broadcast::channel(1024);
            let prompt = script
                .prompt
                .clone()
                .unwrap_or_else(|| "Run the scripted tool calls.".into());
            let steps = script
                .steps
                .iter()
                .enumerate()
                .map(|(index, step)| StepReport::pending(index, &step.tool))
                .collect();
            let agent = script
                .agent
                .as_deref()
                .and_then(|agent| crate::agents::snapshot(&inner, agent));
            inner.sessions.insert(
                id.clone(),
                Session {
                    script,
                    status: "running",
                    events: Vec::new(),
                    live,
                    step: 0,
                    steps,
                    issued: HashMap::new(),
                    answered: HashSet::new(),
                    denied: HashSet::new(),
                    ended: false,
                    created_at: now(),
                    awaiting_turn: None,
                    turns_begun: HashSet::new(),
                    agent,
                },
            );
            push(
                &mut inner,
                &id,
                json!({"type": "user.message", "content": [{"type": "text", "text": prompt}]}),
            );
            push(&mut inner, &id, json!({"type": "session.status_running"}));
        }
        self.emit_step(&id);
        self.queue_changed.notify_waiters();
        self.send_webhook("session.status_run_started", &id);
    }

    /// Queues a new work item for session `id`.
    fn queue_work(&self, inner: &mut Inner, id: &str) {
        let sessions_token = self
            .config
            .sessions_token
            .then(|| random_token("sk-ant-sesn-sim-"));
        inner.work.push(WorkItem {
            id: random_token("work_"),
            session: id.to_string(),
            state: WorkState::Queued,
            sessions_token,
            lease: None,
            handed_out: None,
            created_at: now(),
            acknowledged_at: None,
            started_at: None,
            latest_heartbeat_at: None,
            stop_requested_at: None,
            stopped_at: None,
            force_stopped: false,
            heartbeats: 0,
            lease_conflicts: 0,
            lease_expiries: 0,
        });
    }

    /// A work item of `session_id` stopped: if the session idled waiting for its next turn,
    /// the user sends the next message now, and a new work item brings it.
    pub(crate) fn work_stopped(&self, session_id: &str) {
        {
            let mut inner = self.lock();
            let Some(index) = inner
                .sessions
                .get_mut(session_id)
                .and_then(|s| s.awaiting_turn.take())
            else {
                return;
            };
            if let Some(session) = inner.sessions.get_mut(session_id) {
                session.turns_begun.insert(index);
                session.status = "running";
            }
            push(
                &mut inner,
                session_id,
                json!({"type": "user.message", "content": [{"type": "text", "text": "Carry on."}]}),
            );
            push(
                &mut inner,
                session_id,
                json!({"type": "session.status_running"}),
            );
            self.queue_work(&mut inner, session_id);
        }
        self.emit_step(session_id);
        self.queue_changed.notify_waiters();
        self.send_webhook("session.status_run_started", session_id);
    }

    /// Issues the session's current step, or ends the session when the steps are done.
    pub(crate) fn emit_step(&self, session_id: &str) {
        let mut delayed = None;
        let mut ended = None;
        {
            let mut inner = self.lock();
            let Some(session) = inner.sessions.get(session_id) else {
                return;
            };
            let index = session.step;
            let new_turn = session
                .script
                .steps
                .get(index)
                .is_some_and(|step| step.after_idle && !session.turns_begun.contains(&index));
            match session.script.steps.get(index).cloned() {
                Some(_) if new_turn => {
                    end_turn(&mut inner, session_id, "Done for this turn.");
                    if let Some(session) = inner.sessions.get_mut(session_id) {
                        session.status = "idle";
                        session.awaiting_turn = Some(index);
                    }
                    ended = Some("session.status_idled");
                }
                Some(step) => {
                    let call_id = format!("{}_{}", random_token("toolu_"), index + 1);
                    let mut event = json!({
                        "type": if step.custom { "agent.custom_tool_use" } else { "agent.tool_use" },
                        "id": call_id,
                        "name": step.tool,
                        "input": step.input,
                    });
                    if let Some(session) = inner.sessions.get_mut(session_id) {
                        session.issued.insert(call_id.clone(), index);
                        session.steps[index].tool_use_id = Some(call_id.clone());
                    }
                    if let Some(verdict) = step.ask {
                        event["evaluated_permission"] = "ask".into();
                        push(&mut inner, session_id, event);
                        push(
                            &mut inner,
                            session_id,
                            json!({"type": "session.status_idle", "stop_reason": {"type": "requires_action", "event_ids": [call_id]}}),
                        );
                        delayed = Some((call_id, verdict));
                    } else {
                        event["evaluated_permission"] = "allow".into();
                        push(&mut inner, session_id, event);
                    }
                }
                None => {
                    end_turn(&mut inner, session_id, "All scripted tool calls are done.");
                    let terminate = inner
                        .sessions
                        .get(session_id)
                        .is_some_and(|s| s.script.end == End::Terminate);
                    if terminate {
                        push(
                            &mut inner,
                            session_id,
                            json!({"type": "session.status_terminated"}),
                        );
                    }
                    if let Some(session) = inner.sessions.get_mut(session_id) {
                        session.status = if terminate { "terminated" } else { "idle" };
                        session.ended = true;
                    }
                    ended = Some(if terminate {
                        "session.status_terminated"
                    } else {
                        "session.status_idled"
                    });
                }
            }
        }
        if let Some(kind) = ended {
            self.send_webhook(kind, session_id);
            self.progress.notify_waiters();
        }
        if let Some((call_id, verdict)) = delayed {
            self.confirm_later(session_id.to_string(), call_id, verdict);
        }
    }

    /// Posts the user's verdict on an `ask` call after a while, as a person would.
    fn confirm_later(&self, session_id: String, call_id: String, verdict: Verdict) {
        let delay = self.config.confirmation_delay;
        let this = self.me.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let Some(world) = this.upgrade() else { return };
            let deny = verdict == Verdict::Deny;
            {
                let mut inner = world.lock();
                push(
                    &mut inner,
                    &session_id,
                    json!({"type": "user.tool_confirmation", "tool_use_id": call_id, "result": if deny { "deny" } else { "allow" }}),
                );
                push(
                    &mut inner,
                    &session_id,
                    json!({"type": "session.status_running"}),
                );
                if deny && let Some(session) = inner.sessions.get_mut(&session_id) {
                    session.denied.insert(call_id.clone());
                    if let Some(&index) = session.issued.get(&call_id) {
                        session.steps[index].outcome = "denied";
                    }
                    session.step += 1;
                }
            }
            if deny {
                world.emit_step(&session_id);
            }
            world.progress.notify_waiters();
        });
    }
}

/// The agent's closing message and `session.status_idle` (end_turn).
fn end_turn(inner: &mut Inner, session_id: &str, text: &str) {
    push(
        inner,
        session_id,
        json!({"type": "agent.message", "content": [{"type": "text", "text": text}]}),
    );
    push(
        inner,
        session_id,
        json!({"type": "session.status_idle", "stop_reason": {"type": "end_turn"}}),
    );
}

/// Appends an event to a session's history (with its id and time) and sends it live.
pub(crate) fn push(inner: &mut Inner, session_id: &str, mut event: Value) -> Value {
    inner.next_id += 1;
    if !event["id"].is_string() {
        event["id"] = Value::String(format!("sevt_{}{}", inner.run, inner.next_id));
    }
    event["processed_at"] = Value::String(now());
    if let Some(session) = inner.sessions.get_mut(session_id) {
        session.events.push(event.clone());
        let _ = session.live.send(event.clone());
    }
    event
}

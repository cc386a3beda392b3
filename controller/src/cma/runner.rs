//! The session runner: answers a CMA session's tool calls through its sandbox, each exactly
//! once (../shared/CMA.md, "Serving a session").
//!
//! On every (re)connect the runner opens the event stream first, then reconciles with the
//! whole event history, so a call that arrived before or between connections is answered and
//! one already answered (a `user.tool_result` for its id is in the history) is not. A call with
//! `evaluated_permission: ask` waits for its `user.tool_confirmation`: `allow` runs it, `deny`
//! never does. The runner ends when the session terminates, or `max_idle` after the session
//! went idle with any stop reason but `requires_action`.
//!
//! A tool that ran but whose result post was lost (the controller died in between) runs again
//! on the next reconcile: CMA's history is the only record of what was answered.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::client::{CmaClient, CmaError, Work};
use super::events::{SessionEvent, StreamItem, ToolUse, tool_result_content};
use crate::tools::reply::ToolReply;
use cordon_sandbox_agent::tools::{ToolCall, ToolResult};

/// Runs a tool call somewhere (the session's sandbox agent; a fake in tests).
#[async_trait]
pub trait ToolExecutor: Send + Sync {
    async fn call(&self, call: &ToolCall) -> ToolResult;

    /// Answers an `agent.custom_tool_use` (`call.custom`): the operator's custom tools
    /// (docs/TOOLS.md). An executor that serves none says so.
    async fn custom(&self, call: &ToolUse) -> ToolReply {
        ToolReply::error(format!(
            "[cordon] {:?} is a custom tool, and this environment serves no custom tools \
             ([controller] tools is not set)",
            call.name
        ))
    }

    /// Told of each call once it has its reply, before the reply is posted (the dashboard's
    /// session timeline); `started` is when it began, `took` how long it ran. Nothing by
    /// default.
    fn journal(&self, _call: &ToolUse, _reply: &ToolReply, _started: SystemTime, _took: Duration) {}
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// `session.status_terminated`.
    Terminated,
    /// Idle (turn ended) for `max_idle` with nothing outstanding.
    Idle,
}

/// The runner's knobs.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub max_idle: Duration,
    /// Reconnect backoff: starts at `backoff_start`, doubles, at most `backoff_max`.
    pub backoff_start: Duration,
    pub backoff_max: Duration,
    /// How long a tool result's post is retried through CMA errors before the run gives up
    /// (and the work item, once its lease lapses, is served again from the history).
    pub result_post_patience: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            max_idle: Duration::from_secs(60),
            backoff_start: Duration::from_millis(500),
            backoff_max: Duration::from_secs(10),
            result_post_patience: Duration::from_secs(120),
        }
    }
}

/// What the runner knows about the session.
#[derive(Debug, Default)]
struct State {
    answered: HashSet<String>,
    /// `allow` / `deny` verdicts by tool-use id.
    verdicts: HashMap<String, bool>,
    /// Calls held for a verdict.
    held: HashMap<String, ToolUse>,
    /// Whether the last (non-neutral) event ended the turn.
    turn_ended: bool,
    terminated: bool,
    /// Tool calls run (for reports and tests).
    calls_run: u64,
}

impl State {
    /// Takes one event into account; returns a call to run now, if it is one.
    fn observe(&mut self, event: &SessionEvent) -> Option<ToolUse> {
        if !event.is_neutral() {
            self.turn_ended = event.ends_turn();
        }
        match event {
            SessionEvent::ToolResult { tool_use_id } => {
                self.answered.insert(tool_use_id.clone());
                self.held.remove(tool_use_id);
            }
            SessionEvent::ToolConfirmation { tool_use_id, allow } => {
                self.verdicts.insert(tool_use_id.clone(), *allow);
                if let Some(call) = self.held.remove(tool_use_id) {
                    return allow.then_some(call);
                }
            }
            SessionEvent::StatusTerminated => self.terminated = true,
            SessionEvent::ToolUse(call) => {
                if self.answered.contains(&call.id) {
                    return None;
                }
                if call.needs_confirmation {
                    match self.verdicts.get(&call.id) {
                        Some(true) => return Some(call.clone()),
                        Some(false) => return None,
                        None => {
                            self.held.insert(call.id.clone(), call.clone());
                            return None;
                        }
                    }
                }
                return Some(call.clone());
            }
            SessionEvent::Malformed { kind, problem } => {
                tracing::warn!(kind, problem, "ignoring a malformed session event");
            }
            SessionEvent::StatusIdle { .. }
            | SessionEvent::StatusRunning
            | SessionEvent::ThreadTerminated
            | SessionEvent::Other { .. } => {}
        }
        None
    }

    fn outstanding(&self) -> bool {
        !self.held.is_empty()
    }
}

/// Serves session `session` of `work` until it terminates or idles out.
pub async fn run_session(
    client: &CmaClient,
    work: &Work,
    session: &str,
    tools: &dyn ToolExecutor,
    config: &RunnerConfig,
) -> Result<(RunEnd, u64), CmaError> {
    let mut state = State::default();
    let serving = Serving {
        client,
        work,
        session,
        tools,
        patience: config.result_post_patience,
    };
    let mut backoff = config.backoff_start;
    loop {
        // The stream first, so nothing emitted during the reconcile is lost.
        let (tx, mut rx) = mpsc::channel::<StreamItem>(256);
        let stream_client = client.clone();
        let stream_work = work.clone();
        let stream_session = session.to_string();
        let stream = tokio::spawn(async move {
            stream_client
                .stream_events(&stream_work, &stream_session, |item| {
                    tx.try_send(item).is_ok()
                })
                .await
        });
        let history = match client.all_events(work, session).await {
            Ok(h) => h,
            Err(e) if e.is_retryable() => {
                stream.abort();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(config.backoff_max);
                continue;
            }
            Err(e) => {
                stream.abort();
                return Err(e);
            }
        };
        let mut due = Vec::new();
        for event in &history {
            if let Some(call) = state.observe(&SessionEvent::parse(event)) {
                due.push(call);
            }
        }
        // Calls answered later in the same history are not due.
        due.retain(|c| !state.answered.contains(&c.id));
        for call in due {
            answer(&serving, &mut state, &call).await?;
        }
        if state.terminated {
            stream.abort();
            return Ok((RunEnd::Terminated, state.calls_run));
        }
        // Live events until the stream ends (then reconnect) or the session is done.
        loop {
            let idle = state.turn_ended && !state.outstanding();
            let next = if idle {
                match tokio::time::timeout(config.max_idle, rx.recv()).await {
                    Ok(item) => item,
                    Err(_) => {
                        stream.abort();
                        return Ok((RunEnd::Idle, state.calls_run));
                    }
                }
            } else {
                rx.recv().await
            };
            match next {
                Some(StreamItem::Event(event)) => {
                    backoff = config.backoff_start;
                    if let Some(call) = state.observe(&event) {
                        answer(&serving, &mut state, &call).await?;
                    }
                    if state.terminated {
                        stream.abort();
                        return Ok((RunEnd::Terminated, state.calls_run));
                    }
                }
                Some(StreamItem::Error(message)) => {
                    tracing::warn!(session, %message, "event stream error; reconnecting");
                    break;
                }
                None => break,
            }
        }
        stream.abort();
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(config.backoff_max);
    }
}

/// What answering a call needs besides the call.
struct Serving<'a> {
    client: &'a CmaClient,
    work: &'a Work,
    session: &'a str,
    tools: &'a dyn ToolExecutor,
    /// [`RunnerConfig::result_post_patience`].
    patience: Duration,
}

/// Runs `call` and posts its result, retrying the post through retryable errors.
async fn answer(serving: &Serving<'_>, state: &mut State, call: &ToolUse) -> Result<(), CmaError> {
    let Serving {
        client,
        work,
        session,
        tools,
        patience,
    } = *serving;
    // A custom tool is the operator's, not the toolset's: never run in the session's
    // sandbox, even when its name is one of the toolset's.
    let started = SystemTime::now();
    let clock = tokio::time::Instant::now();
    let reply = if call.custom {
        tools.custom(call).await
    } else {
        let result = tools
            .call(&ToolCall {
                name: call.name.clone(),
                input: call.input.clone(),
            })
            .await;
        ToolReply::text(result.is_error, result.text)
    };
    state.calls_run += 1;
    tools.journal(call, &reply, started, clock.elapsed());
    let mut event = tool_result_content(call, reply.is_error, reply.content);
    let mut refused_once = false;
    // A result is work done: keep trying to post it through an outage (a 4xx other than 408
    // or 429 is final), for as long as `result_post_patience` allows. The lease decides
    // meanwhile: when it is lost, the heartbeat ends the whole run.
    let began = tokio::time::Instant::now();
    let mut wait = Duration::from_millis(500);
    loop {
        match client.send_events(work, session, vec![event.clone()]).await {
            Ok(()) => {
                state.answered.insert(call.id.clone());
                return Ok(());
            }
            // Not a 409: for a result it means the call is answered or gone, and a repeat
            // could answer it twice.
            Err(e)
                if e.is_retryable()
                    && !matches!(e, CmaError::Status { status: 409, .. })
                    && began.elapsed() + wait < patience =>
            {
                tracing::warn!(session, call = %call.id, error = %e, retry_in_ms = wait.as_millis() as u64, "posting a tool result failed; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            // CMA refused the result itself (a 4xx that is not about timing or state: too
            // large, a block it does not take). Answer the call with an error saying so, once,
            // rather than leave it unanswered for every later work item to run again.
            Err(CmaError::Status {
                status,
                kind,
                message,
                ..
            }) if (400..500).contains(&status)
                && !matches!(status, 401 | 403 | 404 | 408 | 409 | 412 | 429)
                && !refused_once =>
            {
                refused_once = true;
                tracing::warn!(session, call = %call.id, status, %kind, %message, "CMA refused a tool result; answering with an error instead");
                event = tool_result_content(
                    call,
                    true,
                    vec![serde_json::json!({"type": "text", "text": format!(
                        "[cordon] the tool ran, but CMA refused its result ({status} {kind}: \
                         {message}); it was not delivered"
                    )})],
                );
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn ev(event: Value) -> SessionEvent {
        SessionEvent::parse(&event)
    }

    fn call(id: &str, ask: bool) -> Value {
        let mut e = serde_json::json!({"type": "agent.tool_use", "id": id, "name": "bash", "input": {"command": "ls"}});
        if ask {
            e["evaluated_permission"] = "ask".into();
        }
        e
    }

    #[test]
    fn history_decides_what_is_due() {
        let mut s = State::default();
        assert!(s.observe(&ev(call("a", false))).is_some());
        s.observe(&ev(
            serde_json::json!({"type": "user.tool_result", "tool_use_id": "a"}),
        ));
        assert!(s.observe(&ev(call("a", false))).is_none(), "answered once");
        // Ask-gated: held, released by allow, dropped by deny.
        assert!(s.observe(&ev(call("b", true))).is_none());
        assert!(s.outstanding());
        let released = s.observe(&ev(serde_json::json!({"type": "user.tool_confirmation", "tool_use_id": "b", "result": "allow"})));
        assert_eq!(released.unwrap().id, "b");
        assert!(s.observe(&ev(call("c", true))).is_none());
        assert!(s.observe(&ev(serde_json::json!({"type": "user.tool_confirmation", "tool_use_id": "c", "result": "deny"}))).is_none());
        assert!(!s.outstanding());
        // A verdict seen before its call.
        s.observe(&ev(serde_json::json!({"type": "user.tool_confirmation", "tool_use_id": "d", "result": "allow"})));
        assert!(s.observe(&ev(call("d", true))).is_some());
        // Idle: any stop reason but requires_action ends the turn; confirmations are neutral.
        s.observe(&ev(
            serde_json::json!({"type": "session.status_idle", "stop_reason": {"type": "end_turn"}}),
        ));
        assert!(s.turn_ended);
        s.observe(&ev(serde_json::json!({"type": "user.tool_confirmation", "tool_use_id": "z", "result": "deny"})));
        assert!(s.turn_ended);
        s.observe(&ev(serde_json::json!({"type": "session.status_idle", "stop_reason": {"type": "requires_action"}})));
        assert!(!s.turn_ended);
        s.observe(&ev(
            serde_json::json!({"type": "session.status_terminated"}),
        ));
        assert!(s.terminated);
    }
}

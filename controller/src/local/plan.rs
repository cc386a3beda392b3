//! What a local session does next, read from its history alone: the loop records every step
//! as an event before it acts, so after a restart the same history gives the same next step,
//! and a tool call whose execution had started is never run again.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::agent::Agent;
use super::events::{Event, Permission, StopReason, Stored, ToolUse, Verdict};

/// A call and whether it is a custom tool's.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub tool_use: ToolUse,
    pub custom: bool,
}

/// A call answered without running.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub call: Call,
    pub text: String,
}

/// The next step.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Nothing to do until a client sends an event.
    Wait,
    /// The session was archived: the loop ends.
    Done,
    /// A user message or a verdict arrived while idle: the session runs again.
    Begin,
    /// These calls are answered with an error and never run.
    Refuse(Vec<Refusal>),
    /// These calls run now (each recorded as started first).
    Run(Vec<Call>),
    /// Calls wait for `user.tool_confirmation`.
    AwaitConfirmation(Vec<String>),
    /// The conversation goes to the model; `turn` is this run's model turn (1-based).
    CallModel { turn: u32 },
    /// The run stops.
    Idle(StopReason),
}

/// A call as the fold saw it.
#[derive(Debug, Clone, Copy)]
struct SeenCall<'a> {
    tool_use: &'a ToolUse,
    custom: bool,
}

impl SeenCall<'_> {
    fn owned(&self) -> Call {
        Call {
            tool_use: self.tool_use.clone(),
            custom: self.custom,
        }
    }
}

/// What the history says, folded once.
#[derive(Debug, Default)]
struct Fold<'a> {
    terminated: bool,
    /// A `session.status_running` with no `status_idle` after it.
    running: bool,
    /// Something arrived that needs the session running again: a verdict while idle, or a
    /// user message the model has not been asked about yet (one sent in the last moments of a
    /// run counts too).
    wake: bool,
    /// A user message no model request has carried yet.
    unasked: bool,
    /// A model request was recorded as started and not as ended: the controller stopped while
    /// it was out (the live loop records the end, however the request ends).
    in_flight: bool,
    /// The last idle was for confirmations.
    awaiting: bool,
    interrupted: bool,
    /// Calls of the session in order (borrowed: the history is folded several times a turn,
    /// and only the calls a step acts on are copied).
    calls: Vec<SeenCall<'a>>,
    answered: HashSet<&'a str>,
    started: HashSet<&'a str>,
    verdicts: HashMap<&'a str, (Verdict, Option<&'a str>)>,
    /// Model turns since the last user message.
    turns: u32,
    /// When the session last went running (`processed_at`): the run clock starts there, and
    /// again after each wait for a person.
    run_started: Option<&'a str>,
    /// Whether anything the model has not seen came after its last request (a user message,
    /// tool results), or its last request failed.
    model_owes: bool,
}

fn fold(history: &[Stored]) -> Fold<'_> {
    let mut f = Fold::default();
    for stored in history {
        match &stored.event {
            Event::UserMessage { .. } => {
                // While calls wait for a verdict the message waits too: it is answered once
                // they have theirs (waking now would only wait for them again, and again).
                f.wake |= !f.running && !f.awaiting;
                f.unasked = true;
                f.turns = 0;
                f.model_owes = true;
            }
            Event::ToolConfirmation {
                tool_use_id,
                result,
                deny_message,
            } => {
                f.verdicts
                    .insert(tool_use_id, (*result, deny_message.as_deref()));
                f.wake |= !f.running;
            }
            Event::UserInterrupt {} => {
                // Running: what is in flight stops. Waiting for verdicts: the held calls are
                // answered as not run, and the run ends.
                if f.running || f.awaiting {
                    f.interrupted = true;
                    f.wake |= f.awaiting;
                }
            }
            Event::StatusRunning {} => {
                f.running = true;
                f.wake = false;
                f.awaiting = false;
                f.run_started = Some(&stored.processed_at);
            }
            Event::StatusIdle { stop_reason } => {
                f.running = false;
                f.interrupted = false;
                f.awaiting = matches!(stop_reason, StopReason::RequiresAction { .. });
                // A message that came while the run was ending still gets its answer (after
                // the verdicts, when calls wait for some).
                f.wake = f.unasked && !f.awaiting;
            }
            Event::ModelRequestStart { .. } => {
                f.model_owes = false;
                f.unasked = false;
                f.in_flight = true;
            }
            Event::ModelRequestEnd { is_error, .. } => {
                f.in_flight = false;
                if *is_error {
                    f.model_owes = true;
                } else {
                    f.turns += 1;
                }
            }
            Event::ToolUse(call) => f.calls.push(SeenCall {
                tool_use: call,
                custom: false,
            }),
            Event::CustomToolUse(call) => f.calls.push(SeenCall {
                tool_use: call,
                custom: true,
            }),
            Event::ToolExecutionStart { tool_use_id } => {
                f.started.insert(tool_use_id);
            }
            Event::ToolResult { tool_use_id, .. }
            | Event::CustomToolResult {
                custom_tool_use_id: tool_use_id,
                ..
            } => {
                f.answered.insert(tool_use_id);
                f.model_owes = true;
            }
            Event::StatusTerminated {} => f.terminated = true,
            Event::AgentMessage { .. } | Event::SessionError { .. } => {}
        }
    }
    f
}

/// Whether the user interrupted the running session, or it was archived: what is in flight
/// stops.
pub fn stop_pending(history: &[Stored]) -> bool {
    let f = fold(history);
    f.terminated || f.interrupted
}

/// When the current run must stop (`limits.max_run_secs` after it went running), if it is
/// running.
pub fn run_deadline(history: &[Stored], agent: &Agent) -> Option<time::OffsetDateTime> {
    let f = fold(history);
    if !f.running {
        return None;
    }
    let started = time::OffsetDateTime::parse(
        f.run_started?,
        &time::format_description::well_known::Rfc3339,
    )
    .ok()?;
    started.checked_add(time::Duration::try_from(agent.max_run).ok()?)
}

/// The calls waiting for a `user.tool_confirmation` now: held by the last idle
/// (`requires_action`) and given no verdict since.
pub fn awaiting(history: &[Stored]) -> Vec<String> {
    let f = fold(history);
    if f.running || !f.awaiting {
        return Vec::new();
    }
    f.calls
        .iter()
        .filter(|c| c.tool_use.evaluated_permission == Permission::Ask)
        .map(|c| c.tool_use.id.as_str())
        .filter(|id| !f.answered.contains(id) && !f.verdicts.contains_key(id))
        .map(str::to_string)
        .collect()
}

/// Seconds since `processed_at` (RFC 3339), if it parses.
fn age(processed_at: &str, now: time::OffsetDateTime) -> Option<Duration> {
    let then =
        time::OffsetDateTime::parse(processed_at, &time::format_description::well_known::Rfc3339)
            .ok()?;
    Duration::try_from(now - then).ok()
}

/// The next step for `history` under `agent`'s limits, at `now`.
pub fn next(history: &[Stored], agent: &Agent, now: time::OffsetDateTime) -> Step {
    let f = fold(history);
    if f.terminated {
        return Step::Done;
    }
    if !f.running {
        return if f.wake { Step::Begin } else { Step::Wait };
    }
    let open: Vec<&SeenCall<'_>> = f
        .calls
        .iter()
        .filter(|c| !f.answered.contains(c.tool_use.id.as_str()))
        .collect();
    let expired = f
        .run_started
        .and_then(|t| age(t, now))
        .is_some_and(|a| a >= agent.max_run);
    if f.interrupted || expired {
        let (reason, why) = if f.interrupted {
            (
                StopReason::Interrupted {},
                "the user interrupted the session",
            )
        } else {
            (
                StopReason::MaxRunTime {},
                "the run reached limits.max_run_secs",
            )
        };
        if open.is_empty() {
            return Step::Idle(reason);
        }
        return Step::Refuse(
            open.into_iter()
                .map(|call| Refusal {
                    call: call.owned(),
                    text: if f.started.contains(call.tool_use.id.as_str()) {
                        format!(
                            "[cordon] {why} while this call ran; its result is lost (what it \
                             did before then stays done)"
                        )
                    } else {
                        format!("[cordon] {why}; this call did not run")
                    },
                })
                .collect(),
        );
    }
    if f.in_flight {
        // The request that was out when the controller stopped is asked again.
        return Step::CallModel { turn: f.turns + 1 };
    }
    let mut refusals = Vec::new();
    let mut runnable = Vec::new();
    let mut held = Vec::new();
    // Calls run in the model's order: none after a call that waits for a verdict runs
    // before it (a `write` held for confirmation, then the `bash` that runs what it wrote).
    let mut blocked = false;
    for call in open {
        let id = call.tool_use.id.as_str();
        if let Some(why) = &call.tool_use.refusal {
            refusals.push(Refusal {
                call: call.owned(),
                text: why.clone(),
            });
        } else if f.started.contains(id) {
            refusals.push(Refusal {
                call: call.owned(),
                text: format!(
                    "[cordon] the controller restarted while {} was running; it is not run \
                     again, so that it never runs twice. Check what it did before repeating it.",
                    call.tool_use.name
                ),
            });
        } else if call.tool_use.evaluated_permission == Permission::Ask {
            match f.verdicts.get(id) {
                Some((Verdict::Allow, _)) if !blocked => runnable.push(call.owned()),
                Some((Verdict::Allow, _)) => {}
                Some((Verdict::Deny, message)) => refusals.push(Refusal {
                    call: call.owned(),
                    text: match message {
                        Some(m) => format!("[cordon] the user denied this call: {m}"),
                        None => "[cordon] the user denied this call".into(),
                    },
                }),
                None => {
                    held.push(id.to_string());
                    blocked = true;
                }
            }
        } else if !blocked {
            runnable.push(call.owned());
        }
    }
    if !refusals.is_empty() {
        return Step::Refuse(refusals);
    }
    if !runnable.is_empty() {
        return Step::Run(runnable);
    }
    if !held.is_empty() {
        return if f.awaiting {
            Step::Wait
        } else {
            Step::AwaitConfirmation(held)
        };
    }
    if !f.model_owes {
        return Step::Idle(StopReason::EndTurn {});
    }
    if f.turns >= agent.max_turns {
        return Step::Idle(StopReason::MaxTurns {});
    }
    Step::CallModel { turn: f.turns + 1 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::agent::AgentSpec;
    use crate::local::events::{Usage, text};
    use serde_json::json;

    fn agent() -> Agent {
        AgentSpec::from_toml(
            "name = \"a\"\nmodel = { base_url = \"http://m/v1\", name = \"m\" }\nlimits = { max_turns = 3 }\n",
        )
        .unwrap()
        .check(None)
        .unwrap()
    }

    /// The events as stored; each model request's end gets its start, as the loop records
    /// them.
    fn at(events: Vec<Event>) -> Vec<Stored> {
        let mut whole = Vec::new();
        let mut asking = false;
        for event in events {
            match event {
                Event::ModelRequestStart { .. } => asking = true,
                Event::ModelRequestEnd { .. } if !asking => {
                    whole.push(Event::ModelRequestStart { model: "m".into() });
                }
                Event::ModelRequestEnd { .. } => asking = false,
                _ => {}
            }
            whole.push(event);
        }
        whole
            .into_iter()
            .enumerate()
            .map(|(i, event)| Stored {
                seq: i as i64,
                id: format!("sevt_{i}"),
                processed_at: "2026-12-05T00:00:00Z".into(),
                event,
            })
            .collect()
    }

    fn now() -> time::OffsetDateTime {
        time::OffsetDateTime::parse(
            "2026-12-05T00:00:10Z",
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
    }

    fn call(id: &str, ask: bool) -> Event {
        Event::ToolUse(ToolUse {
            id: id.into(),
            name: "bash".into(),
            input: json!({"command": "ls"}),
            evaluated_permission: if ask {
                Permission::Ask
            } else {
                Permission::Allow
            },
            raw_arguments: None,
            refusal: None,
        })
    }

    fn end() -> Event {
        Event::ModelRequestEnd {
            is_error: false,
            model_usage: Usage::default(),
            finish_reason: None,
            duration_ms: 1,
        }
    }

    fn result(id: &str) -> Event {
        Event::ToolResult {
            tool_use_id: id.into(),
            is_error: false,
            content: text("ok"),
        }
    }

    fn message() -> Event {
        Event::UserMessage {
            content: text("go"),
        }
    }

    #[test]
    fn a_turn_goes_message_model_tools_model_idle() {
        let a = agent();
        let mut h = vec![message()];
        assert_eq!(next(&at(h.clone()), &a, now()), Step::Begin);
        h.push(Event::StatusRunning {});
        assert_eq!(next(&at(h.clone()), &a, now()), Step::CallModel { turn: 1 });
        h.extend([end(), call("c1", false), call("c2", false)]);
        let Step::Run(calls) = next(&at(h.clone()), &a, now()) else {
            panic!()
        };
        assert_eq!(calls.len(), 2, "parallel calls run together");
        h.extend([
            Event::ToolExecutionStart {
                tool_use_id: "c1".into(),
            },
            Event::ToolExecutionStart {
                tool_use_id: "c2".into(),
            },
            result("c1"),
            result("c2"),
        ]);
        assert_eq!(next(&at(h.clone()), &a, now()), Step::CallModel { turn: 2 });
        h.push(end());
        assert_eq!(
            next(&at(h.clone()), &a, now()),
            Step::Idle(StopReason::EndTurn {})
        );
        h.push(Event::StatusIdle {
            stop_reason: StopReason::EndTurn {},
        });
        assert_eq!(next(&at(h), &a, now()), Step::Wait);
    }

    #[test]
    fn a_call_started_before_a_restart_is_answered_not_run_again() {
        let a = agent();
        let h = vec![
            message(),
            Event::StatusRunning {},
            end(),
            call("c1", false),
            call("c2", false),
            Event::ToolExecutionStart {
                tool_use_id: "c1".into(),
            },
        ];
        let Step::Refuse(refused) = next(&at(h.clone()), &a, now()) else {
            panic!()
        };
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].call.tool_use.id, "c1");
        assert!(refused[0].text.contains("not run again"));
        let mut h = h;
        h.push(Event::ToolResult {
            tool_use_id: "c1".into(),
            is_error: true,
            content: text("x"),
        });
        let Step::Run(calls) = next(&at(h), &a, now()) else {
            panic!()
        };
        assert_eq!(
            calls[0].tool_use.id, "c2",
            "the call that never started runs"
        );
    }

    #[test]
    fn ask_calls_wait_for_a_verdict() {
        let a = agent();
        let mut h = vec![message(), Event::StatusRunning {}, end(), call("c1", true)];
        assert_eq!(
            next(&at(h.clone()), &a, now()),
            Step::AwaitConfirmation(vec!["c1".into()])
        );
        h.push(Event::StatusIdle {
            stop_reason: StopReason::RequiresAction {
                event_ids: vec!["c1".into()],
            },
        });
        assert_eq!(next(&at(h.clone()), &a, now()), Step::Wait);
        let mut denied = h.clone();
        h.push(Event::ToolConfirmation {
            tool_use_id: "c1".into(),
            result: Verdict::Allow,
            deny_message: None,
        });
        assert_eq!(next(&at(h.clone()), &a, now()), Step::Begin);
        h.push(Event::StatusRunning {});
        assert!(matches!(next(&at(h), &a, now()), Step::Run(_)));
        denied.extend([
            Event::ToolConfirmation {
                tool_use_id: "c1".into(),
                result: Verdict::Deny,
                deny_message: Some("not on prod".into()),
            },
            Event::StatusRunning {},
        ]);
        let Step::Refuse(r) = next(&at(denied), &a, now()) else {
            panic!()
        };
        assert!(r[0].text.contains("not on prod"));
    }

    #[test]
    fn limits_end_the_run() {
        let a = agent();
        let mut h = vec![message(), Event::StatusRunning {}];
        for i in 0..3 {
            h.extend([
                end(),
                call(&format!("c{i}"), false),
                result(&format!("c{i}")),
            ]);
        }
        assert_eq!(
            next(&at(h.clone()), &a, now()),
            Step::Idle(StopReason::MaxTurns {})
        );
        let mut stored = at(vec![message(), Event::StatusRunning {}]);
        stored[1].processed_at = "2026-12-04T00:00:00Z".into();
        assert_eq!(
            next(&stored, &a, now()),
            Step::Idle(StopReason::MaxRunTime {})
        );
    }

    #[test]
    fn a_message_sent_while_the_model_answers_is_not_lost() {
        let a = agent();
        let h = vec![
            message(),
            Event::StatusRunning {},
            Event::ModelRequestStart { model: "m".into() },
            message(),
            end(),
        ];
        // The answer had no calls, but the model has not seen the second message.
        assert_eq!(next(&at(h), &a, now()), Step::CallModel { turn: 2 });
        // Sent as the run was ending: the session runs again.
        let h = vec![
            message(),
            Event::StatusRunning {},
            Event::ModelRequestStart { model: "m".into() },
            end(),
            message(),
            Event::StatusIdle {
                stop_reason: StopReason::EndTurn {},
            },
        ];
        assert_eq!(next(&at(h), &a, now()), Step::Begin);
        // A failed request consumed its message: no loop of retries by itself.
        let failed = vec![
            message(),
            Event::StatusRunning {},
            Event::ModelRequestStart { model: "m".into() },
            Event::ModelRequestEnd {
                is_error: true,
                model_usage: Usage::default(),
                finish_reason: None,
                duration_ms: 1,
            },
            Event::StatusIdle {
                stop_reason: StopReason::RetriesExhausted {},
            },
        ];
        assert_eq!(next(&at(failed), &a, now()), Step::Wait);
    }

    #[test]
    fn the_run_clock_restarts_after_a_wait_for_a_person_and_stops_calls_in_flight() {
        let a = agent();
        let mut h = at(vec![
            message(),
            Event::StatusRunning {},
            end(),
            call("c1", true),
            Event::StatusIdle {
                stop_reason: StopReason::RequiresAction {
                    event_ids: vec!["c1".into()],
                },
            },
            Event::ToolConfirmation {
                tool_use_id: "c1".into(),
                result: Verdict::Allow,
                deny_message: None,
            },
            Event::StatusRunning {},
        ]);
        let runs: Vec<usize> = (0..h.len())
            .filter(|i| h[*i].event == Event::StatusRunning {})
            .collect();
        // The first run began a day ago; the person answered just now.
        h[runs[0]].processed_at = "2026-12-04T00:00:00Z".into();
        assert!(matches!(next(&h, &a, now()), Step::Run(_)));
        assert!(run_deadline(&h, &a).unwrap() > now());
        // The clock ran out while c1 ran: its result is lost, said so, then the run stops.
        h[runs[1]].processed_at = "2026-12-04T00:00:00Z".into();
        h.push(Stored {
            seq: 7,
            id: "e7".into(),
            processed_at: "2026-12-04T00:00:01Z".into(),
            event: Event::ToolExecutionStart {
                tool_use_id: "c1".into(),
            },
        });
        let Step::Refuse(r) = next(&h, &a, now()) else {
            panic!()
        };
        assert!(
            r[0].text.contains("max_run_secs while this call ran"),
            "{}",
            r[0].text
        );
    }

    #[test]
    fn a_message_while_calls_wait_for_a_verdict_waits_too() {
        let a = agent();
        let mut h = vec![
            message(),
            Event::StatusRunning {},
            Event::ModelRequestStart { model: "m".into() },
            message(),
            end(),
            call("c1", true),
        ];
        // Played as the loop plays it: the session must settle, not wake itself forever.
        for _ in 0..3 {
            match next(&at(h.clone()), &a, now()) {
                Step::AwaitConfirmation(ids) => h.push(Event::StatusIdle {
                    stop_reason: StopReason::RequiresAction { event_ids: ids },
                }),
                Step::Begin => h.push(Event::StatusRunning {}),
                Step::Wait => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(next(&at(h.clone()), &a, now()), Step::Wait);
        h.push(message());
        assert_eq!(next(&at(h.clone()), &a, now()), Step::Wait, "still waiting");
        h.push(Event::ToolConfirmation {
            tool_use_id: "c1".into(),
            result: Verdict::Deny,
            deny_message: None,
        });
        assert_eq!(next(&at(h), &a, now()), Step::Begin);
    }

    #[test]
    fn calls_after_a_held_one_wait_for_it() {
        let a = agent();
        let h = vec![
            message(),
            Event::StatusRunning {},
            end(),
            call("held", true),
            call("after", false),
        ];
        assert_eq!(
            next(&at(h.clone()), &a, now()),
            Step::AwaitConfirmation(vec!["held".into()])
        );
        let mut h = h;
        h.extend([
            Event::StatusIdle {
                stop_reason: StopReason::RequiresAction {
                    event_ids: vec!["held".into()],
                },
            },
            Event::ToolConfirmation {
                tool_use_id: "held".into(),
                result: Verdict::Allow,
                deny_message: None,
            },
            Event::StatusRunning {},
        ]);
        let Step::Run(calls) = next(&at(h), &a, now()) else {
            panic!()
        };
        let ids: Vec<&str> = calls.iter().map(|c| c.tool_use.id.as_str()).collect();
        assert_eq!(ids, ["held", "after"]);
    }

    #[test]
    fn a_request_out_when_the_controller_stopped_is_asked_again() {
        let a = agent();
        let h = vec![
            message(),
            Event::StatusRunning {},
            Event::ModelRequestStart { model: "m".into() },
        ];
        assert_eq!(next(&at(h), &a, now()), Step::CallModel { turn: 1 });
    }

    #[test]
    fn an_interrupt_while_calls_wait_ends_the_run() {
        let a = agent();
        let h = vec![
            message(),
            Event::StatusRunning {},
            end(),
            call("c1", true),
            Event::StatusIdle {
                stop_reason: StopReason::RequiresAction {
                    event_ids: vec!["c1".into()],
                },
            },
            Event::UserInterrupt {},
        ];
        assert_eq!(next(&at(h.clone()), &a, now()), Step::Begin);
        let mut h = h;
        h.push(Event::StatusRunning {});
        let Step::Refuse(r) = next(&at(h), &a, now()) else {
            panic!()
        };
        assert!(r[0].text.contains("did not run"), "{}", r[0].text);
    }

    #[test]
    fn an_interrupt_answers_open_calls_then_idles() {
        let a = agent();
        let mut h = vec![
            message(),
            Event::StatusRunning {},
            end(),
            call("c1", true),
            Event::UserInterrupt {},
        ];
        assert!(matches!(next(&at(h.clone()), &a, now()), Step::Refuse(_)));
        h.push(result("c1"));
        assert_eq!(
            next(&at(h), &a, now()),
            Step::Idle(StopReason::Interrupted {})
        );
    }

    #[test]
    fn refused_calls_are_answered_with_their_reason() {
        let a = agent();
        let mut bad = ToolUse {
            id: "c1".into(),
            name: "nope".into(),
            input: json!({}),
            evaluated_permission: Permission::Allow,
            raw_arguments: None,
            refusal: Some("[cordon] no tool named nope".into()),
        };
        bad.raw_arguments = Some("{".into());
        let h = vec![
            message(),
            Event::StatusRunning {},
            end(),
            Event::ToolUse(bad),
        ];
        let Step::Refuse(r) = next(&at(h), &a, now()) else {
            panic!()
        };
        assert_eq!(r[0].text, "[cordon] no tool named nope");
    }
}

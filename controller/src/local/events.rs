//! A local session's events, in the shapes CMA's sessions use (../shared/CMA.md), so a client
//! written for CMA's event stream reads them with little change.
//!
//! What a client sends: `user.message`, `user.interrupt`, `user.tool_confirmation`. What the
//! loop records: `session.status_running`, `session.status_idle` (with its `stop_reason`),
//! `span.model_request_start` / `span.model_request_end` (with `model_usage`),
//! `agent.message`, `agent.tool_use` / `agent.custom_tool_use`, `span.tool_execution_start`,
//! `user.tool_result` / `user.custom_tool_result` (as CMA's environments post them),
//! `session.error` and `session.status_terminated`. Every event is stored before anything acts
//! on it: the history is the session's only state, and a restarted controller reads it back.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One event. Stored and served as JSON with its `type`, plus `id` and `processed_at`
/// ([`Stored`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    #[serde(rename = "user.message")]
    UserMessage { content: Vec<Value> },
    #[serde(rename = "user.interrupt")]
    UserInterrupt {},
    #[serde(rename = "user.tool_confirmation")]
    ToolConfirmation {
        tool_use_id: String,
        /// `allow` or `deny`.
        result: Verdict,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deny_message: Option<String>,
    },
    #[serde(rename = "session.status_running")]
    StatusRunning {},
    #[serde(rename = "session.status_idle")]
    StatusIdle { stop_reason: StopReason },
    #[serde(rename = "span.model_request_start")]
    ModelRequestStart { model: String },
    #[serde(rename = "span.model_request_end")]
    ModelRequestEnd {
        is_error: bool,
        #[serde(default)]
        model_usage: Usage,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        finish_reason: Option<String>,
        duration_ms: u64,
    },
    #[serde(rename = "agent.message")]
    AgentMessage { content: Vec<Value> },
    #[serde(rename = "agent.tool_use")]
    ToolUse(ToolUse),
    #[serde(rename = "agent.custom_tool_use")]
    CustomToolUse(ToolUse),
    #[serde(rename = "span.tool_execution_start")]
    ToolExecutionStart { tool_use_id: String },
    #[serde(rename = "user.tool_result")]
    ToolResult {
        tool_use_id: String,
        is_error: bool,
        content: Vec<Value>,
    },
    #[serde(rename = "user.custom_tool_result")]
    CustomToolResult {
        custom_tool_use_id: String,
        is_error: bool,
        content: Vec<Value>,
    },
    #[serde(rename = "session.error")]
    SessionError { error: ErrorBody },
    #[serde(rename = "session.status_terminated")]
    StatusTerminated {},
}

/// A tool call the model made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolUse {
    pub id: String,
    pub name: String,
    /// The arguments as an object; `{}` when they could not be read (`arguments_error`).
    pub input: Value,
    /// `ask`: waits for a `user.tool_confirmation`; `allow`: runs.
    pub evaluated_permission: Permission,
    /// The arguments as the model sent them, when they were not a JSON object as sent (kept
    /// so the conversation shows the model what it wrote).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_arguments: Option<String>,
    /// Why the call cannot run as sent (unparseable arguments, an unknown tool, a schema
    /// mismatch): it is answered with this error and never runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    Allow,
    Ask,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allow,
    Deny,
}

/// Why a run stopped (`session.status_idle`'s `stop_reason.type`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StopReason {
    /// The model answered without calling a tool.
    EndTurn {},
    /// Calls wait for `user.tool_confirmation` (their ids).
    RequiresAction { event_ids: Vec<String> },
    /// `user.interrupt`.
    Interrupted {},
    /// `limits.max_turns` model turns in this run.
    MaxTurns {},
    /// `limits.max_run_secs` passed.
    MaxRunTime {},
    /// The model endpoint failed (after its retries); the `session.error` before says how.
    RetriesExhausted {},
}

impl StopReason {
    pub fn label(&self) -> &'static str {
        match self {
            StopReason::EndTurn {} => "end_turn",
            StopReason::RequiresAction { .. } => "requires_action",
            StopReason::Interrupted {} => "interrupted",
            StopReason::MaxTurns {} => "max_turns",
            StopReason::MaxRunTime {} => "max_run_time",
            StopReason::RetriesExhausted {} => "retries_exhausted",
        }
    }
}

/// Token counts from the model's `usage`, when it sent one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// `session.error`'s body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// `model_unreachable`, `model_status`, `model_response`, `model_timeout`.
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
}

/// An event as stored: its place in the session, id and time.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub seq: i64,
    pub id: String,
    pub processed_at: String,
    pub event: Event,
}

impl Event {
    /// The id a call's event is stored under: its tool-use id, as CMA's `agent.tool_use`
    /// events are (results name the call by the event's id).
    pub fn own_id(&self) -> Option<&str> {
        match self {
            Event::ToolUse(call) | Event::CustomToolUse(call) => Some(&call.id),
            _ => None,
        }
    }
}

impl Stored {
    /// The event as served: `{"id", "type", "processed_at", ...}`.
    pub fn to_json(&self) -> Value {
        let mut value = serde_json::to_value(&self.event).unwrap_or(Value::Null);
        if let Some(object) = value.as_object_mut() {
            object.insert("id".into(), Value::String(self.id.clone()));
            object.insert(
                "processed_at".into(),
                Value::String(self.processed_at.clone()),
            );
        }
        value
    }
}

/// How deep JSON from the model or a tool may nest: an event that holds it must still read
/// back (serde_json stops at 128 levels), with room for the event's own levels.
pub const MAX_DEPTH: usize = 64;

/// Whether `value` nests deeper than `limit` levels.
pub fn too_deep(value: &Value, limit: usize) -> bool {
    if limit == 0 {
        return true;
    }
    match value {
        Value::Array(items) => items.iter().any(|v| too_deep(v, limit - 1)),
        Value::Object(map) => map.values().any(|v| too_deep(v, limit - 1)),
        _ => false,
    }
}

/// A text block.
pub fn text(text: impl Into<String>) -> Vec<Value> {
    vec![serde_json::json!({"type": "text", "text": text.into()})]
}

/// The text of `content`'s text blocks, joined; an image block as a short stand-in (the
/// chat-completions tool message carries text only).
pub fn content_text(content: &[Value]) -> String {
    let mut parts = Vec::new();
    for block in content {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => parts.push(
                block
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            ),
            Some("image") => {
                let media = block
                    .pointer("/source/media_type")
                    .and_then(Value::as_str)
                    .unwrap_or("image");
                let bytes = block
                    .pointer("/source/data")
                    .and_then(Value::as_str)
                    .map_or(0, |d| d.len() / 4 * 3);
                parts.push(format!(
                    "[cordon] an image ({media}, about {bytes} bytes) was returned; it is kept \
                     with the session and not sent to the model"
                ));
            }
            _ => {}
        }
    }
    parts.join("\n")
}

/// An event a client posts, checked: only the three a client may send, with their fields.
pub fn client_event(value: &Value) -> Result<Event, String> {
    let kind = value
        .get("type")
        .and_then(Value::as_str)
        .ok_or("an event needs a \"type\"")?;
    if !matches!(
        kind,
        "user.message" | "user.interrupt" | "user.tool_confirmation"
    ) {
        return Err(format!(
            "{kind:?} cannot be sent: send user.message, user.interrupt or user.tool_confirmation"
        ));
    }
    let event: Event = serde_json::from_value(value.clone()).map_err(|e| format!("{kind}: {e}"))?;
    if let Event::UserMessage { content } = &event {
        if content.is_empty() {
            return Err("user.message: content is empty".into());
        }
        for block in content {
            let is_text = block.get("type").and_then(Value::as_str) == Some("text")
                && block.get("text").is_some_and(Value::is_string);
            if !is_text {
                return Err(format!(
                    "user.message: only text blocks ({{\"type\": \"text\", \"text\": ...}}) are taken, not {block}"
                ));
            }
        }
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_round_trip_in_cma_shapes() {
        let stored = Stored {
            seq: 3,
            id: "sevt_1".into(),
            processed_at: "2026-12-05T00:00:00Z".into(),
            event: Event::StatusIdle {
                stop_reason: StopReason::RequiresAction {
                    event_ids: vec!["call_1".into()],
                },
            },
        };
        let value = stored.to_json();
        assert_eq!(value["type"], "session.status_idle");
        assert_eq!(value["stop_reason"]["type"], "requires_action");
        assert_eq!(value["id"], "sevt_1");
        let back: Event = serde_json::from_value(value).unwrap();
        assert_eq!(back, stored.event);
    }

    #[test]
    fn clients_send_only_their_three_events() {
        assert!(
            client_event(
                &json!({"type": "user.message", "content": [{"type": "text", "text": "hi"}]})
            )
            .is_ok()
        );
        assert!(client_event(&json!({"type": "user.interrupt"})).is_ok());
        let verdict = client_event(
            &json!({"type": "user.tool_confirmation", "tool_use_id": "c", "result": "deny"}),
        )
        .unwrap();
        assert!(matches!(
            verdict,
            Event::ToolConfirmation {
                result: Verdict::Deny,
                ..
            }
        ));
        let e = client_event(&json!({"type": "agent.message", "content": []})).unwrap_err();
        assert!(e.contains("cannot be sent"), "{e}");
        let e = client_event(&json!({"type": "user.message", "content": []})).unwrap_err();
        assert!(e.contains("empty"), "{e}");
        let e = client_event(
            &json!({"type": "user.tool_confirmation", "tool_use_id": "c", "result": "maybe"}),
        )
        .unwrap_err();
        assert!(e.contains("user.tool_confirmation"), "{e}");
        let e = client_event(&json!({"type": "user.message", "content": [{"type": "image"}]}))
            .unwrap_err();
        assert!(e.contains("only text blocks"), "{e}");
    }

    #[test]
    fn images_become_a_stand_in_for_the_model() {
        let content = vec![
            json!({"type": "text", "text": "shot"}),
            json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}),
        ];
        let text = content_text(&content);
        assert!(
            text.starts_with("shot\n[cordon] an image (image/png"),
            "{text}"
        );
    }
}

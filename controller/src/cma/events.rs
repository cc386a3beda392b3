//! Session events (../shared/CMA.md, "Serving a session"): the server-sent-events parser for
//! `GET /v1/sessions/{id}/events/stream`, and the events the runner answers with.
//!
//! SSE frames are `event: <type>` and `data: <json>` lines ending at a blank line. Frames
//! without an `event:` line are ignored, `ping` is skipped, `error` is an error. Several
//! `data:` lines join with newlines; lines starting with `:` are comments.
//!
//! Events are typed ([`SessionEvent`]) by their `type`, the way rustls types its messages: the
//! ones the runner acts on have variants with their fields checked; any other type is kept as
//! [`SessionEvent::Other`] (CMA adds event types; a worker must not fail on one it does not
//! know), and a known type missing a field it needs is [`SessionEvent::Malformed`], ignored
//! with the reason at hand.

use serde::Deserialize;
use serde_json::Value;

/// A session event, by type.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    /// `agent.tool_use` or `agent.custom_tool_use`: a call this environment answers.
    ToolUse(ToolUse),
    /// `user.tool_result` or `user.custom_tool_result`: the call `tool_use_id` is answered.
    ToolResult { tool_use_id: String },
    /// `user.tool_confirmation`: the user's verdict on an `ask` call.
    ToolConfirmation { tool_use_id: String, allow: bool },
    /// `session.status_idle`; `stop_reason` is its `stop_reason.type` (`end_turn`,
    /// `requires_action`, ...).
    StatusIdle { stop_reason: Option<String> },
    /// `session.status_running`.
    StatusRunning,
    /// `session.status_terminated`: nothing more will happen in the session.
    StatusTerminated,
    /// `session.thread_status_terminated`: one thread of a multi-agent session ended.
    ThreadTerminated,
    /// A type the runner does not act on (messages, `agent.mcp_tool_use`, new types).
    Other { kind: String },
    /// A type the runner acts on without a field it needs.
    Malformed { kind: String, problem: String },
}

#[derive(Deserialize)]
struct ToolUseFields {
    id: String,
    name: String,
    #[serde(default)]
    input: Value,
    #[serde(default)]
    evaluated_permission: Option<String>,
}

#[derive(Deserialize)]
struct ResultFields {
    tool_use_id: String,
}

#[derive(Deserialize)]
struct CustomResultFields {
    custom_tool_use_id: String,
}

#[derive(Deserialize)]
struct ConfirmationFields {
    tool_use_id: String,
    result: String,
}

#[derive(Deserialize)]
struct IdleFields {
    #[serde(default)]
    stop_reason: Option<StopReason>,
}

#[derive(Deserialize)]
struct StopReason {
    #[serde(rename = "type")]
    kind: String,
}

impl SessionEvent {
    /// Types `event`; never fails.
    pub fn parse(event: &Value) -> Self {
        let kind = event
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        fn fields<T: serde::de::DeserializeOwned>(event: &Value) -> Result<T, String> {
            T::deserialize(event).map_err(|e| e.to_string())
        }
        let typed = match kind.as_str() {
            "agent.tool_use" | "agent.custom_tool_use" => fields::<ToolUseFields>(event).map(|f| {
                SessionEvent::ToolUse(ToolUse {
                    id: f.id,
                    name: f.name,
                    input: f.input,
                    custom: kind == "agent.custom_tool_use",
                    needs_confirmation: f.evaluated_permission.as_deref() == Some("ask"),
                })
            }),
            "user.tool_result" => fields::<ResultFields>(event).map(|f| SessionEvent::ToolResult {
                tool_use_id: f.tool_use_id,
            }),
            "user.custom_tool_result" => {
                fields::<CustomResultFields>(event).map(|f| SessionEvent::ToolResult {
                    tool_use_id: f.custom_tool_use_id,
                })
            }
            "user.tool_confirmation" => {
                fields::<ConfirmationFields>(event).map(|f| SessionEvent::ToolConfirmation {
                    tool_use_id: f.tool_use_id,
                    allow: f.result == "allow",
                })
            }
            "session.status_idle" => {
                fields::<IdleFields>(event).map(|f| SessionEvent::StatusIdle {
                    stop_reason: f.stop_reason.map(|r| r.kind),
                })
            }
            "session.status_running" => Ok(SessionEvent::StatusRunning),
            "session.status_terminated" => Ok(SessionEvent::StatusTerminated),
            "session.thread_status_terminated" => Ok(SessionEvent::ThreadTerminated),
            _ => return SessionEvent::Other { kind },
        };
        typed.unwrap_or_else(|problem| SessionEvent::Malformed { kind, problem })
    }

    /// Whether the event ends the agent's turn: idle for any reason but waiting on the user's
    /// verdict (`requires_action`).
    pub fn ends_turn(&self) -> bool {
        matches!(self, SessionEvent::StatusIdle { stop_reason } if stop_reason.as_deref() != Some("requires_action"))
    }

    /// Whether the event says nothing about the turn (a verdict, one thread's end).
    pub fn is_neutral(&self) -> bool {
        matches!(
            self,
            SessionEvent::ToolConfirmation { .. } | SessionEvent::ThreadTerminated
        )
    }
}

/// One frame of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub event: String,
    pub data: String,
}

/// What the stream carried.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    /// A session event (`data` parsed and typed).
    Event(SessionEvent),
    /// An `error` frame: the server's message.
    Error(String),
}

/// An incremental SSE parser: bytes in, frames out, whatever the chunking.
///
/// By default a frame without an `event:` line is dropped, as CMA's contract says;
/// [`SseParser::unnamed_as_message`] keeps them as `message` frames, as the SSE standard does
/// (OpenAI-compatible streams send `data:` lines only).
#[derive(Debug, Default)]
pub struct SseParser {
    pending: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
    unnamed_as_message: bool,
}

impl SseParser {
    /// A parser that keeps frames without an `event:` line, as `message` frames.
    pub fn unnamed_as_message() -> Self {
        Self {
            unnamed_as_message: true,
            ..Self::default()
        }
    }

    /// Feeds bytes; returns the frames they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Frame> {
        self.pending.extend_from_slice(bytes);
        let mut frames = Vec::new();
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                let unnamed = (self.unnamed_as_message && !self.data.is_empty())
                    .then(|| "message".to_string());
                if let Some(event) = self.event.take().or(unnamed) {
                    frames.push(Frame {
                        event,
                        data: self.data.join("\n"),
                    });
                }
                self.data.clear();
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.event = Some(value.to_string()),
                "data" => self.data.push(value.to_string()),
                _ => {}
            }
        }
        frames
    }
}

/// A frame as the runner sees it; `None` for frames to skip (`ping`).
pub fn interpret(frame: &Frame) -> Option<StreamItem> {
    match frame.event.as_str() {
        "ping" => None,
        "error" => Some(StreamItem::Error(frame.data.clone())),
        _ => Some(
            serde_json::from_str::<Value>(&frame.data)
                .map(|event| StreamItem::Event(SessionEvent::parse(&event)))
                .unwrap_or_else(|e| {
                    StreamItem::Error(format!("a {} frame is not JSON: {e}", frame.event))
                }),
        ),
    }
}

/// A tool call the runner must answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolUse {
    pub id: String,
    pub name: String,
    pub input: Value,
    /// `agent.custom_tool_use` (answered with `user.custom_tool_result`).
    pub custom: bool,
    /// `evaluated_permission == "ask"`: wait for `user.tool_confirmation`.
    pub needs_confirmation: bool,
}

/// The result event for `call`: `user.tool_result` (or `user.custom_tool_result`), never with
/// empty content.
pub fn tool_result(call: &ToolUse, is_error: bool, text: &str) -> Value {
    let text = if text.is_empty() { "(no output)" } else { text };
    tool_result_content(
        call,
        is_error,
        vec![serde_json::json!({"type": "text", "text": text})],
    )
}

/// The result event for `call` with these content blocks (text and images, as a custom tool's
/// handler may answer).
pub fn tool_result_content(call: &ToolUse, is_error: bool, content: Vec<Value>) -> Value {
    if call.custom {
        serde_json::json!({"type": "user.custom_tool_result", "custom_tool_use_id": call.id, "is_error": is_error, "content": content})
    } else {
        serde_json::json!({"type": "user.tool_result", "tool_use_id": call.id, "is_error": is_error, "content": content})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = ": comment\r\nevent: ping\r\ndata: {}\r\n\r\nevent: agent.tool_use\ndata: {\"type\":\"agent.tool_use\",\"id\":\"tu_1\",\n\ndata: no event line, ignored\n\nevent: agent.tool_use\ndata: {\"type\":\"agent.tool_use\",\"id\":\"tu_2\",\"name\":\"bash\",\ndata: \"input\":{\"command\":\"ls\"},\"evaluated_permission\":\"ask\"}\n\nevent: error\ndata: overloaded\n\n";

    #[test]
    fn frames_survive_any_chunking() {
        let whole = SseParser::default().push(STREAM.as_bytes());
        assert_eq!(whole.len(), 4, "{whole:?}");
        for size in 1..STREAM.len() {
            let mut parser = SseParser::default();
            let frames: Vec<Frame> = STREAM
                .as_bytes()
                .chunks(size)
                .flat_map(|c| parser.push(c))
                .collect();
            assert_eq!(frames, whole, "chunk size {size}");
        }
        assert_eq!(interpret(&whole[0]), None, "ping is skipped");
        assert!(
            matches!(interpret(&whole[1]), Some(StreamItem::Error(_))),
            "broken JSON"
        );
        let Some(StreamItem::Event(SessionEvent::ToolUse(call))) = interpret(&whole[2]) else {
            panic!("{:?}", whole[2]);
        };
        assert_eq!((call.id.as_str(), call.name.as_str()), ("tu_2", "bash"));
        assert!(call.needs_confirmation && !call.custom);
        assert_eq!(
            interpret(&whole[3]),
            Some(StreamItem::Error("overloaded".into()))
        );
    }

    #[test]
    fn results_are_never_empty_and_match_the_call_kind() {
        let call = ToolUse {
            id: "tu_1".into(),
            name: "bash".into(),
            input: Value::Null,
            custom: false,
            needs_confirmation: false,
        };
        let result = tool_result(&call, false, "");
        assert_eq!(result["type"], "user.tool_result");
        assert_eq!(result["tool_use_id"], "tu_1");
        assert_eq!(result["content"][0]["text"], "(no output)");
        let custom = ToolUse {
            custom: true,
            ..call
        };
        assert_eq!(
            tool_result(&custom, true, "x")["custom_tool_use_id"],
            "tu_1"
        );
    }

    #[test]
    fn events_are_typed_and_unknown_ones_kept() {
        let parse = |v: Value| SessionEvent::parse(&v);
        use serde_json::json;
        assert_eq!(
            parse(json!({"type": "agent.mcp_tool_use", "id": "m", "name": "n"})),
            SessionEvent::Other {
                kind: "agent.mcp_tool_use".into()
            }
        );
        assert_eq!(
            parse(json!({"type": "session.brand_new_kind", "x": 1})),
            SessionEvent::Other {
                kind: "session.brand_new_kind".into()
            }
        );
        assert!(matches!(
            parse(json!({"type": "agent.tool_use", "name": "bash"})),
            SessionEvent::Malformed { problem, .. } if problem.contains("id")
        ));
        assert_eq!(
            parse(json!({"type": "user.custom_tool_result", "custom_tool_use_id": "c1"})),
            SessionEvent::ToolResult {
                tool_use_id: "c1".into()
            }
        );
        assert_eq!(
            parse(json!({"type": "user.tool_confirmation", "tool_use_id": "t", "result": "deny"})),
            SessionEvent::ToolConfirmation {
                tool_use_id: "t".into(),
                allow: false
            }
        );
        let idle = |reason: &str| {
            parse(json!({"type": "session.status_idle", "stop_reason": {"type": reason}}))
        };
        assert!(idle("end_turn").ends_turn());
        assert!(!idle("requires_action").ends_turn());
        assert!(parse(json!({"type": "session.status_idle"})).ends_turn());
        assert_eq!(
            parse(json!({"type": "session.status_terminated"})),
            SessionEvent::StatusTerminated
        );
        assert!(
            parse(json!({"type": "user.tool_confirmation", "tool_use_id": "t", "result": "allow"}))
                .is_neutral()
        );
    }
}

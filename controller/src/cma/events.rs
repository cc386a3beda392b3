//! Session events (../shared/CMA.md, "Serving a session"): the server-sent-events parser for
//! `GET /v1/sessions/{id}/events/stream`, and the events the runner answers with.
//!
//! SSE frames are `event: <type>` and `data: <json>` lines ending at a blank line. Frames
//! without an `event:` line are ignored, `ping` is skipped, `error` is an error. Several
//! `data:` lines join with newlines; lines starting with `:` are comments.

use serde_json::Value;

/// One frame of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub event: String,
    pub data: String,
}

/// What the stream carried.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    /// A session event (`data` parsed).
    Event(Value),
    /// An `error` frame: the server's message.
    Error(String),
}

/// An incremental SSE parser: bytes in, frames out, whatever the chunking.
#[derive(Debug, Default)]
pub struct SseParser {
    pending: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
}

impl SseParser {
    /// Feeds bytes; returns the frames they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Frame> {
        self.pending.extend_from_slice(bytes);
        let mut frames = Vec::new();
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if let Some(event) = self.event.take() {
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
            serde_json::from_str(&frame.data)
                .map(StreamItem::Event)
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

/// The tool call in `event`, if it is one this environment answers (`agent.tool_use`,
/// `agent.custom_tool_use`; `agent.mcp_tool_use` runs at Anthropic).
pub fn tool_use(event: &Value) -> Option<ToolUse> {
    let kind = event.get("type")?.as_str()?;
    let custom = match kind {
        "agent.tool_use" => false,
        "agent.custom_tool_use" => true,
        _ => return None,
    };
    Some(ToolUse {
        id: event.get("id")?.as_str()?.to_string(),
        name: event.get("name")?.as_str()?.to_string(),
        input: event.get("input").cloned().unwrap_or(Value::Null),
        custom,
        needs_confirmation: event.get("evaluated_permission").and_then(Value::as_str)
            == Some("ask"),
    })
}

/// The result event for `call`: `user.tool_result` (or `user.custom_tool_result`), never with
/// empty content.
pub fn tool_result(call: &ToolUse, is_error: bool, text: &str) -> Value {
    let text = if text.is_empty() { "(no output)" } else { text };
    let content = serde_json::json!([{"type": "text", "text": text}]);
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
        let Some(StreamItem::Event(event)) = interpret(&whole[2]) else {
            panic!("{:?}", whole[2]);
        };
        let call = tool_use(&event).unwrap();
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
        assert!(
            tool_use(&serde_json::json!({"type": "agent.mcp_tool_use", "id": "m", "name": "n"}))
                .is_none()
        );
    }
}

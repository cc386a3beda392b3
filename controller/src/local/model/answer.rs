//! A chat-completions answer read into text, tool calls, usage and finish reason: whole
//! (`stream: false`) or from streamed chunks, whose tool calls arrive in pieces keyed by
//! `index` (the id and name in the first, the arguments spread over the rest).

use serde_json::Value;

use crate::local::events::Usage;

/// Most calls a streamed answer may begin: far past what one answer is taken for
/// ([`crate::local::session::MAX_CALLS_PER_ANSWER`]), a bound on the memory a stream can make
/// the controller hold.
pub const MAX_STREAMED_CALLS: usize = 1024;

/// A call as the model wrote it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawCall {
    pub name: String,
    pub arguments: String,
}

/// What one model turn said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    pub text: String,
    pub calls: Vec<RawCall>,
    pub usage: Option<Usage>,
    pub finish_reason: Option<String>,
}

fn usage(value: &Value) -> Option<Usage> {
    let usage = value.get("usage").filter(|u| u.is_object())?;
    let count = |k: &str| usage.get(k).and_then(Value::as_u64).unwrap_or(0);
    Some(Usage {
        input_tokens: count("prompt_tokens"),
        output_tokens: count("completion_tokens"),
    })
}

/// A whole (non-streamed) answer.
pub fn whole(body: &Value) -> Result<Answer, String> {
    if let Some(error) = body.get("error") {
        return Err(format!("the endpoint answered an error: {error}"));
    }
    let choice = body
        .pointer("/choices/0")
        .ok_or("the answer has no choices[0]")?;
    let message = choice.get("message").ok_or("choices[0] has no message")?;
    let mut answer = Answer {
        text: message
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        usage: usage(body),
        finish_reason: choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .map(str::to_string),
        ..Answer::default()
    };
    for call in message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        answer.calls.push(RawCall {
            name: call
                .pointer("/function/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            arguments: arguments(call.pointer("/function/arguments")),
        });
    }
    Ok(answer)
}

/// Arguments as a string: most servers send one, some send the object itself.
fn arguments(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// Streamed chunks, accumulated.
#[derive(Debug, Default)]
pub struct Chunks {
    answer: Answer,
    /// Calls in the order they began, each with the id it came with.
    calls: Vec<(Option<String>, RawCall)>,
    /// The call each `index` continues now (a position in `calls`).
    current: std::collections::HashMap<u64, usize>,
    /// A `[DONE]` came.
    pub finished: bool,
}

impl Chunks {
    /// Takes one `data:` payload.
    pub fn push(&mut self, data: &str) -> Result<(), String> {
        let data = data.trim();
        if data == "[DONE]" {
            self.finished = true;
            return Ok(());
        }
        let chunk: Value = serde_json::from_str(data)
            .map_err(|e| format!("a streamed chunk is not JSON ({e})"))?;
        if let Some(error) = chunk.get("error") {
            return Err(format!("the endpoint streamed an error: {error}"));
        }
        if let Some(u) = usage(&chunk) {
            self.answer.usage = Some(u);
        }
        let Some(choice) = chunk.pointer("/choices/0") else {
            return Ok(());
        };
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.answer.finish_reason = Some(reason.to_string());
        }
        let Some(delta) = choice.get("delta") else {
            return Ok(());
        };
        if let Some(text) = delta.get("content").and_then(Value::as_str) {
            self.answer.text.push_str(text);
        }
        for (position, part) in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let index = part
                .get("index")
                .and_then(Value::as_u64)
                .unwrap_or(position as u64);
            let id = part
                .get("id")
                .and_then(Value::as_str)
                .filter(|id| !id.is_empty());
            // A new id at an index in use is a new call (some servers number every call 0).
            let known = self.current.get(&index).copied();
            let at = match known {
                Some(at) if id.is_none() || self.calls[at].0.as_deref() == id => at,
                // The id came after the call's first fragment: it is this call's.
                Some(at) if self.calls[at].0.is_none() => {
                    self.calls[at].0 = id.map(str::to_string);
                    at
                }
                _ => {
                    if self.calls.len() >= MAX_STREAMED_CALLS {
                        return Err(format!(
                            "the answer streams more than {MAX_STREAMED_CALLS} tool calls"
                        ));
                    }
                    self.calls
                        .push((id.map(str::to_string), RawCall::default()));
                    self.current.insert(index, self.calls.len() - 1);
                    self.calls.len() - 1
                }
            };
            let call = &mut self.calls[at].1;
            // The name comes once; servers that send it again in every chunk send it whole.
            if let Some(name) = part.pointer("/function/name").and_then(Value::as_str)
                && call.name != name
            {
                call.name.push_str(name);
            }
            match part.pointer("/function/arguments") {
                Some(Value::String(s)) => call.arguments.push_str(s),
                Some(Value::Null) | None => {}
                Some(other) => call.arguments.push_str(&other.to_string()),
            }
        }
        Ok(())
    }

    /// Whether the answer is complete: `[DONE]` came, or a finish reason (some servers end
    /// the body without `[DONE]`).
    pub fn ended(&self) -> bool {
        self.finished || self.answer.finish_reason.is_some()
    }

    /// The answer so far.
    pub fn finish(mut self) -> Answer {
        self.answer.calls = self.calls.into_iter().map(|(_, call)| call).collect();
        self.answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_whole_answer_with_calls_and_usage() {
        let body = json!({"choices": [{"message": {"content": "ok", "tool_calls": [
            {"id": "x", "type": "function", "function": {"name": "bash", "arguments": "{\"command\":\"ls\"}"}},
            {"id": "y", "type": "function", "function": {"name": "read", "arguments": {"file_path": "a"}}}
        ]}, "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 10, "completion_tokens": 5}});
        let a = whole(&body).unwrap();
        assert_eq!(a.text, "ok");
        assert_eq!(a.calls[1].arguments, "{\"file_path\":\"a\"}");
        assert_eq!(
            a.usage,
            Some(Usage {
                input_tokens: 10,
                output_tokens: 5
            })
        );
        assert_eq!(a.finish_reason.as_deref(), Some("tool_calls"));
        assert!(whole(&json!({"error": {"message": "no"}})).is_err());
        assert!(whole(&json!({"choices": []})).is_err());
    }

    #[test]
    fn streamed_calls_are_assembled_by_index() {
        let mut c = Chunks::default();
        for data in [
            r#"{"choices":[{"delta":{"role":"assistant","content":"Let me "}}]}"#,
            r#"{"choices":[{"delta":{"content":"look."}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"a","function":{"name":"bash","arguments":""}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":1,"id":"b","function":{"name":"glob","arguments":"{\"pat"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"command\":"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"ls\"}"}},{"index":1,"function":{"arguments":"tern\":\"*\"}"}}]}}]}"#,
            r#"{"choices":[{"delta":{},"finish_reason":"tool_calls"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3}}"#,
            "[DONE]",
        ] {
            c.push(data).unwrap();
        }
        assert!(c.finished);
        let a = c.finish();
        assert_eq!(a.text, "Let me look.");
        assert_eq!(
            a.calls[0],
            RawCall {
                name: "bash".into(),
                arguments: "{\"command\":\"ls\"}".into()
            }
        );
        assert_eq!(a.calls[1].arguments, "{\"pattern\":\"*\"}");
        assert_eq!(a.usage.unwrap().output_tokens, 3);
        let mut bad = Chunks::default();
        assert!(bad.push("{not json").is_err());
    }

    #[test]
    fn servers_that_repeat_names_or_reuse_index_0_are_read_right() {
        let mut c = Chunks::default();
        for data in [
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"a","function":{"name":"bash","arguments":"{\"command\":"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"bash","arguments":"\"ls\"}"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"b","function":{"name":"read","arguments":"{}"}}]}}]}"#,
            r#"{"choices":[{"delta":{},"finish_reason":"tool_calls"}]}"#,
        ] {
            c.push(data).unwrap();
        }
        let a = c.finish();
        assert_eq!(a.calls.len(), 2);
        assert_eq!(
            a.calls[0],
            RawCall {
                name: "bash".into(),
                arguments: "{\"command\":\"ls\"}".into()
            }
        );
        assert_eq!(a.calls[1].name, "read");
    }
}

//! The conversation a local session sends its model: chat-completions `messages` built from
//! the session's history, kept within the agent's `limits.max_context_chars` by truncating
//! old tool results (oldest first, each to its head and tail, marked). Nothing is summarised:
//! a summary would need a model call of its own and could drop what the agent needs, while a
//! marked cut tells the model exactly what it no longer sees and that it can run the tool again.

use std::collections::HashSet;

use serde_json::{Value, json};

use super::events::{Event, Stored, ToolUse, content_text};

/// What a cut tool result keeps: this many characters of its head and of its tail.
pub const KEPT_EACH_END: usize = 600;

/// The messages, and how many tool results were truncated to fit.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    pub messages: Vec<Value>,
    pub truncated_results: usize,
}

/// A call as the assistant message carries it: its arguments as the JSON object the call
/// was read as (`{}` when they could not be read). Never what the model wrote when that was
/// not a JSON object: servers such as vLLM parse every replayed call and refuse the whole
/// request otherwise, which would end the session for good. The call's result says what was
/// wrong with what it wrote.
fn tool_call(call: &ToolUse, ids: &mut CallIds) -> Value {
    json!({"id": ids.short(&call.id), "type": "function",
           "function": {"name": replay_name(&call.name), "arguments": call.input.to_string()}})
}

/// A call's name as the conversation carries it: OpenAI refuses names outside
/// `[A-Za-z0-9_-]{1,64}` in replayed calls, and a name the model got wrong (`functions.bash`)
/// is replayed, with its refusal as its result.
fn replay_name(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if clean.is_empty() {
        "invalid_tool_name".into()
    } else {
        clean
    }
}

/// Call ids as the conversation carries them: 9 letters and digits, what Mistral's API and
/// chat templates accept (and every other server), unique within the conversation. The
/// events keep Cordon's own ids.
#[derive(Default)]
struct CallIds {
    short: std::collections::HashMap<String, String>,
    taken: HashSet<String>,
}

impl CallIds {
    fn short(&mut self, id: &str) -> String {
        if let Some(short) = self.short.get(id) {
            return short.clone();
        }
        let tail: String = id.chars().filter(char::is_ascii_alphanumeric).collect();
        let mut short = format!("{:0>9}", &tail[tail.len().saturating_sub(9)..]);
        let mut n = 0u32;
        while self.taken.contains(&short) {
            n += 1;
            short = format!("c{n:08}");
        }
        self.taken.insert(short.clone());
        self.short.insert(id.to_string(), short.clone());
        short
    }
}

/// The conversation of `history`, with `system` first.
pub fn conversation(system: Option<&str>, history: &[Stored], max_chars: usize) -> Conversation {
    let mut messages = Vec::new();
    if let Some(system) = system {
        messages.push(json!({"role": "system", "content": system}));
    }
    let mut assistant: Option<Value> = None;
    // Chat completions want every call's result right after the assistant message that made
    // it, and a message the model did not see before its answer belongs after that answer:
    // a user message sent while the model answered or calls ran waits until then.
    let mut open: HashSet<&str> = HashSet::new();
    let mut deferred: Vec<Value> = Vec::new();
    let mut asking = false;
    let mut ids = CallIds::default();
    let flush = |assistant: &mut Option<Value>, messages: &mut Vec<Value>| {
        if let Some(message) = assistant.take() {
            messages.push(message);
        }
    };
    for stored in history {
        match &stored.event {
            Event::AgentMessage { content } => {
                let message = assistant
                    .get_or_insert_with(|| json!({"role": "assistant", "content": Value::Null}));
                let text = content_text(content);
                message["content"] = match message["content"].as_str() {
                    Some(before) => Value::String(format!("{before}\n{text}")),
                    None => Value::String(text),
                };
            }
            Event::ToolUse(call) | Event::CustomToolUse(call) => {
                let message = assistant
                    .get_or_insert_with(|| json!({"role": "assistant", "content": Value::Null}));
                let entry = tool_call(call, &mut ids);
                match message.get_mut("tool_calls").and_then(Value::as_array_mut) {
                    Some(calls) => calls.push(entry),
                    None => message["tool_calls"] = json!([entry]),
                }
                open.insert(&call.id);
            }
            Event::ToolResult {
                tool_use_id,
                content,
                ..
            }
            | Event::CustomToolResult {
                custom_tool_use_id: tool_use_id,
                content,
                ..
            } => {
                flush(&mut assistant, &mut messages);
                messages.push(json!({"role": "tool", "tool_call_id": ids.short(tool_use_id), "content": content_text(content)}));
                open.remove(tool_use_id.as_str());
                if open.is_empty() && !asking {
                    messages.append(&mut deferred);
                }
            }
            Event::UserMessage { content } => {
                flush(&mut assistant, &mut messages);
                let message = json!({"role": "user", "content": content_text(content)});
                if open.is_empty() && !asking {
                    messages.push(message);
                } else {
                    deferred.push(message);
                }
            }
            Event::ModelRequestStart { .. } => {
                flush(&mut assistant, &mut messages);
                messages.append(&mut deferred);
                asking = true;
            }
            Event::ModelRequestEnd { .. } => {
                flush(&mut assistant, &mut messages);
                asking = false;
            }
            _ => {}
        }
    }
    flush(&mut assistant, &mut messages);
    messages.append(&mut deferred);
    let truncated_results = fit(&mut messages, max_chars);
    Conversation {
        messages,
        truncated_results,
    }
}

fn size(message: &Value) -> usize {
    let content = message["content"].as_str().map_or(0, str::len);
    let calls = message.get("tool_calls").map_or(0, |c| c.to_string().len());
    content + calls
}

/// `text` cut to its head and tail, with a line saying how much went and why.
fn cut(text: &str, what: &str) -> Option<String> {
    let chars = text.chars().count();
    if chars <= 2 * KEPT_EACH_END + 200 {
        return None;
    }
    let head: String = text.chars().take(KEPT_EACH_END).collect();
    let tail: String = text.chars().skip(chars - KEPT_EACH_END).collect();
    Some(format!(
        "{head}\n[cordon] {} characters of this {what} were cut to keep the conversation within \
         limits.max_context_chars; run the tool again to see them\n{tail}",
        chars - 2 * KEPT_EACH_END
    ))
}

/// Brings the messages within `max_chars` (UTF-8 bytes of their text), oldest first: tool
/// results are cut to their head and tail, then long call arguments to a note, then whole old
/// exchanges are dropped (an assistant message with its calls' results), with a note on the
/// first user message. Returns how many messages were cut or dropped.
fn fit(messages: &mut Vec<Value>, max_chars: usize) -> usize {
    let mut total: usize = messages.iter().map(size).sum();
    let mut cut_count = 0;
    for message in messages.iter_mut() {
        if total <= max_chars {
            return cut_count;
        }
        if message["role"] != "tool" {
            continue;
        }
        let Some(text) = message["content"].as_str() else {
            continue;
        };
        let Some(shortened) = cut(text, "tool result") else {
            continue;
        };
        total = total - text.len() + shortened.len();
        message["content"] = Value::String(shortened);
        cut_count += 1;
    }
    for message in messages.iter_mut() {
        if total <= max_chars {
            return cut_count;
        }
        let before = size(message);
        let Some(calls) = message.get_mut("tool_calls").and_then(Value::as_array_mut) else {
            continue;
        };
        let mut changed = false;
        for call in calls.iter_mut() {
            let Some(arguments) = call.pointer("/function/arguments").and_then(Value::as_str)
            else {
                continue;
            };
            if arguments.len() > 2 * KEPT_EACH_END + 200 {
                let note = json!({"[cordon]": format!(
                    "{} characters of these arguments were cut to keep the conversation within \
                     limits.max_context_chars", arguments.len())});
                call["function"]["arguments"] = Value::String(note.to_string());
                changed = true;
            }
        }
        if changed {
            total = total - before + size(message);
            cut_count += 1;
        }
    }
    // Whole exchanges, oldest first, after the system prompt and the first user message; the
    // newest two stay whatever they cost.
    let Some(first_user) = messages.iter().position(|m| m["role"] == "user") else {
        return cut_count;
    };
    let mut dropped = 0;
    loop {
        let units = units_after(messages, first_user + 1);
        if total <= max_chars || units.len() <= 2 {
            break;
        }
        let (from, to) = units[0];
        total -= messages[from..to].iter().map(size).sum::<usize>();
        dropped += to - from;
        messages.drain(from..to);
    }
    if dropped > 0 {
        let note = format!(
            "\n[cordon] {dropped} older messages of this conversation were dropped to keep it \
             within limits.max_context_chars"
        );
        if let Some(text) = messages[first_user]["content"].as_str() {
            messages[first_user]["content"] = Value::String(format!("{text}{note}"));
        }
        cut_count += dropped;
    }
    cut_count
}

/// The exchanges from `start` on: each a user message, or an assistant message with the
/// results of its calls; as `(from, to)` ranges.
fn units_after(messages: &[Value], start: usize) -> Vec<(usize, usize)> {
    let mut units = Vec::new();
    let mut i = start;
    while i < messages.len() {
        let mut end = i + 1;
        if messages[i]["role"] == "assistant" {
            while end < messages.len() && messages[end]["role"] == "tool" {
                end += 1;
            }
        }
        units.push((i, end));
        i = end;
    }
    units
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::events::{Permission, Usage, text};

    fn stored(events: Vec<Event>) -> Vec<Stored> {
        events
            .into_iter()
            .enumerate()
            .map(|(i, event)| Stored {
                seq: i as i64,
                id: format!("e{i}"),
                processed_at: String::new(),
                event,
            })
            .collect()
    }

    fn call(id: &str) -> Event {
        Event::ToolUse(ToolUse {
            id: id.into(),
            name: "bash".into(),
            input: json!({"command": "ls"}),
            evaluated_permission: Permission::Allow,
            raw_arguments: None,
            refusal: None,
        })
    }

    fn end() -> Event {
        Event::ModelRequestEnd {
            is_error: false,
            model_usage: Usage::default(),
            finish_reason: None,
            duration_ms: 0,
        }
    }

    fn result(id: &str, body: &str) -> Event {
        Event::ToolResult {
            tool_use_id: id.into(),
            is_error: false,
            content: text(body),
        }
    }

    #[test]
    fn calls_and_results_pair_up_in_order() {
        let history = stored(vec![
            Event::UserMessage {
                content: text("list"),
            },
            Event::StatusRunning {},
            end(),
            Event::AgentMessage {
                content: text("Looking."),
            },
            call("a"),
            call("b"),
            Event::ToolExecutionStart {
                tool_use_id: "a".into(),
            },
            Event::UserMessage {
                content: text("also: hurry"),
            },
            result("a", "x"),
            result("b", "y"),
            end(),
            Event::AgentMessage {
                content: text("Done."),
            },
        ]);
        let c = conversation(Some("be brief"), &history, 100_000);
        let roles: Vec<&str> = c
            .messages
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(
            roles,
            [
                "system",
                "user",
                "assistant",
                "tool",
                "tool",
                "user",
                "assistant"
            ]
        );
        assert_eq!(c.messages[2]["content"], "Looking.");
        assert_eq!(c.messages[2]["tool_calls"][1]["id"], "00000000b");
        assert_eq!(c.messages[4]["tool_call_id"], "00000000b");
        assert_eq!(
            c.messages[2]["tool_calls"][0]["function"]["arguments"],
            "{\"command\":\"ls\"}"
        );
        assert_eq!(c.messages[5]["content"], "also: hurry");
        assert_eq!(c.truncated_results, 0);
    }

    #[test]
    fn malformed_arguments_are_replayed_as_the_object_they_were_read_as() {
        let mut bad = ToolUse {
            id: "a".into(),
            name: "bash".into(),
            input: json!({}),
            evaluated_permission: Permission::Allow,
            raw_arguments: Some("{\"command\": ".into()),
            refusal: Some("bad".into()),
        };
        bad.input = json!({});
        let history = stored(vec![end(), Event::ToolUse(bad), result("a", "error")]);
        let c = conversation(None, &history, 100_000);
        assert_eq!(
            c.messages[0]["tool_calls"][0]["function"]["arguments"],
            "{}"
        );
    }

    #[test]
    fn a_message_sent_while_the_model_answered_comes_after_its_answer() {
        let history = stored(vec![
            Event::UserMessage {
                content: text("first"),
            },
            Event::ModelRequestStart { model: "m".into() },
            Event::UserMessage {
                content: text("second"),
            },
            end(),
            Event::AgentMessage {
                content: text("answer to first"),
            },
        ]);
        let c = conversation(None, &history, 100_000);
        let contents: Vec<&str> = c
            .messages
            .iter()
            .map(|m| m["content"].as_str().unwrap())
            .collect();
        assert_eq!(contents, ["first", "answer to first", "second"]);
    }

    #[test]
    fn whole_old_exchanges_go_when_cutting_is_not_enough() {
        let mut events = vec![Event::UserMessage {
            content: text("task"),
        }];
        for i in 0..20 {
            events.extend([
                end(),
                Event::AgentMessage {
                    content: text("thinking ".repeat(50)),
                },
                call(&format!("c{i}")),
                result(&format!("c{i}"), "short"),
            ]);
        }
        let c = conversation(Some("sys"), &stored(events), 4096);
        let total: usize = c.messages.iter().map(size).sum();
        assert!(total <= 4096, "{total}");
        assert_eq!(c.messages[0]["role"], "system");
        assert!(
            c.messages[1]["content"]
                .as_str()
                .unwrap()
                .contains("older messages")
        );
        // Every call that stayed still has its result right after it.
        for (i, m) in c.messages.iter().enumerate() {
            if m.get("tool_calls").is_some() {
                assert_eq!(c.messages[i + 1]["role"], "tool");
            }
            if m["role"] == "tool" {
                assert!(
                    c.messages[i - 1]["role"] == "assistant" || c.messages[i - 1]["role"] == "tool"
                );
            }
        }
        assert_eq!(c.messages.last().unwrap()["role"], "tool");
    }

    #[test]
    fn replayed_names_and_ids_are_ones_every_server_takes() {
        let mut odd = ToolUse {
            id: "toolu_ABCDEFGHIJKLmnopqrstuvwx".into(),
            name: "functions.bash".into(),
            input: json!({}),
            evaluated_permission: Permission::Allow,
            raw_arguments: None,
            refusal: Some("no such tool".into()),
        };
        let history = stored(vec![
            end(),
            Event::ToolUse(odd.clone()),
            result(&odd.id, "x"),
        ]);
        let c = conversation(None, &history, 100_000);
        let call = &c.messages[0]["tool_calls"][0];
        assert_eq!(call["function"]["name"], "functions_bash");
        assert_eq!(call["id"], "pqrstuvwx");
        assert_eq!(c.messages[1]["tool_call_id"], "pqrstuvwx");
        odd.name = String::new();
        assert_eq!(replay_name(&odd.name), "invalid_tool_name");
        let mut ids = CallIds::default();
        assert_ne!(
            ids.short("toolu_xxx123456789"),
            ids.short("other_123456789")
        );
    }

    #[test]
    fn old_tool_results_are_cut_first_to_fit() {
        let big = "x".repeat(20_000);
        let history = stored(vec![
            Event::UserMessage {
                content: text("go"),
            },
            end(),
            call("a"),
            result("a", &big),
            end(),
            call("b"),
            result("b", &big),
        ]);
        let c = conversation(None, &history, 25_000);
        assert_eq!(c.truncated_results, 1);
        let first = c.messages[2]["content"].as_str().unwrap();
        assert!(first.contains("characters of this tool result were cut"));
        assert!(first.len() < 2_000);
        assert_eq!(
            c.messages[4]["content"].as_str().unwrap().len(),
            20_000,
            "the newest is whole"
        );
    }
}

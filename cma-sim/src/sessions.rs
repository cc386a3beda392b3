//! Session endpoints (../shared/CMA.md, "Serving a session"): the session object, its event
//! history (paginated), the live stream, and posted events, which the scripted agent checks.

use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::world::{ApiError, World, push};

/// The largest page `GET /v1/sessions/{id}/events` returns.
pub const MAX_PAGE: usize = 1000;

impl World {
    /// `GET /v1/sessions/{id}`: enough of a session object for a worker.
    pub fn session(&self, id: &str) -> Result<Value, ApiError> {
        let inner = self.lock();
        let session = inner
            .sessions
            .get(id)
            .ok_or_else(|| ApiError::not_found(&format!("session {id}")))?;
        Ok(json!({
            "type": "session",
            "id": id,
            "status": session.status,
            "created_at": session.created_at,
            "updated_at": crate::world::now(),
            "environment_id": self.environment_id,
            "agent": {"type": "agent", "id": "agent_sim", "name": "cordon-cma-sim", "version": 1, "skills": [], "tools": [], "mcp_servers": []},
            "resources": [],
            "metadata": {},
            "title": null,
        }))
    }

    /// `GET /v1/sessions/{id}/events?limit=&page=&order=`: one page, oldest first unless
    /// `order=desc`; `page` is the cursor a previous page returned.
    pub fn events_page(
        &self,
        id: &str,
        limit: Option<usize>,
        page: Option<&str>,
        descending: bool,
    ) -> Result<Value, ApiError> {
        let limit = limit.unwrap_or(100);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(ApiError::invalid(format!(
                "limit must be between 1 and {MAX_PAGE}"
            )));
        }
        let start = crate::world::page_start(page)?;
        let inner = self.lock();
        let session = inner
            .sessions
            .get(id)
            .ok_or_else(|| ApiError::not_found(&format!("session {id}")))?;
        let mut events = session.events.clone();
        if descending {
            events.reverse();
        }
        let end = (start + limit).min(events.len());
        let data: Vec<Value> = events
            .get(start..end)
            .map(<[Value]>::to_vec)
            .unwrap_or_default();
        let next = (end < events.len()).then(|| format!("page_{end}"));
        Ok(
            json!({"data": data, "next_page": next, "first_id": data.first().map(|e| e["id"].clone()), "last_id": data.last().map(|e| e["id"].clone()), "has_more": next.is_some()}),
        )
    }

    /// A subscription to the session's live events (only those after now), and whether
    /// this stream should be dropped after its first event (an injected fault).
    pub fn subscribe(&self, id: &str) -> Result<(broadcast::Receiver<Value>, bool), ApiError> {
        let mut inner = self.lock();
        let drop_early = inner.faults.stream_drops > 0;
        if drop_early {
            inner.faults.stream_drops -= 1;
        }
        let session = inner
            .sessions
            .get(id)
            .ok_or_else(|| ApiError::not_found(&format!("session {id}")))?;
        Ok((session.live.subscribe(), drop_early))
    }

    /// `POST /v1/sessions/{id}/events` `{events: [...]}`: validated whole, then recorded;
    /// tool results are checked against the scenario.
    pub fn post_events(&self, id: &str, body: &Value) -> Result<Value, ApiError> {
        let events = body
            .get("events")
            .and_then(Value::as_array)
            .filter(|e| !e.is_empty())
            .ok_or_else(|| ApiError::invalid("expected {\"events\": [at least one event]}"))?;
        let mut advance = false;
        let echoed = {
            let mut inner = self.lock();
            if inner.faults.send_errors > 0 {
                inner.faults.send_errors -= 1;
                return Err(ApiError::new(500, "api_error", "injected fault"));
            }
            let session = inner
                .sessions
                .get(id)
                .ok_or_else(|| ApiError::not_found(&format!("session {id}")))?;
            // Validate every event before recording any: all or nothing.
            let mut results = Vec::new();
            for event in events {
                let kind = event["type"].as_str().unwrap_or("");
                match kind {
                    "user.tool_result" | "user.custom_tool_result" => {
                        let field = if kind == "user.tool_result" {
                            "tool_use_id"
                        } else {
                            "custom_tool_use_id"
                        };
                        let call = event[field]
                            .as_str()
                            .ok_or_else(|| ApiError::invalid(format!("{kind} needs {field}")))?;
                        if session.status == "terminated" {
                            return Err(ApiError::invalid(format!(
                                "session {id} is terminated and takes no tool results"
                            )));
                        }
                        let Some(&index) = session.issued.get(call) else {
                            return Err(ApiError::invalid(format!(
                                "{field} {call:?} names no tool call of session {id}"
                            )));
                        };
                        let custom = session.script.steps[index].custom;
                        if custom != (kind == "user.custom_tool_result") {
                            return Err(ApiError::invalid(format!(
                                "{call} is {}; answer it with {}",
                                if custom {
                                    "a custom tool call"
                                } else {
                                    "a tool call"
                                },
                                if custom {
                                    "user.custom_tool_result"
                                } else {
                                    "user.tool_result"
                                }
                            )));
                        }
                        let text = result_text(event).map_err(ApiError::invalid)?;
                        results.push((call.to_string(), index, text));
                    }
                    "user.message" | "user.interrupt" | "user.tool_confirmation" => {}
                    other => {
                        return Err(ApiError::invalid(format!(
                            "event type {other:?} cannot be posted by a client"
                        )));
                    }
                }
            }
            // A second answer is refused, and the scenario fails: each call is answered once.
            let twice = results
                .iter()
                .find(|(call, _, _)| session.answered.contains(call))
                .map(|(call, _, _)| format!("tool call {call} of session {id} was answered twice"));
            let denied: Vec<String> = results
                .iter()
                .filter(|(call, _, _)| session.denied.contains(call))
                .map(|(call, _, _)| format!("tool call {call} of session {id} was denied but run"))
                .collect();
            inner.violations.extend(denied);
            if let Some(message) = twice {
                inner.violations.push(message.clone());
                self.progress.notify_waiters();
                return Err(ApiError::new(409, "invalid_request_error", message));
            }
            let mut echoed = Vec::new();
            for event in events {
                let mut event = event.clone();
                if let Some(map) = event.as_object_mut() {
                    map.remove("id");
                }
                echoed.push(push(&mut inner, id, event));
            }
            inner.results_recorded += results.len() as u32;
            if let Some(after) = inner.faults.outage_after_results
                && inner.results_recorded >= after
                && inner.outage_until.is_none()
            {
                let length = std::time::Duration::from_millis(inner.faults.outage_ms);
                tracing::info!(ms = inner.faults.outage_ms, "simulated outage begins");
                inner.outage_until = Some(std::time::Instant::now() + length);
            }
            if let Some(session) = inner.sessions.get_mut(id) {
                for (call, index, text) in results {
                    let is_error = echoed
                        .iter()
                        .find(|e| {
                            e["tool_use_id"] == call.as_str()
                                || e["custom_tool_use_id"] == call.as_str()
                        })
                        .and_then(|e| e["is_error"].as_bool())
                        .unwrap_or(false);
                    session.answered.insert(call);
                    let problems = session.script.steps[index].expect.check(is_error, &text);
                    session.steps[index].record(is_error, &text, problems);
                    if index == session.step {
                        session.step += 1;
                        advance = true;
                    }
                }
            }
            echoed
        };
        if advance {
            self.emit_step(id);
        }
        self.progress.notify_waiters();
        Ok(json!({ "data": echoed }))
    }
}

/// The text of a tool result's content; empty content is refused (CMA rejects it).
fn result_text(event: &Value) -> Result<String, String> {
    let content = match &event["content"] {
        Value::String(s) => return non_empty(s.clone()),
        Value::Array(blocks) => blocks,
        Value::Null => return Err("a tool result needs content".into()),
        _ => return Err("content must be a string or a list of blocks".into()),
    };
    let mut text = String::new();
    for block in content {
        match block["type"].as_str() {
            Some("text") => text.push_str(block["text"].as_str().unwrap_or("")),
            Some("image") => text.push_str(&image_text(block)?),
            Some("document") => text.push_str("[non-text block]"),
            _ => return Err(format!("content block {block} has no known type")),
        }
    }
    non_empty(text)
}

/// An image block as the text a scenario's predicates see: `[image <media type>, <n> bytes]`;
/// a block CMA would refuse is an error.
fn image_text(block: &Value) -> Result<String, String> {
    let source = &block["source"];
    if source["type"] != "base64" {
        return Err(format!("image block {block} needs source.type \"base64\""));
    }
    let media = source["media_type"].as_str().unwrap_or("");
    if !["image/png", "image/jpeg", "image/gif", "image/webp"].contains(&media) {
        return Err(format!(
            "image media_type {media:?} is not png, jpeg, gif or webp"
        ));
    }
    let data = source["data"].as_str().unwrap_or("");
    let bytes = data.trim_end_matches('=').len() * 3 / 4;
    if bytes == 0
        || !data
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
    {
        return Err("image source.data must be non-empty standard base64".into());
    }
    Ok(format!("[image {media}, {bytes} bytes]"))
}

fn non_empty(text: String) -> Result<String, String> {
    if text.is_empty() {
        Err("tool result content must not be empty (send \"(no output)\")".into())
    } else {
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::scenario::Scenario;
    use crate::world::WorldConfig;

    #[tokio::test]
    async fn results_are_checked_recorded_once_and_advance_the_script() {
        let scenario = Scenario::parse(
            "[[sessions]]\nid = \"s1\"\n\
             [[sessions.steps]]\ntool = \"bash\"\ninput = { command = \"a\" }\nexpect = { contains = [\"ok\"] }\n\
             [[sessions.steps]]\ntool = \"lookup\"\ncustom = true\n",
        )
        .unwrap();
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let w = World::new(&scenario, WorldConfig::default(), tx);
        w.open_sessions();
        let page = w.events_page("s1", Some(2), None, false).unwrap();
        assert_eq!(page["data"].as_array().unwrap().len(), 2);
        let rest = w
            .events_page("s1", None, page["next_page"].as_str(), false)
            .unwrap();
        let call = rest["data"][0].clone();
        assert_eq!(call["type"], "agent.tool_use");
        let id = call["id"].as_str().unwrap();
        let answer = |text: &str| json!({"events": [{"type": "user.tool_result", "tool_use_id": id, "content": [{"type": "text", "text": text}]}]});
        assert_eq!(
            w.post_events("s1", &answer("")).unwrap_err().status,
            400,
            "empty content"
        );
        let unknown = json!({"events": [{"type": "user.tool_result", "tool_use_id": "nope", "content": "x"}]});
        assert_eq!(w.post_events("s1", &unknown).unwrap_err().status, 400);
        w.post_events("s1", &answer("all ok")).unwrap();
        assert_eq!(
            w.post_events("s1", &answer("again")).unwrap_err().status,
            409
        );
        let report = w.report();
        assert_eq!(report.sessions[0].steps[0].outcome, "passed");
        assert_eq!(
            report.violations.len(),
            1,
            "answered twice: {:?}",
            report.violations
        );
        // The next step, a custom tool, wants a custom result.
        let all = w.events_page("s1", Some(1000), None, false).unwrap();
        let custom = all["data"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .find(|e| e["type"] == "agent.custom_tool_use")
            .unwrap()
            .clone();
        let cid = custom["id"].as_str().unwrap();
        let wrong =
            json!({"events": [{"type": "user.tool_result", "tool_use_id": cid, "content": "x"}]});
        assert_eq!(w.post_events("s1", &wrong).unwrap_err().status, 400);
        let right = json!({"events": [{"type": "user.custom_tool_result", "custom_tool_use_id": cid, "is_error": true, "content": "no such tool"}]});
        w.post_events("s1", &right).unwrap();
        let report = w.report();
        assert!(report.sessions[0].ended);
        assert_eq!(report.sessions[0].status, "terminated");
        assert!(
            !report.passed,
            "the work item was never stopped, and a call was answered twice"
        );
    }
}

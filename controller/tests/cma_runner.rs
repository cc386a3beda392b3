//! The session runner against a local fake of CMA's session endpoints: each tool call answered
//! exactly once, confirmations honoured, idle exit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::routing::get;
use cordon_controller::cma::client::{CmaClient, Key, Work};
use cordon_controller::cma::runner::{RunEnd, RunnerConfig, ToolExecutor, run_session};
use cordon_sandbox_agent::tools::{ToolCall, ToolResult};
use futures_util::StreamExt as _;
use serde_json::{Value, json};

#[derive(Default)]
struct Session {
    history: Vec<Value>,
    posted: Vec<Value>,
    streams: usize,
}

type Shared = Arc<Mutex<Session>>;

fn tool(id: &str, command: &str, ask: bool) -> Value {
    let mut e =
        json!({"type": "agent.tool_use", "id": id, "name": "bash", "input": {"command": command}});
    if ask {
        e["evaluated_permission"] = "ask".into();
    }
    e
}

/// Live events, sent on the first stream connection only (and added to the history).
fn live() -> Vec<Value> {
    vec![
        tool("tu_2", "rm -rf /tmp/x", true),
        json!({"type": "user.tool_confirmation", "tool_use_id": "tu_2", "result": "allow"}),
        tool("tu_3", "curl evil", true),
        json!({"type": "user.tool_confirmation", "tool_use_id": "tu_3", "result": "deny"}),
        json!({"type": "session.status_idle", "stop_reason": {"type": "end_turn"}}),
    ]
}

async fn spawn(session: Shared) -> String {
    let app = Router::new()
        .route(
            "/v1/sessions/{id}/events",
            get(|State(s): State<Shared>| async move {
                axum::Json(json!({"data": s.lock().unwrap().history.clone(), "next_page": null}))
            })
            .post(|State(s): State<Shared>, body: String| async move {
                let body: Value = serde_json::from_str(&body).unwrap();
                let mut g = s.lock().unwrap();
                for e in body["events"].as_array().unwrap() {
                    g.history.push(e.clone());
                    g.posted.push(e.clone());
                }
                axum::Json(json!({}))
            }),
        )
        .route(
            "/v1/sessions/{id}/events/stream",
            get(|State(s): State<Shared>| async move {
                let frames: Vec<Result<String, std::io::Error>> = {
                    let mut g = s.lock().unwrap();
                    g.streams += 1;
                    if g.streams == 1 {
                        let events = live();
                        g.history.extend(events.iter().cloned());
                        events
                            .iter()
                            .map(|e| {
                                Ok(format!(
                                    "event: {}\ndata: {e}\n\n",
                                    e["type"].as_str().unwrap()
                                ))
                            })
                            .collect()
                    } else {
                        vec![Ok("event: ping\ndata: {}\n\n".to_string())]
                    }
                };
                // Then the stream stays open, as CMA's does.
                let body =
                    futures_util::stream::iter(frames).chain(futures_util::stream::pending());
                (
                    [("content-type", "text/event-stream")],
                    Body::from_stream(body),
                )
            }),
        )
        .with_state(session);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}")
}

#[derive(Default)]
struct FakeTools(Mutex<Vec<String>>);

#[async_trait]
impl ToolExecutor for FakeTools {
    async fn call(&self, call: &ToolCall) -> ToolResult {
        let command = call.input["command"].as_str().unwrap_or("").to_string();
        self.0.lock().unwrap().push(command.clone());
        ToolResult::ok(format!("ran {command}"))
    }
}

#[tokio::test]
async fn answers_each_call_once_honours_confirmations_and_idles_out() {
    let session = Shared::default();
    {
        let mut g = session.lock().unwrap();
        g.history = vec![
            json!({"type": "user.message", "id": "m1"}),
            tool("tu_0", "already answered", false),
            json!({"type": "user.tool_result", "tool_use_id": "tu_0", "is_error": false, "content": []}),
            tool("tu_1", "ls", false),
        ];
    }
    let base = spawn(session.clone()).await;
    let client = CmaClient::new(&base, "env_1", Key::new("k".into()), "w").unwrap();
    let work: Work = serde_json::from_value(
        json!({"id": "work_1", "data": {"type": "session", "id": "sesn_1"}}),
    )
    .unwrap();
    let tools = FakeTools::default();
    let config = RunnerConfig {
        max_idle: Duration::from_millis(300),
        ..RunnerConfig::default()
    };
    let (end, calls) = tokio::time::timeout(
        Duration::from_secs(20),
        run_session(&client, &work, "sesn_1", &tools, &config),
    )
    .await
    .expect("the runner idles out")
    .unwrap();
    assert_eq!(end, RunEnd::Idle);
    assert_eq!(calls, 2);
    assert_eq!(
        *tools.0.lock().unwrap(),
        ["ls", "rm -rf /tmp/x"],
        "tu_0 answered before, tu_3 denied"
    );
    let posted = session.lock().unwrap().posted.clone();
    let ids: Vec<_> = posted
        .iter()
        .map(|e| e["tool_use_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["tu_1", "tu_2"]);
    assert_eq!(posted[0]["type"], "user.tool_result");
    assert_eq!(posted[0]["content"][0]["text"], "ran ls");
}

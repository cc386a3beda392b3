//! The controller's CMA service end to end, root tier: a fake CMA (work queue and session
//! endpoints on loopback) hands out a session; the controller claims it, starts a real gVisor
//! sandbox behind the real proxy, runs the agent's tool call in it (an HTTPS request the policy
//! allows), posts the result, idles out, and tears everything down.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::routing::{get, post};
use cordon_controller::cma::client::{CmaClient, Key};
use cordon_controller::cma::runner::{RunEnd, RunnerConfig};
use cordon_controller::cma::service::{Service, WorkEnd};
use cordon_controller::config::SandboxConfig;
use cordon_controller::sandbox::Runtime;
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use support::World;

#[derive(Default)]
struct Cma {
    polls: usize,
    calls: Vec<String>,
    posted: Vec<Value>,
    streams: usize,
}

type Shared = Arc<Mutex<Cma>>;

async fn spawn_cma(cma: Shared) -> String {
    let app = Router::new()
        .route(
            "/v1/environments/{env}/work/poll",
            get(|State(c): State<Shared>| async move {
                let mut g = c.lock().unwrap();
                g.polls += 1;
                g.calls.push("poll".into());
                if g.polls == 1 {
                    axum::Json(json!({"type": "work", "id": "work_1", "data": {"type": "session", "id": "sesn_e2e"}, "state": "queued", "secret": null}))
                } else {
                    axum::Json(Value::Null)
                }
            }),
        )
        .route(
            "/v1/environments/{env}/work/{id}/ack",
            post(|State(c): State<Shared>| async move {
                c.lock().unwrap().calls.push("ack".into());
                axum::Json(json!({}))
            }),
        )
        .route(
            "/v1/environments/{env}/work/{id}/heartbeat",
            post(|State(c): State<Shared>| async move {
                c.lock().unwrap().calls.push("heartbeat".into());
                axum::Json(json!({"type": "work_heartbeat", "last_heartbeat": "hb", "lease_extended": true, "state": "active", "ttl_seconds": 60}))
            }),
        )
        .route(
            "/v1/environments/{env}/work/{id}/stop",
            post(|State(c): State<Shared>, body: String| async move {
                c.lock().unwrap().calls.push(format!("stop {body}"));
                axum::Json(json!({}))
            }),
        )
        .route(
            "/v1/sessions/{id}/events",
            get(|State(c): State<Shared>| async move {
                let answered = !c.lock().unwrap().posted.is_empty();
                let mut history = vec![json!({"type": "agent.tool_use", "id": "tu_1", "name": "bash", "input": {"command": "echo hello-from-sandbox; curl -s -o /dev/null -w '%{http_code}' https://allowed.test/"}})];
                if answered {
                    history.push(json!({"type": "user.tool_result", "tool_use_id": "tu_1"}));
                }
                axum::Json(json!({"data": history, "next_page": null}))
            })
            .post(|State(c): State<Shared>, body: String| async move {
                let body: Value = serde_json::from_str(&body).unwrap();
                c.lock().unwrap().posted.extend(body["events"].as_array().unwrap().iter().cloned());
                axum::Json(json!({}))
            }),
        )
        .route(
            "/v1/sessions/{id}/events/stream",
            get(|State(c): State<Shared>| async move {
                c.lock().unwrap().streams += 1;
                let idle = json!({"type": "session.status_idle", "stop_reason": {"type": "end_turn"}});
                let frames = vec![Ok::<_, std::io::Error>(format!("event: session.status_idle\ndata: {idle}\n\n"))];
                let body = futures_util::stream::iter(frames).chain(futures_util::stream::pending());
                ([("content-type", "text/event-stream")], Body::from_stream(body))
            }),
        )
        .with_state(cma);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cma_session_runs_in_a_sandbox_and_is_torn_down() {
    serve_one(false).await;
}

/// A controller restarted mid-session finds the session's sandbox still running: it serves
/// the session in it rather than failing to start a second one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_sandbox_survived_a_restart_is_resumed() {
    serve_one(true).await;
}

async fn serve_one(already_running: bool) {
    let mut world = World::new(if already_running { 238 } else { 237 }, 24, "");
    if already_running {
        world
            .start("sesn_e2e")
            .unwrap_or_else(|out| panic!("{out:?}"));
    }
    let cma = Shared::default();
    let base = spawn_cma(cma.clone()).await;
    let config = SandboxConfig::load(&world.config()).unwrap();
    let runtime = Runtime::open(config).unwrap();
    let service = Arc::new(Service {
        client: CmaClient::new(&base, "env_1", Key::new("env-key".into()), "test-worker").unwrap(),
        runtime: tokio::sync::Mutex::new(runtime),
        runner: RunnerConfig {
            max_idle: Duration::from_millis(500),
            ..RunnerConfig::default()
        },
        lease_ttl_secs: 60,
        wake: Arc::new(tokio::sync::Notify::new()),
    });
    let serving = service.drain().await;
    assert_eq!(serving.len(), 1, "one session claimed");
    let mut ends = Vec::new();
    for handle in serving {
        ends.push(
            tokio::time::timeout(Duration::from_secs(60), handle)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(ends, [WorkEnd::Done(RunEnd::Idle)]);

    let g = cma.lock().unwrap();
    assert_eq!(g.posted.len(), 1, "{:?}", g.posted);
    let text = g.posted[0]["content"][0]["text"].as_str().unwrap();
    assert!(
        text.contains("hello-from-sandbox") && text.contains("200"),
        "{text}"
    );
    assert_eq!(g.posted[0]["tool_use_id"], "tu_1");
    assert_eq!(g.posted[0]["is_error"], false);
    assert_eq!(g.calls.first().map(String::as_str), Some("poll"));
    assert!(g.calls.contains(&"ack".to_string()) && g.calls.contains(&"heartbeat".to_string()));
    assert_eq!(
        g.calls.last().map(String::as_str),
        Some(r#"stop {"force":true}"#),
        "{:?}",
        g.calls
    );
    drop(g);
    // The sandbox is gone with the session.
    assert!(!world.netns_exists("sesn_e2e"));
    assert!(world.containers().is_empty(), "{:?}", world.containers());
    let audit = std::fs::read_to_string(world.dir.path().join("state/audit.log")).unwrap();
    assert!(
        audit.contains("\"session\":\"sesn_e2e\"") && audit.contains("allowed.test"),
        "the proxy recorded the session's request"
    );
}

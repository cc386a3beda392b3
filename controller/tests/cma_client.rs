//! The work-queue client against a local fake of CMA's endpoints: headers, credentials per
//! call, the heartbeat protocol, and how errors are classified.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cordon_controller::cma::events::{SessionEvent, StreamItem};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use cordon_controller::cma::client::{CmaClient, Key};

/// One request as the fake saw it.
#[derive(Debug, Clone)]
struct Seen {
    what: String,
    authorization: String,
    worker: Option<String>,
    beta: Option<String>,
    version: Option<String>,
}

#[derive(Default)]
struct Fake {
    seen: Vec<Seen>,
    polls: usize,
    last_heartbeat: Option<String>,
}

type Shared = Arc<Mutex<Fake>>;

fn note(fake: &Shared, what: String, headers: &HeaderMap) {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    fake.lock().unwrap().seen.push(Seen {
        what,
        authorization: h("authorization").unwrap_or_default(),
        worker: h("anthropic-worker-id"),
        beta: h("anthropic-beta"),
        version: h("anthropic-version"),
    });
    assert!(headers.get("x-api-key").is_none(), "never two credentials");
}

fn error(status: StatusCode, kind: &str, code: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({"type": "error", "error": {"type": kind, "message": "nope", "details": {"error_code": code}}, "request_id": "req_1"})),
    )
        .into_response()
}

async fn spawn_fake(fake: Shared) -> String {
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(br#"{"sessions_token":"sess-token-1"}"#);
    let app = Router::new()
        .route(
            "/v1/environments/{env}/work/poll",
            get(move |State(f): State<Shared>, Path(env): Path<String>, Query(q): Query<std::collections::HashMap<String, String>>, headers: HeaderMap| {
                let secret = secret.clone();
                async move {
                    note(&f, format!("poll {env} block_ms={}", q.get("block_ms").cloned().unwrap_or_default()), &headers);
                    let n = { let mut g = f.lock().unwrap(); g.polls += 1; g.polls };
                    match n {
                        1 => axum::Json(serde_json::Value::Null).into_response(),
                        2 => axum::Json(serde_json::json!({"type": "work", "id": "work_1", "environment_id": env, "data": {"type": "session", "id": "sesn_1"}, "state": "queued", "secret": secret})).into_response(),
                        _ => error(StatusCode::SERVICE_UNAVAILABLE, "overloaded_error", "busy"),
                    }
                }
            }),
        )
        .route(
            "/v1/environments/{env}/work/{id}/ack",
            post(|State(f): State<Shared>, Path((_, id)): Path<(String, String)>, headers: HeaderMap| async move {
                note(&f, format!("ack {id}"), &headers);
                axum::Json(serde_json::json!({}))
            }),
        )
        .route(
            "/v1/environments/{env}/work/{id}/heartbeat",
            post(|State(f): State<Shared>, Query(q): Query<std::collections::HashMap<String, String>>, headers: HeaderMap| async move {
                let expected = q.get("expected_last_heartbeat").cloned().unwrap_or_default();
                note(&f, format!("heartbeat expected={expected} ttl={}", q.get("desired_ttl_seconds").cloned().unwrap_or_default()), &headers);
                let mut g = f.lock().unwrap();
                let ok = match &g.last_heartbeat {
                    None => expected == "NO_HEARTBEAT",
                    Some(last) => *last == expected,
                };
                if !ok {
                    return error(StatusCode::PRECONDITION_FAILED, "invalid_request_error", "heartbeat_precondition_failed");
                }
                let next = format!("hb-{}", g.seen.len());
                g.last_heartbeat = Some(next.clone());
                axum::Json(serde_json::json!({"type": "work_heartbeat", "last_heartbeat": next, "lease_extended": true, "state": "active", "ttl_seconds": 40})).into_response()
            }),
        )
        .route(
            "/v1/environments/{env}/work/{id}/stop",
            post(|State(f): State<Shared>, headers: HeaderMap, body: String| async move {
                note(&f, format!("stop {body}"), &headers);
                error(StatusCode::CONFLICT, "invalid_request_error", "already_stopped")
            }),
        )
        .route(
            "/v1/sessions/{id}/events",
            get(|State(f): State<Shared>, Query(q): Query<std::collections::HashMap<String, String>>, headers: HeaderMap| async move {
                note(&f, format!("events page={}", q.get("page").cloned().unwrap_or_default()), &headers);
                let (data, next) = match q.get("page").map(String::as_str) {
                    None => (serde_json::json!([{"type": "user.message", "id": "ev_1"}]), serde_json::json!("p2")),
                    Some("p2") => (serde_json::json!([{"type": "agent.tool_use", "id": "tu_1", "name": "bash", "input": {"command": "ls"}}]), serde_json::Value::Null),
                    Some(_) => (serde_json::json!([]), serde_json::Value::Null),
                };
                axum::Json(serde_json::json!({"data": data, "next_page": next}))
            })
            .post(|State(f): State<Shared>, headers: HeaderMap, body: String| async move {
                note(&f, format!("send {body}"), &headers);
                axum::Json(serde_json::json!({"data": []}))
            }),
        )
        .route(
            "/v1/sessions/{id}/events/stream",
            get(|State(f): State<Shared>, headers: HeaderMap| async move {
                note(&f, "stream".into(), &headers);
                (
                    [("content-type", "text/event-stream")],
                    "event: ping\ndata: {}\n\nevent: agent.tool_use\ndata: {\"type\":\"agent.tool_use\",\"id\":\"tu_2\",\"name\":\"read\",\"input\":{}}\n\nevent: session.status_idle\ndata: {\"type\":\"session.status_idle\"}\n\n",
                )
            }),
        )
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}")
}

#[tokio::test]
async fn speaks_the_work_queue_protocol() {
    let fake = Shared::default();
    let base = spawn_fake(fake.clone()).await;
    let client = CmaClient::new(
        &base,
        "env_1",
        Key::new("sk-ant-oat01-envkey".into()),
        "host-abc",
    )
    .unwrap();

    assert_eq!(
        client.poll(5000).await.unwrap(),
        None,
        "an empty queue is null"
    );
    let work = client.poll(500).await.unwrap().unwrap();
    assert_eq!(
        (
            work.id.as_str(),
            work.data.kind.as_str(),
            work.data.id.as_str()
        ),
        ("work_1", "session", "sesn_1")
    );
    client.ack(&work).await.unwrap();
    let first = client.heartbeat(&work, None, 60).await.unwrap();
    assert!(first.keep_serving());
    assert_eq!(first.next_in(), std::time::Duration::from_secs(20));
    let second = client
        .heartbeat(&work, Some(&first.last_heartbeat), 60)
        .await
        .unwrap();
    // Echoing a stale heartbeat is a lost lease.
    let lost = client
        .heartbeat(&work, Some(&first.last_heartbeat), 60)
        .await
        .unwrap_err();
    assert!(lost.is_lease_lost(), "{lost}");
    assert!(
        lost.to_string().contains("heartbeat_precondition_failed"),
        "{lost}"
    );
    assert_ne!(second.last_heartbeat, first.last_heartbeat);
    // Reconcile: every page, in order; then a result.
    let events = client.all_events(&work, "sesn_1").await.unwrap();
    assert_eq!(events.len(), 2);
    let SessionEvent::ToolUse(call) = SessionEvent::parse(&events[1]) else {
        panic!("{:?}", events[1]);
    };
    let result = cordon_controller::cma::events::tool_result(&call, false, "a.txt");
    client
        .send_events(&work, "sesn_1", vec![result])
        .await
        .unwrap();
    let mut streamed = Vec::new();
    client
        .stream_events(&work, "sesn_1", |item| {
            streamed.push(item);
            true
        })
        .await
        .unwrap();
    assert_eq!(streamed.len(), 2, "ping skipped: {streamed:?}");
    let StreamItem::Event(SessionEvent::ToolUse(call)) = &streamed[0] else {
        panic!("{streamed:?}");
    };
    assert_eq!(call.id, "tu_2");
    client.stop(&work, true).await.unwrap();
    let busy = client.poll(500).await.unwrap_err();
    assert!(busy.is_retryable(), "{busy}");

    let seen = fake.lock().unwrap().seen.clone();
    let calls: Vec<_> = seen.iter().map(|s| s.what.as_str()).collect();
    assert_eq!(
        calls,
        [
            "poll env_1 block_ms=999",
            "poll env_1 block_ms=500",
            "ack work_1",
            "heartbeat expected=NO_HEARTBEAT ttl=60",
            &format!("heartbeat expected={} ttl=60", first.last_heartbeat),
            &format!("heartbeat expected={} ttl=60", first.last_heartbeat),
            "events page=",
            "events page=p2",
            r#"send {"events":[{"content":[{"text":"a.txt","type":"text"}],"is_error":false,"tool_use_id":"tu_1","type":"user.tool_result"}]}"#,
            "stream",
            "stop {\"force\":true}",
            "poll env_1 block_ms=500",
        ]
    );
    for Seen {
        what,
        authorization: auth,
        worker,
        beta,
        version,
    } in &seen
    {
        assert_eq!(beta.as_deref(), Some("managed-agents-2026-04-01"), "{what}");
        assert_eq!(version.as_deref(), Some("2026-10-21"), "{what}");
        // Poll and ack: the environment key; heartbeat and stop: the work item's own token.
        let want = if what.starts_with("poll") || what.starts_with("ack") {
            "Bearer sk-ant-oat01-envkey"
        } else {
            "Bearer sess-token-1"
        };
        assert_eq!(auth, want, "{what}");
        assert_eq!(worker.is_some(), what.starts_with("poll"), "{what}");
    }
    assert!(!format!("{client:?}").contains("envkey"));
    assert!(
        !format!("{work:?}").contains(&work_secret_fragment()),
        "{work:?}"
    );
}

/// A piece of the work item's encoded secret, to check it never prints.
fn work_secret_fragment() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"sessions_token":"sess-token-1"}"#)
        [..12]
        .to_string()
}

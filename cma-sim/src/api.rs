//! The HTTP face of the simulator (axum): the CMA routes Cordon and the official SDK use
//! (the Agents API's are in [`crate::agents`]), plus `GET /sim/report`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use crate::world::{ApiError, Scope, World};

/// How often an idle event stream carries a `ping`.
const PING_EVERY: Duration = Duration::from_secs(5);

type Shared = Arc<World>;
type Params = Query<HashMap<String, String>>;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"type": self.kind, "message": self.message});
        if let Some(code) = self.code {
            error["details"] = json!({ "error_code": code });
        }
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let body = json!({"type": "error", "error": error, "request_id": crate::world::random_token("req_sim_")});
        (status, axum::Json(body)).into_response()
    }
}

/// The routes.
pub fn router(world: Shared) -> Router {
    let work = "/v1/environments/{env}/work";
    Router::new()
        .route(&format!("{work}/poll"), get(poll))
        .route(&format!("{work}/{{id}}"), get(get_work))
        .route(&format!("{work}/{{id}}/ack"), post(ack))
        .route(&format!("{work}/{{id}}/heartbeat"), post(heartbeat))
        .route(&format!("{work}/{{id}}/stop"), post(stop))
        .route("/v1/sessions/{id}", get(session))
        .route(
            "/v1/sessions/{id}/events",
            get(list_events).post(post_events),
        )
        .route("/v1/sessions/{id}/events/stream", get(stream))
        .route(
            "/sim/report",
            get(|State(w): State<Shared>| async move { axum::Json(w.report()) }),
        )
        .merge(crate::agents::routes())
        .with_state(world)
}

fn check(
    world: &World,
    headers: &HeaderMap,
    scope: Scope<'_>,
    route: &str,
) -> Result<(), ApiError> {
    world.count_call(route);
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    world.authorize(
        header("authorization"),
        header("x-api-key"),
        header("anthropic-beta"),
        header("anthropic-version"),
        scope,
    )
}

fn environment(world: &World, env: &str) -> Result<(), ApiError> {
    if env == world.environment_id {
        Ok(())
    } else {
        Err(ApiError::new(
            404,
            "not_found_error",
            format!("environment {env} does not exist"),
        ))
    }
}

fn number<T: std::str::FromStr>(
    params: &HashMap<String, String>,
    name: &str,
) -> Result<Option<T>, ApiError> {
    params
        .get(name)
        .map(|v| {
            v.parse::<T>()
                .map_err(|_| ApiError::invalid(format!("{name} must be a number, got {v:?}")))
        })
        .transpose()
}

async fn poll(
    State(w): State<Shared>,
    Path(env): Path<String>,
    Query(q): Params,
    headers: HeaderMap,
) -> Result<axum::Json<Value>, ApiError> {
    check(&w, &headers, Scope::Environment, "poll")?;
    environment(&w, &env)?;
    if headers.get("anthropic-worker-id").is_none() {
        return Err(ApiError::invalid(
            "polls carry an Anthropic-Worker-ID header",
        ));
    }
    let block: u64 = number(&q, "block_ms")?.unwrap_or(999);
    if !(1..=999).contains(&block) {
        return Err(ApiError::invalid("block_ms must be between 1 and 999"));
    }
    let reclaim: Option<u64> = number(&q, "reclaim_older_than_ms")?;
    w.poll(
        Duration::from_millis(block),
        reclaim.map(Duration::from_millis),
    )
    .await
    .map(axum::Json)
}

async fn get_work(
    State(w): State<Shared>,
    Path((env, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<axum::Json<Value>, ApiError> {
    check(&w, &headers, Scope::Work(&id), "get work")?;
    environment(&w, &env)?;
    w.get_work(&id).map(axum::Json)
}

async fn ack(
    State(w): State<Shared>,
    Path((env, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<axum::Json<Value>, ApiError> {
    check(&w, &headers, Scope::Environment, "ack")?;
    environment(&w, &env)?;
    w.ack(&id).map(axum::Json)
}

async fn heartbeat(
    State(w): State<Shared>,
    Path((env, id)): Path<(String, String)>,
    Query(q): Params,
    headers: HeaderMap,
) -> Result<axum::Json<Value>, ApiError> {
    check(&w, &headers, Scope::Work(&id), "heartbeat")?;
    environment(&w, &env)?;
    let expected = q.get("expected_last_heartbeat").ok_or_else(|| {
        ApiError::invalid(
            "heartbeat needs expected_last_heartbeat in the query string (NO_HEARTBEAT to claim)",
        )
    })?;
    let ttl: u64 = number(&q, "desired_ttl_seconds")?.unwrap_or(60);
    w.heartbeat(&id, expected, ttl).map(axum::Json)
}

async fn stop(
    State(w): State<Shared>,
    Path((env, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    check(&w, &headers, Scope::Work(&id), "stop")?;
    environment(&w, &env)?;
    let force = if body.is_empty() {
        false
    } else {
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::invalid(format!("the body is not JSON: {e}")))?;
        v["force"].as_bool().unwrap_or(false)
    };
    w.stop(&id, force).map(axum::Json)
}

async fn session(
    State(w): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<axum::Json<Value>, ApiError> {
    // The organization API key may read any session (CMA.md: control-plane reads).
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let org = w
        .authorize_org(
            header("authorization"),
            header("x-api-key"),
            header("anthropic-beta"),
            header("anthropic-version"),
        )
        .is_ok();
    if org {
        w.count_call("get session");
    } else {
        check(&w, &headers, Scope::Session(&id), "get session")?;
    }
    let mut session = w.session(&id)?;
    if let Some(agent) = w.session_agent(&id) {
        session["agent"] = agent;
    }
    Ok(axum::Json(session))
}

async fn list_events(
    State(w): State<Shared>,
    Path(id): Path<String>,
    Query(q): Params,
    headers: HeaderMap,
) -> Result<axum::Json<Value>, ApiError> {
    check(&w, &headers, Scope::Session(&id), "list events")?;
    let limit: Option<usize> = number(&q, "limit")?;
    let descending = match q.get("order").map(String::as_str) {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "order must be asc or desc, got {other:?}"
            )));
        }
    };
    w.events_page(&id, limit, q.get("page").map(String::as_str), descending)
        .map(axum::Json)
}

async fn post_events(
    State(w): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    check(&w, &headers, Scope::Session(&id), "send events")?;
    let body: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("the body is not JSON: {e}")))?;
    w.post_events(&id, &body).map(axum::Json)
}

/// `GET /v1/sessions/{id}/events/stream`: server-sent events from now on, with pings.
async fn stream(
    State(w): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check(&w, &headers, Scope::Session(&id), "stream events")?;
    let (mut live, drop_early) = w.subscribe(&id)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(64);
    tokio::spawn(async move {
        loop {
            let frame = match tokio::time::timeout(PING_EVERY, live.recv()).await {
                Err(_) => "event: ping\ndata: {}\n\n".to_string(),
                Ok(Ok(event)) => {
                    let kind = event["type"].as_str().unwrap_or("message").to_string();
                    let frame = format!("event: {kind}\ndata: {event}\n\n");
                    let last = drop_early || kind == "session.status_terminated";
                    if tx.send(Ok(Bytes::from(frame))).await.is_err() || last {
                        return;
                    }
                    continue;
                }
                Ok(Err(RecvError::Lagged(n))) => {
                    format!(
                        "event: error\ndata: {{\"type\":\"error\",\"message\":\"stream fell {n} events behind; reconnect\"}}\n\n"
                    )
                }
                Ok(Err(RecvError::Closed)) => return,
            };
            if tx.send(Ok(Bytes::from(frame))).await.is_err() {
                return;
            }
        }
    });
    let body = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    Ok(Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}

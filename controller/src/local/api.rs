//! The local sessions API, on the admin listener (loopback only) behind the admin token
//! (`Authorization: Bearer <state_dir>/controller/admin-token`): a session runs commands in a
//! sandbox, so whoever may start one must be able to read the controller's state.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | /v1/agents | every agent definition |
//! | POST | /v1/agents | create one (body: the definition) |
//! | GET | /v1/agents/{name} | one |
//! | POST | /v1/agents/{name}[?version=N] | replace its definition (only if at version N) |
//! | POST | /v1/agents/{name}/archive | no new sessions of it |
//! | GET | /v1/sessions[?limit=N] | sessions, newest first |
//! | POST | /v1/sessions | `{"agent": NAME, "title"?: TEXT}`: a new session, idle |
//! | GET | /v1/sessions/{id} | one |
//! | POST | /v1/sessions/{id}/events | `{"events": [...]}`: user.message, user.interrupt, user.tool_confirmation |
//! | GET | /v1/sessions/{id}/events[?page=P&limit=N] | the history, `next_page` to go on |
//! | GET | /v1/sessions/{id}/events/stream[?page=P] | the history after P, then live (SSE) |
//! | POST | /v1/sessions/{id}/archive | stop it for good |
//!
//! Errors are CMA's shape: `{"type": "error", "error": {"type", "message", "details"?}}`; a
//! refused definition or batch of events lists each problem in `details.problems`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::agent::AgentSpec;
use super::events::Stored;
use super::manager::{LocalError, LocalSessions};
use crate::store::local::{AgentRecord, LocalSessionRecord};

/// Largest request body taken (a definition's system prompt, a batch of messages).
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Events per page when the request names no limit, and the most it may.
const DEFAULT_PAGE: u32 = 1000;
const MAX_PAGE: u32 = 10_000;

/// A refusal of the request itself (bad JSON, a bad cursor), answered in CMA's shape.
#[derive(Debug)]
struct BadRequest(String);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        error(400, "invalid_request_error", self.0)
    }
}

/// An error in CMA's shape.
pub fn error(status: u16, kind: &str, message: impl Into<String>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        axum::Json(json!({"type": "error", "error": {"type": kind, "message": message.into()}})),
    )
        .into_response()
}

impl IntoResponse for LocalError {
    fn into_response(self) -> Response {
        let status = self.status();
        let kind = match status {
            400 => "invalid_request_error",
            404 => "not_found_error",
            409 => "conflict_error",
            503 => "unavailable_error",
            507 => "storage_full_error",
            _ => "api_error",
        };
        if status >= 500 {
            tracing::error!(error = %self, "local sessions API");
        }
        if let LocalError::Invalid(problems) = &self {
            // Every problem at once, also one by one for clients that list them.
            let body = json!({"type": "error", "error": {"type": kind, "message": self.to_string(),
                "details": {"problems": problems}}});
            return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
        }
        error(status, kind, self.to_string())
    }
}

/// An agent as the API shows it.
pub fn agent_json(record: &AgentRecord) -> Value {
    json!({
        "type": "agent",
        "name": record.name,
        "version": record.version,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "archived_at": record.archived_at,
        "definition": serde_json::from_str::<Value>(&record.spec).unwrap_or(Value::Null),
    })
}

/// A session as the API shows it.
pub fn session_json(record: &LocalSessionRecord) -> Value {
    json!({
        "type": "session",
        "id": record.id,
        "status": record.status,
        "title": record.title,
        "agent": {"name": record.agent, "version": record.agent_version},
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "archived_at": record.archived_at,
    })
}

/// The routes (the caller adds the token check), for a router of any state.
pub fn router<S: Clone + Send + Sync + 'static>(local: Arc<LocalSessions>) -> Router<S> {
    Router::new()
        .route("/v1/agents", get(list_agents).post(create_agent))
        .route("/v1/agents/{name}", get(show_agent).post(update_agent))
        .route("/v1/agents/{name}/archive", post(archive_agent))
        .route("/v1/sessions", get(list_sessions).post(create_session))
        .route("/v1/sessions/{id}", get(show_session))
        .route(
            "/v1/sessions/{id}/events",
            get(list_events).post(post_events),
        )
        .route("/v1/sessions/{id}/events/stream", get(stream_events))
        .route("/v1/sessions/{id}/archive", post(archive_session))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(local)
}

/// A JSON body, or a clear error saying what was wrong with it. Read whatever the request's
/// content type says (`curl -d` sends a form type): the routes take JSON only.
fn body<T: serde::de::DeserializeOwned>(bytes: &axum::body::Bytes) -> Result<T, BadRequest> {
    if bytes.is_empty() {
        return Err(BadRequest(
            "the request has no body: send a JSON object (docs/OPEN-MODELS.md, \"The API\")".into(),
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| BadRequest(format!("the body: {e}")))
}

async fn list_agents(State(local): State<Arc<LocalSessions>>) -> Response {
    match local.store.agents() {
        Ok(agents) => {
            axum::Json(json!({"data": agents.iter().map(agent_json).collect::<Vec<_>>()}))
                .into_response()
        }
        Err(e) => LocalError::from(e).into_response(),
    }
}

async fn create_agent(
    State(local): State<Arc<LocalSessions>>,
    spec: axum::body::Bytes,
) -> Response {
    let spec = match body::<AgentSpec>(&spec) {
        Ok(spec) => spec,
        Err(r) => return r.into_response(),
    };
    match local.create_agent(spec) {
        Ok(record) => (StatusCode::CREATED, axum::Json(agent_json(&record))).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn show_agent(State(local): State<Arc<LocalSessions>>, Path(name): Path<String>) -> Response {
    match local.agent(&name) {
        Ok(record) => axum::Json(agent_json(&record)).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionQuery {
    version: Option<i64>,
}

async fn update_agent(
    State(local): State<Arc<LocalSessions>>,
    Path(name): Path<String>,
    Query(query): Query<VersionQuery>,
    spec: axum::body::Bytes,
) -> Response {
    let spec = match body::<AgentSpec>(&spec) {
        Ok(spec) => spec,
        Err(r) => return r.into_response(),
    };
    match local.update_agent(&name, spec, query.version) {
        Ok(record) => axum::Json(agent_json(&record)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn archive_agent(
    State(local): State<Arc<LocalSessions>>,
    Path(name): Path<String>,
) -> Response {
    match local.archive_agent(&name) {
        Ok(record) => axum::Json(agent_json(&record)).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<u32>,
}

async fn list_sessions(
    State(local): State<Arc<LocalSessions>>,
    Query(query): Query<ListQuery>,
) -> Response {
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    match local.store.local_sessions(limit) {
        Ok(sessions) => {
            axum::Json(json!({"data": sessions.iter().map(session_json).collect::<Vec<_>>()}))
                .into_response()
        }
        Err(e) => LocalError::from(e).into_response(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSession {
    agent: String,
    title: Option<String>,
}

async fn create_session(
    State(local): State<Arc<LocalSessions>>,
    new: axum::body::Bytes,
) -> Response {
    let new = match body::<NewSession>(&new) {
        Ok(new) => new,
        Err(r) => return r.into_response(),
    };
    match local.create_session(&new.agent, new.title.as_deref()) {
        Ok(record) => (StatusCode::CREATED, axum::Json(session_json(&record))).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn show_session(State(local): State<Arc<LocalSessions>>, Path(id): Path<String>) -> Response {
    match local.session(&id) {
        Ok(record) => axum::Json(session_json(&record)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn archive_session(
    State(local): State<Arc<LocalSessions>>,
    Path(id): Path<String>,
) -> Response {
    match local.archive(&id) {
        Ok(record) => axum::Json(session_json(&record)).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Posted {
    events: Vec<Value>,
}

async fn post_events(
    State(local): State<Arc<LocalSessions>>,
    Path(id): Path<String>,
    posted: axum::body::Bytes,
) -> Response {
    let posted = match body::<Posted>(&posted) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    match local.post(&id, &posted.events) {
        Ok(stored) => {
            axum::Json(json!({"data": stored.iter().map(Stored::to_json).collect::<Vec<_>>()}))
                .into_response()
        }
        Err(e) => e.into_response(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    page: Option<String>,
    limit: Option<u32>,
}

/// A page cursor: the `seq` of the last event seen.
fn cursor(page: Option<&str>) -> Result<i64, BadRequest> {
    match page {
        None | Some("") => Ok(0),
        Some(p) => p
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| BadRequest(format!("page {p:?} is not a cursor from next_page"))),
    }
}

async fn list_events(
    State(local): State<Arc<LocalSessions>>,
    Path(id): Path<String>,
    Query(query): Query<PageQuery>,
) -> Response {
    let after = match cursor(query.page.as_deref()) {
        Ok(after) => after,
        Err(r) => return r.into_response(),
    };
    let limit = query.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    match local.events(&id, after, limit) {
        Ok(events) => {
            let next = (events.len() as u32 == limit)
                .then(|| events.last().map(|e| e.seq.to_string()))
                .flatten();
            axum::Json(json!({
                "data": events.iter().map(Stored::to_json).collect::<Vec<_>>(),
                "next_page": next,
            }))
            .into_response()
        }
        Err(e) => e.into_response(),
    }
}

fn sse(stored: &Stored) -> SseEvent {
    let kind = stored.to_json()["type"]
        .as_str()
        .unwrap_or("event")
        .to_string();
    SseEvent::default()
        .event(kind)
        .id(stored.seq.to_string())
        .data(stored.to_json().to_string())
}

/// The stream: subscribed first, then the history after the cursor, then live events,
/// each exactly once (by `seq`). Ends when the session's loop ends (it was archived).
async fn stream_events(
    State(local): State<Arc<LocalSessions>>,
    Path(id): Path<String>,
    Query(query): Query<PageQuery>,
    headers: axum::http::HeaderMap,
) -> Response {
    // A reconnecting EventSource sends the last id it saw.
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let after = match cursor(resume.as_deref().or(query.page.as_deref())) {
        Ok(after) => after,
        Err(r) => return r.into_response(),
    };
    if let Err(e) = local.session(&id) {
        return e.into_response();
    }
    let live = local.subscribe(&id);
    struct Cursor {
        local: Arc<LocalSessions>,
        id: String,
        live: Option<tokio::sync::broadcast::Receiver<Stored>>,
        last: i64,
        pending: std::collections::VecDeque<Stored>,
        caught_up: bool,
    }
    let start = Cursor {
        local,
        id,
        live,
        last: after,
        pending: Default::default(),
        caught_up: false,
    };
    let events = futures_util::stream::unfold(start, |mut c| async move {
        loop {
            if let Some(next) = c.pending.pop_front() {
                if next.seq <= c.last {
                    continue;
                }
                c.last = next.seq;
                return Some((Ok::<_, std::convert::Infallible>(sse(&next)), c));
            }
            if !c.caught_up {
                match c.local.store.local_events(&c.id, c.last, MAX_PAGE) {
                    Ok(events) => {
                        c.caught_up = (events.len() as u32) < MAX_PAGE;
                        c.pending.extend(events);
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(session = %c.id, error = %e, "reading events for a stream");
                        return None;
                    }
                }
            }
            let receiver = c.live.as_mut()?;
            // The broadcast only says that something was stored: two writers (the loop, a
            // client) may send in another order than the store's, so the events themselves
            // are always read from the store, after the last one sent.
            match receiver.recv().await {
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    c.caught_up = false;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    // The loop ended: send what it stored last, then end.
                    c.live = None;
                    c.caught_up = false;
                }
            }
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

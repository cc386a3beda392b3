//! The admin API (loopback only) and the metrics endpoint, on pingora's HTTP server.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | /healthz | the process is up |
//! | GET | /readyz | a policy generation is serving (its id) |
//! | POST | /reload | reload the policy; 200 with the new generation, 422 with the reason (old one keeps serving) |
//! | GET | /sessions | registered sessions |
//! | PUT | /sessions/{id} | register `{"source": ip, "agent_id"?, "labels"?}` |
//! | DELETE | /sessions/{id} | remove a registration and its placeholders |
//! | POST | /sessions/{id}/placeholders | mint placeholders `{"secrets": [name, ...]}` (idempotent) |
//! | GET | /sessions/{id}/placeholders | the placeholders minted for the session |
//! | POST | /evaluate | decide a request a session could send, without sending it (`admin/evaluate.rs`) |
//! | GET | /policy | the serving generation and its bundle files with their SHA-256 (`admin/policy_info.rs`) |
//! | GET | /secrets | the secret store's names, bindings and the policy files naming each, never values (`admin/secrets.rs`) |
//!
//! docs/PROXY.md ("Admin API") gives every body and answer.

mod evaluate;
mod policy_info;
mod secrets;

use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::sessions::SessionRecord;
use crate::state::GatewayState;

/// Largest admin request body.
const MAX_BODY: usize = 64 * 1024;

/// The admin API.
#[derive(Debug)]
pub struct AdminApi {
    pub state: Arc<GatewayState>,
}

/// The Prometheus endpoint.
#[derive(Debug)]
pub struct MetricsEndpoint {
    pub state: Arc<GatewayState>,
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Vec<u8>> {
    let bytes = body.to_string().into_bytes();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", bytes.len())
        .body(bytes)
        .unwrap_or_default()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Vec<u8>> {
    json(status, serde_json::json!({ "error": message.into() }))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Registration {
    source: std::net::IpAddr,
    #[serde(default)]
    agent_id: Option<String>,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
    /// Add this source to the session's others instead of moving it (sessions/registry).
    #[serde(default)]
    shared: bool,
}

/// `?source=IP` of a request, if given.
fn source_param(session: &ServerSession) -> Result<Option<std::net::IpAddr>, String> {
    let Some(query) = session.req_header().uri.query() else {
        return Ok(None);
    };
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if key == "source" {
            return value
                .parse()
                .map(Some)
                .map_err(|_| format!("source={value:?} is not an IP address"));
        }
    }
    Ok(None)
}

async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = session
        .read_request_body()
        .await
        .map_err(|e| e.to_string())?
    {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_BODY {
            return Err("request body larger than 64 KiB".into());
        }
    }
    Ok(body)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MintRequest {
    secrets: Vec<String>,
}

impl AdminApi {
    /// `/sessions/{id}/placeholders`: mint (POST) or list (GET).
    async fn placeholders(
        &self,
        session: &mut ServerSession,
        method: Method,
        id: &str,
    ) -> Response<Vec<u8>> {
        let state = &self.state;
        match method {
            Method::GET if state.sessions.contains(id) => json(
                StatusCode::OK,
                serde_json::json!({"session": id, "placeholders": state.placeholders.of_session(id)}),
            ),
            Method::GET => error(
                StatusCode::NOT_FOUND,
                format!("no session {id:?} is registered"),
            ),
            Method::POST => {
                let body = match read_body(session).await {
                    Ok(b) => b,
                    Err(e) => return error(StatusCode::BAD_REQUEST, e),
                };
                let request: MintRequest = match serde_json::from_slice(&body) {
                    Ok(r) => r,
                    Err(e) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            format!("expected {{\"secrets\": [name, ...]}}: {e}"),
                        );
                    }
                };
                match state.mint_placeholders(id, &request.secrets) {
                    Ok(placeholders) => json(
                        StatusCode::OK,
                        serde_json::json!({"session": id, "placeholders": placeholders}),
                    ),
                    Err(e @ crate::credentials::MintError::UnknownSession(_)) => {
                        error(StatusCode::NOT_FOUND, e.to_string())
                    }
                    Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
                }
            }
            _ => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "use POST or GET on /sessions/{id}/placeholders",
            ),
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApi {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        // A DNS rebinding guard: a browser on this host must not reach the API under another
        // name (cordon_config::is_local_host).
        let host = session
            .req_header()
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        if !cordon_config::is_local_host(host) {
            return error(
                StatusCode::MISDIRECTED_REQUEST,
                "the admin API answers to loopback addresses and localhost only",
            );
        }
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        let state = &self.state;
        match (method, path.as_str()) {
            (Method::GET, "/healthz") => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
            (Method::GET, "/readyz") => {
                let generation = state.policy.generation();
                json(
                    StatusCode::OK,
                    serde_json::json!({"status": "ready", "policy_generation": &*generation.info().id}),
                )
            }
            (Method::POST, "/reload") => {
                let policy = state.reload_policy();
                let secrets = state.reload_secrets();
                match (policy, secrets) {
                    (Ok(info), Ok(count)) => json(
                        StatusCode::OK,
                        serde_json::json!({"policy_generation": &*info.id, "secrets": count}),
                    ),
                    (Err(e), _) => error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        format!("reload refused, the previous generation keeps serving: {e}"),
                    ),
                    (Ok(_), Err(e)) => error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        format!(
                            "policy reloaded, but the secret store was not (the previous secrets stay in use): {e}"
                        ),
                    ),
                }
            }
            (Method::POST, "/evaluate") => evaluate::evaluate(state, read_body(session).await),
            (Method::GET, "/policy") => json(StatusCode::OK, policy_info::policy(state)),
            (Method::GET, "/secrets") => json(StatusCode::OK, secrets::secrets(state)),
            (_, "/evaluate") => error(StatusCode::METHOD_NOT_ALLOWED, "use POST on /evaluate"),
            (_, "/policy" | "/secrets") => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "use GET on /policy and /secrets",
            ),
            (Method::GET, "/sessions") => json(
                StatusCode::OK,
                serde_json::json!({"sessions": state.sessions.listing()}),
            ),
            (method, path) if path.starts_with("/sessions/") && path.ends_with("/placeholders") => {
                let id = &path["/sessions/".len()..path.len() - "/placeholders".len()];
                self.placeholders(session, method, id).await
            }
            (method, path) if path.starts_with("/sessions/") => {
                let id = &path["/sessions/".len()..];
                match method {
                    Method::PUT => {
                        let body = match read_body(session).await {
                            Ok(b) => b,
                            Err(e) => return error(StatusCode::BAD_REQUEST, e),
                        };
                        let registration: Registration = match serde_json::from_slice(&body) {
                            Ok(r) => r,
                            Err(e) => {
                                return error(
                                    StatusCode::BAD_REQUEST,
                                    format!(
                                        "expected {{\"source\": ip, \"agent_id\"?, \"labels\"?, \"shared\"?}}: {e}"
                                    ),
                                );
                            }
                        };
                        let record = SessionRecord {
                            id: id.to_string(),
                            source: registration.source,
                            agent_id: registration.agent_id,
                            labels: registration.labels,
                        };
                        match state.sessions.register(record.clone(), registration.shared) {
                            Ok(()) => json(
                                StatusCode::OK,
                                serde_json::to_value(record).unwrap_or_default(),
                            ),
                            Err(e @ crate::sessions::RegisterError::BadId(_)) => {
                                error(StatusCode::BAD_REQUEST, e.to_string())
                            }
                            Err(e) => error(StatusCode::CONFLICT, e.to_string()),
                        }
                    }
                    Method::DELETE => match source_param(session) {
                        Err(e) => error(StatusCode::BAD_REQUEST, e),
                        Ok(Some(source)) => match state.remove_session_source(id, source) {
                            Some(record) => json(
                                StatusCode::OK,
                                serde_json::to_value(record).unwrap_or_default(),
                            ),
                            None => error(
                                StatusCode::NOT_FOUND,
                                format!("session {id:?} is not registered at {source}"),
                            ),
                        },
                        Ok(None) => match state.remove_session(id) {
                            Some(record) => json(
                                StatusCode::OK,
                                serde_json::to_value(record).unwrap_or_default(),
                            ),
                            None => error(
                                StatusCode::NOT_FOUND,
                                format!("no session {id:?} is registered"),
                            ),
                        },
                    },
                    _ => error(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "use PUT or DELETE on /sessions/{id}",
                    ),
                }
            }
            _ => error(
                StatusCode::NOT_FOUND,
                "unknown admin endpoint; see docs/PROXY.md",
            ),
        }
    }
}

#[async_trait]
impl ServeHttp for MetricsEndpoint {
    async fn response(&self, _session: &mut ServerSession) -> Response<Vec<u8>> {
        let body = self.state.metrics.render().into_bytes();
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "text/plain; version=0.0.4")
            .header("content-length", body.len())
            .body(body)
            .unwrap_or_default()
    }
}

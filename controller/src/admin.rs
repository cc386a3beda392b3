//! The controller's admin API (axum), on `[controller] admin_listen` (loopback only):
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | /healthz | `{"status":"ok"}` |
//! | GET | /metrics | Prometheus text (docs/METRICS.md, "Controller") |
//! | GET | /sessions | every recorded session: state, sandbox, timestamps, its work item, tool calls, egress decisions |
//! | POST | /sessions/{id}/stop | stop serving a session: sandbox torn down, work item force-stopped (202), 404 if not served |
//! | GET | /sessions/{id}/files?path=P | the workspace's directory P (default the root): a [`crate::files::Listing`] |
//! | GET | /sessions/{id}/files/content?path=P | the regular file P, streamed (`application/octet-stream`) |
//! | PUT | /sessions/{id}/files/content?path=P[&replace=true] | the request body as the file P, written atomically within the workspace's quota (201 `{"path","bytes"}`) |
//!
//! | * | /v1/agents, /v1/sessions... | local sessions (docs/OPEN-MODELS.md, [`crate::local::api`]) |
//!
//! The files and `/v1/` routes need the admin token ([`token`]). The files routes answer errors as `{"error": "..."}` with [`crate::files::FilesError::status`].
//! `cordon-controller sessions` prints the sessions' table, `cordon-controller files` calls the
//! files routes.

mod files;
pub mod token;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use crate::cma::service::{SessionStops, StopReason};
use crate::config::SandboxConfig;
use crate::metrics::ControllerMetrics;
use crate::proxy_admin::ProxyAdmin;
use crate::sandbox::list_sessions;
use crate::store::{Store, WorkSummary};

/// What the admin API reads.
#[derive(Debug)]
pub struct Admin {
    pub store: Store,
    pub metrics: ControllerMetrics,
    pub stops: Arc<SessionStops>,
    /// `None` when `serve` runs without `[sandbox]` (webhooks only).
    pub sandbox: Option<SandboxConfig>,
    /// The proxy's admin API, for per-session egress counts.
    pub proxy_admin: Option<ProxyAdmin>,
    /// The sandboxes `serve` runs, for the workspaces' files; `None` without
    /// `[controller] environment_id`.
    pub runtime: Option<Arc<crate::sandbox::Runtime>>,
    /// What the workspace file routes ask for ([`token`]); `None`: they refuse every request.
    pub files_token: Option<String>,
    /// The controller's audit log, where file reads and writes through the API are recorded
    /// (`kind: "admin"`); `None`: only logged.
    pub actions: Option<Arc<crate::tools::audit::AuditLog>>,
    /// Local sessions (`[controller] local_sessions`): their API is served under `/v1/`.
    pub local: Option<Arc<crate::local::LocalSessions>>,
}

impl Admin {
    /// Session `id`'s workspace, open (docs/DASHBOARD.md, "Files").
    pub async fn workspace(
        &self,
        id: &str,
    ) -> Result<crate::files::Workspace, crate::files::FilesError> {
        match &self.runtime {
            Some(runtime) => runtime.open_workspace(id).await,
            None => Err(crate::files::FilesError::NoSandboxes),
        }
    }
}

pub use crate::proxy_admin::Egress;

/// One row of `GET /sessions`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRow {
    pub id: String,
    /// The sandbox's state: starting | running | stopped | failed.
    pub state: String,
    /// Whether a work item of this session is being served now.
    pub serving: bool,
    pub address: Option<String>,
    pub network_mode: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub error: Option<String>,
    /// The image its sandbox runs on.
    #[serde(default)]
    pub image: Option<String>,
    /// The CMA agent the proxy knows it by, while registered.
    #[serde(default)]
    pub agent_id: Option<String>,
    pub work: Option<WorkSummary>,
    /// `None` when the session is not registered at the proxy (its sandbox is gone) or the
    /// proxy cannot be asked.
    pub egress: Option<Egress>,
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// The routes.
pub fn router(admin: Arc<Admin>) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route(
            "/metrics",
            get(|State(a): State<Arc<Admin>>| async move {
                (
                    [("content-type", "text/plain; version=0.0.4")],
                    a.metrics.render(),
                )
            }),
        )
        .route("/sessions", get(sessions))
        .route("/sessions/{id}/stop", post(stop))
        .route(
            "/sessions/{id}/files",
            get(files::list).route_layer(axum::middleware::from_fn_with_state(
                admin.clone(),
                files::token_only,
            )),
        )
        // The upload takes the body as a stream, which no body limit applies to: the
        // workspace's quota is its only limit.
        .route(
            "/sessions/{id}/files/content",
            get(files::download).put(files::upload).route_layer(
                axum::middleware::from_fn_with_state(admin.clone(), files::token_only),
            ),
        )
        .merge(local_routes(&admin))
        .layer(axum::middleware::from_fn(local_only))
        .with_state(admin)
}

/// The local sessions API (`/v1/...`), behind the admin token; without
/// `[controller] local_sessions`, an answer saying how to turn it on.
fn local_routes(admin: &Arc<Admin>) -> Router<Arc<Admin>> {
    let routes = match &admin.local {
        Some(local) => crate::local::api::router(local.clone()),
        None => Router::new().route(
            "/v1/{*rest}",
            axum::routing::any(|| async {
                crate::local::api::error(
                    503,
                    "local_sessions_off",
                    "local sessions are off: set [controller] local_sessions = true in \
                     cordon.toml and restart serve (docs/OPEN-MODELS.md)",
                )
            }),
        ),
    };
    routes.route_layer(axum::middleware::from_fn_with_state(
        admin.clone(),
        files::token_only,
    ))
}

/// A DNS rebinding guard: a browser on this host must not reach the API under another name
/// (cordon_config::is_local_host).
async fn local_only(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let host = request
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if cordon_config::is_local_host(host) {
        next.run(request).await
    } else {
        answer(
            StatusCode::MISDIRECTED_REQUEST,
            serde_json::json!({"error": "the admin API answers to loopback addresses and localhost only"}),
        )
    }
}

async fn sessions(State(admin): State<Arc<Admin>>) -> Response {
    match rows(&admin).await {
        Ok(rows) => answer(StatusCode::OK, serde_json::json!({ "sessions": rows })),
        Err(e) => answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({ "error": e }),
        ),
    }
}

async fn stop(State(admin): State<Arc<Admin>>, Path(id): Path<String>) -> Response {
    if admin.stops.stop(&id, StopReason::Operator) {
        tracing::info!(session = %id, "stop asked on the admin API");
        answer(
            StatusCode::ACCEPTED,
            serde_json::json!({"status": "stopping", "session": id}),
        )
    } else {
        answer(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": format!("session {id} is not being served; `cordon-controller sessions` lists those that are")}),
        )
    }
}

/// Every session's row: what `GET /sessions`, `cordon-controller sessions` and the dashboard
/// show.
pub async fn rows(admin: &Admin) -> Result<Vec<SessionRow>, String> {
    let work = admin.store.work_by_session().map_err(|e| e.to_string())?;
    let registrations = match &admin.proxy_admin {
        Some(proxy) => proxy.registrations().await,
        None => Default::default(),
    };
    let egress: std::collections::HashMap<&str, Egress> = registrations
        .iter()
        .map(|(id, r)| (id.as_str(), r.egress))
        .collect();
    let agent = |id: &str| registrations.get(id).and_then(|r| r.agent_id.clone());
    let mut rows: Vec<SessionRow> = match &admin.sandbox {
        // A custom tool call's sandbox serves no session (`sandbox list` shows it).
        Some(config) => list_sessions(config, &admin.store)
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|v| v.state != "tool")
            .map(|v| SessionRow {
                serving: admin.stops.serving(&v.id),
                work: work.get(&v.id).cloned(),
                egress: egress
                    .get(v.id.as_str())
                    .copied()
                    .or_else(|| stored_egress(work.get(&v.id))),
                agent_id: agent(&v.id),
                image: v.image,
                address: Some(v.address.to_string()),
                state: v.state.to_string(),
                network_mode: v.network_mode,
                created_at: v.created_at,
                updated_at: v.updated_at,
                error: v.error,
                id: v.id,
            })
            .collect(),
        None => Vec::new(),
    };
    // Work items whose session never got a sandbox record (it failed before one).
    for (session, summary) in work {
        if !rows.iter().any(|r| r.id == session) {
            rows.push(SessionRow {
                serving: admin.stops.serving(&session),
                state: "none".into(),
                address: None,
                network_mode: None,
                created_at: summary.started_at.clone(),
                updated_at: summary.updated_at.clone(),
                error: None,
                image: None,
                agent_id: agent(&session),
                egress: egress
                    .get(session.as_str())
                    .copied()
                    .or_else(|| stored_egress(Some(&summary))),
                work: Some(summary),
                id: session,
            });
        }
    }
    Ok(rows)
}

fn stored_egress(work: Option<&WorkSummary>) -> Option<Egress> {
    let work = work?;
    Some(Egress {
        allowed: work.egress_allowed?,
        denied: work.egress_denied?,
    })
}

/// Renders rows as the table `cordon-controller sessions` prints.
pub fn table(rows: &[SessionRow]) -> String {
    let mut out = format!(
        "{:<28} {:<8} {:<7} {:<15} {:<30} {:>5} {:>7} {:>6} {:<20} {}\n",
        "SESSION",
        "SANDBOX",
        "SERVING",
        "ADDRESS",
        "WORK",
        "TOOLS",
        "ALLOWED",
        "DENIED",
        "UPDATED",
        "END"
    );
    for r in rows {
        let (work_id, tools, end) = match &r.work {
            Some(w) => (
                w.work_id.as_str(),
                w.tool_calls.to_string(),
                w.end_reason.clone().unwrap_or_default(),
            ),
            None => ("-", "-".into(), String::new()),
        };
        let (allowed, denied) = match r.egress {
            Some(e) => (e.allowed.to_string(), e.denied.to_string()),
            None => ("-".into(), "-".into()),
        };
        out.push_str(&format!(
            "{:<28} {:<8} {:<7} {:<15} {:<30} {:>5} {:>7} {:>6} {:<20} {}{}\n",
            r.id,
            r.state,
            if r.serving { "yes" } else { "no" },
            r.address.as_deref().unwrap_or("-"),
            work_id,
            tools,
            allowed,
            denied,
            r.updated_at.get(..19).unwrap_or(&r.updated_at),
            end,
            r.error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The admin API of a `serve` without sandboxes, on an ephemeral port.
    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    async fn serve(dir: &std::path::Path) -> std::net::SocketAddr {
        let admin = Arc::new(Admin {
            store: Store::open(&dir.join("state.db")).unwrap(),
            metrics: ControllerMetrics::new().unwrap(),
            stops: Arc::default(),
            sandbox: None,
            proxy_admin: None,
            runtime: None,
            files_token: Some(TOKEN.into()),
            local: None,
            actions: None,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router(admin)).await });
        address
    }

    #[tokio::test]
    async fn answers_only_to_this_machines_names() {
        let dir = tempfile::tempdir().unwrap();
        let address = serve(dir.path()).await;
        let status = move |host: &str| {
            let out = std::process::Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
                .args(["-H", &format!("host: {host}")])
                .arg(format!("http://{address}/sessions/sesn_x/stop"))
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let (a, b) = tokio::task::spawn_blocking(move || {
            (status("rebound.example.test"), status(&address.to_string()))
        })
        .await
        .unwrap();
        assert_eq!(a, "421");
        assert_eq!(
            b, "404",
            "a local name reaches the API (the session is not served)"
        );
    }

    #[tokio::test]
    async fn file_routes_answer_their_errors_as_json() {
        let dir = tempfile::tempdir().unwrap();
        let address = serve(dir.path()).await;
        let http = crate::http::HttpClient::default();
        let error = |result: Result<String, crate::http::HttpError>| match result {
            Err(crate::http::HttpError::Status { status, body, .. }) => {
                let body: serde_json::Value = serde_json::from_str(&body).unwrap();
                (status, body["error"].as_str().unwrap().to_string())
            }
            other => panic!("{other:?}"),
        };
        let url = format!("http://{address}/sessions/sesn_x/files?path=/src");
        let (status, message) = error(http.call(http::Method::GET, &url, None, None).await);
        assert_eq!(status, 401, "without the token");
        assert!(message.contains("admin-token"), "{message}");
        let (status, message) = error(http.call(http::Method::GET, &url, Some(TOKEN), None).await);
        assert_eq!(status, 503);
        assert!(message.contains("needs `cordon-controller serve` to run sandboxes"));
        // The path is checked before the workspace is looked for.
        let url = format!("http://{address}/sessions/sesn_x/files/content?path=a/../b");
        let (status, message) = error(http.call(http::Method::GET, &url, Some(TOKEN), None).await);
        assert_eq!(
            (status, message.starts_with("bad path")),
            (400, true),
            "{message}"
        );
        let url = format!("http://{address}/sessions/sesn_x/files/content?path=/a&replace=yes");
        let put = http
            .call(http::Method::PUT, &url, Some(TOKEN), Some("x".into()))
            .await;
        let (status, message) = error(put);
        assert_eq!(
            (status, message.starts_with("bad query")),
            (400, true),
            "{message}"
        );
    }
}

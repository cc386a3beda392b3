//! The agent's HTTP API (axum).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::mpsc;

use crate::exec::{self, ExecEvent, ExecRequest};

/// What every request handler shares.
#[derive(Debug)]
pub struct AgentState {
    token: String,
    default_cwd: String,
    tools: crate::tools::Toolset,
}

impl AgentState {
    pub fn new(token: String, default_cwd: String) -> Self {
        Self {
            tools: crate::tools::Toolset::new(default_cwd.clone().into()),
            token,
            default_cwd,
        }
    }

    /// Whether `headers` carry `authorization: Bearer <token>`. Compared in constant time
    /// (a fold over every byte), so the answer's timing says nothing about a near miss.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(given) = headers
            .get("authorization")
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        else {
            return false;
        };
        let want = self.token.as_bytes();
        given.len() == want.len()
            && given
                .iter()
                .zip(want)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// The agent's routes.
pub fn router(state: Arc<AgentState>) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/exec", post(exec_handler))
        .route("/tool", post(tool_handler))
        .with_state(state)
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(serde_json::json!({"error": message.into()})),
    )
        .into_response()
}

async fn tool_handler(
    State(state): State<Arc<AgentState>>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Response {
    if !state.authorized(&headers) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "missing or wrong agent token (authorization: Bearer <token>)",
        );
    }
    let call: crate::tools::ToolCall = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"name\": tool, \"input\": {{...}}}}: {e}"),
            );
        }
    };
    axum::Json(state.tools.call(&call).await).into_response()
}

async fn exec_handler(
    State(state): State<Arc<AgentState>>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Response {
    if !state.authorized(&headers) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "missing or wrong agent token (authorization: Bearer <token>)",
        );
    }
    let request: ExecRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!(
                    "expected {{\"argv\": [...], \"cwd\"?, \"env\"?, \"timeout_ms\"?, \"stdin\"?}}: {e}"
                ),
            );
        }
    };
    let timeout = match request.validate() {
        Ok(t) => t,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let (tx, rx) = mpsc::channel::<ExecEvent>(64);
    let cwd = state.default_cwd.clone();
    tokio::spawn(async move { exec::run(request, timeout, &cwd, tx).await });
    let lines = tokio_stream::wrappers::ReceiverStream::new(rx).map(|event| {
        let mut line = serde_json::to_vec(&event).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(bytes::Bytes::from(line))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(lines))
        .unwrap_or_else(|_| {
            refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot build the response",
            )
        })
}

use futures_util::StreamExt as _;

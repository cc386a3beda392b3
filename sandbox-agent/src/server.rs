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
    browser: crate::browser::Browser,
}

impl AgentState {
    pub fn new(token: String, default_cwd: String) -> Self {
        let browser = crate::browser::BrowserConfig::in_sandbox(default_cwd.clone().into());
        Self::with_browser(token, default_cwd, browser)
    }

    /// The same, with the browser's settings given (tests run it outside a sandbox).
    pub fn with_browser(
        token: String,
        default_cwd: String,
        browser: crate::browser::BrowserConfig,
    ) -> Self {
        Self {
            tools: crate::tools::Toolset::new(default_cwd.clone().into()),
            browser: crate::browser::Browser::new(browser),
            token,
            default_cwd,
        }
    }

    /// The session's browser.
    pub fn browser(&self) -> &crate::browser::Browser {
        &self.browser
    }

    /// Stops what outlives a request (the browser).
    pub async fn shutdown(&self) {
        self.browser.shutdown().await;
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
        .route("/browser", post(browser_handler))
        .route("/browser/warm", post(browser_warm_handler))
        .route("/pty", get(pty_handler))
        .with_state(state)
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(serde_json::json!({"error": message.into()})),
    )
        .into_response()
}

/// The 401 for a request without the agent's token.
fn unauthorized(state: &AgentState, headers: &HeaderMap) -> Option<Response> {
    (!state.authorized(headers)).then(|| {
        refuse(
            StatusCode::UNAUTHORIZED,
            "missing or wrong agent token (authorization: Bearer <token>)",
        )
    })
}

/// `GET /pty`: a shell on a pseudo-terminal over a WebSocket (src/pty.rs).
async fn pty_handler(
    State(state): State<Arc<AgentState>>,
    headers: HeaderMap,
    upgrade: axum::extract::ws::WebSocketUpgrade,
) -> Response {
    if let Some(refusal) = unauthorized(&state, &headers) {
        return refusal;
    }
    let Some(slot) = crate::pty::reserve() else {
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "{} terminals are open in this sandbox; close one first",
                crate::pty::MAX_TERMINALS
            ),
        );
    };
    let cwd = state.default_cwd.clone();
    upgrade.on_upgrade(move |socket| crate::pty::serve(socket, cwd, slot))
}

async fn tool_handler(
    State(state): State<Arc<AgentState>>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Response {
    if let Some(refusal) = unauthorized(&state, &headers) {
        return refusal;
    }
    match parse_call::<crate::tools::ToolCall>(&body) {
        Ok(call) => axum::Json(state.tools.call(&call).await).into_response(),
        Err(refusal) => *refusal,
    }
}

/// A tool call's body, `{"name", "input"}`; a 400 that says so otherwise.
fn parse_call<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(refuse(
            StatusCode::BAD_REQUEST,
            format!("expected {{\"name\": tool, \"input\": {{...}}}}: {e}"),
        ))
    })
}

async fn browser_handler(
    State(state): State<Arc<AgentState>>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Response {
    if let Some(refusal) = unauthorized(&state, &headers) {
        return refusal;
    }
    match parse_call::<crate::browser::BrowserCall>(&body) {
        Ok(call) => axum::Json(state.browser.call(&call).await).into_response(),
        Err(refusal) => *refusal,
    }
}

/// `POST /browser/warm`: starts the browser in the background, if the image has one; answers
/// at once (202, `{"browser": true|false}`: whether this image has Chromium).
async fn browser_warm_handler(
    State(state): State<Arc<AgentState>>,
    headers: HeaderMap,
) -> Response {
    if let Some(refusal) = unauthorized(&state, &headers) {
        return refusal;
    }
    let present = state.browser.has_chromium();
    if present {
        let state = state.clone();
        tokio::spawn(async move { state.browser.warm().await });
    }
    (
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({"browser": present})),
    )
        .into_response()
}

async fn exec_handler(
    State(state): State<Arc<AgentState>>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Response {
    if let Some(refusal) = unauthorized(&state, &headers) {
        return refusal;
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn ask(address: std::net::SocketAddr, request: String) -> String {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    fn post(path: &str, token: Option<&str>, body: &str) -> String {
        let auth = token
            .map(|t| format!("authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        format!(
            "POST {path} HTTP/1.1\r\nhost: agent\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    #[tokio::test]
    async fn only_the_token_runs_anything() {
        let dir = tempfile::tempdir().unwrap();
        let state = Arc::new(AgentState::new(
            "right-token".into(),
            dir.path().display().to_string(),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router(state)).await });
        let call = r#"{"name":"bash","input":{"command":"echo ran"}}"#;
        for token in [None, Some("wrong-token"), Some("right-toke")] {
            let answer = ask(address, post("/tool", token, call)).await;
            assert!(answer.starts_with("HTTP/1.1 401"), "{token:?}: {answer}");
            let answer = ask(address, post("/exec", token, r#"{"argv":["true"]}"#)).await;
            assert!(answer.starts_with("HTTP/1.1 401"), "{token:?}: {answer}");
        }
        let answer = ask(address, post("/tool", Some("right-token"), call)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains(r#""text":"ran\n""#), "{answer}");
        let answer = ask(address, post("/tool", Some("right-token"), "not json")).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    }
}

//! The terminal: an interactive shell in a running session's sandbox, in the browser
//! (xterm.js, vendored), over a WebSocket that the controller relays to the sandbox agent's
//! PTY (`GET /pty` of the agent, with the session's agent token, which never reaches the
//! browser). Operators only; each terminal's opening and closing is in the controller's audit
//! log with who opened it. Several tabs on one page, each its own shell.

use std::sync::Arc;

use axum::extract::ws::{Message as BrowserMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use maud::html;
use tokio_tungstenite::tungstenite::Message as AgentMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::super::layout::{frame, refusal};
use super::super::{Dashboard, Operator};

/// Largest message taken from the browser: keystrokes and pastes, not files.
const MAX_MESSAGE: usize = 64 * 1024;

/// Why a terminal cannot be opened, in the operator's words.
fn unavailable(dashboard: &Dashboard, id: &str) -> Option<String> {
    let Some(config) = &dashboard.admin.sandbox else {
        return Some("this controller runs no sandboxes ([sandbox] is not configured)".into());
    };
    match crate::sandbox::agent_endpoint(config, id) {
        Ok(_) => None,
        Err(crate::sandbox::SandboxError::NotRunning { state, .. }) => Some(format!(
            "the session's sandbox is {state}: a terminal needs a running sandbox (its \
             workspace is kept; the next work item starts a sandbox again)"
        )),
        Err(crate::sandbox::SandboxError::NotFound(_)) => {
            Some("the session has no sandbox on this gateway".into())
        }
        Err(e) => Some(format!("the session's sandbox cannot be reached: {e}")),
    }
}

pub(crate) async fn page(
    State(dashboard): State<Arc<Dashboard>>,
    Operator(who): Operator,
    Path(id): Path<String>,
) -> Response {
    if let Some(why) = unavailable(&dashboard, &id) {
        return refusal(&who, StatusCode::CONFLICT, "No terminal", &why);
    }
    let body = html! {
        p.muted { "A shell in " code { (id) } "'s sandbox, in /workspace. Everything typed here runs as the session's tools do, behind the same proxy and policy. Opening and closing it is audited." }
        link rel="stylesheet" href="/assets/xterm.css";
        div #terminals data-socket={ "/sessions/" (id) "/terminal/socket" } {
            div.tabs { button #new-tab type="button" { "+ New tab" } }
            div.panes {}
        }
        script src="/assets/xterm.js" {}
        script src="/assets/addon-fit.js" {}
        script src="/assets/terminal.js" {}
    };
    let mut response = frame(&who, "/sessions", &format!("Terminal: {id}"), body).into_response();
    // xterm.js styles its rows with <style> elements it creates: this page alone allows
    // inline styles (scripts stay 'self' only).
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
             img-src 'self' data:; connect-src 'self'; font-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    response
}

pub(crate) async fn socket(
    State(dashboard): State<Arc<Dashboard>>,
    Operator(who): Operator,
    Path(id): Path<String>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    // Browsers send `Origin` on every WebSocket handshake: a cross-site page must not drive a
    // shell with the operator's login.
    if !dashboard.same_origin(&headers) {
        return (StatusCode::FORBIDDEN, "cross-origin terminal refused").into_response();
    }
    let Some(config) = dashboard.admin.sandbox.clone() else {
        return (StatusCode::CONFLICT, "this controller runs no sandboxes").into_response();
    };
    let (address, token) = match crate::sandbox::agent_endpoint(&config, &id) {
        Ok(endpoint) => endpoint,
        Err(e) => return (StatusCode::CONFLICT, e.to_string()).into_response(),
    };
    upgrade
        .max_message_size(MAX_MESSAGE)
        .on_upgrade(move |browser| async move {
            dashboard.record(&who, "terminal_open", &id);
            if let Err(e) = relay(browser, address, &token).await {
                tracing::warn!(session = %id, error = %e, "terminal ended with an error");
            }
            dashboard.record(&who, "terminal_close", &id);
        })
}

/// Relays frames between the browser and the agent's PTY until either side closes.
async fn relay(
    mut browser: WebSocket,
    agent: std::net::SocketAddr,
    token: &str,
) -> Result<(), String> {
    let mut request = format!("ws://{agent}/pty")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    let bearer = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| e.to_string())?;
    request.headers_mut().insert(header::AUTHORIZATION, bearer);
    let (agent_socket, _) = match tokio_tungstenite::connect_async(request).await {
        Ok(connected) => connected,
        Err(e) => {
            let _ = browser
                .send(BrowserMessage::Text(
                    format!("\r\n[cordon] the sandbox's terminal cannot be reached: {e}\r\n")
                        .into(),
                ))
                .await;
            return Err(e.to_string());
        }
    };
    let (mut to_agent, mut from_agent) = agent_socket.split();
    let (mut to_browser, mut from_browser) = browser.split();
    let upstream = async {
        while let Some(Ok(message)) = from_browser.next().await {
            let forwarded = match message {
                BrowserMessage::Binary(bytes) => AgentMessage::Binary(bytes),
                BrowserMessage::Text(text) => AgentMessage::Text(text.as_str().into()),
                BrowserMessage::Close(_) => break,
                BrowserMessage::Ping(_) | BrowserMessage::Pong(_) => continue,
            };
            if to_agent.send(forwarded).await.is_err() {
                break;
            }
        }
        let _ = to_agent.send(AgentMessage::Close(None)).await;
    };
    let downstream = async {
        while let Some(Ok(message)) = from_agent.next().await {
            let forwarded = match message {
                AgentMessage::Binary(bytes) => BrowserMessage::Binary(bytes),
                AgentMessage::Text(text) => BrowserMessage::Text(text.as_str().into()),
                AgentMessage::Close(_) => break,
                _ => continue,
            };
            if to_browser.send(forwarded).await.is_err() {
                break;
            }
        }
        let _ = to_browser.send(BrowserMessage::Close(None)).await;
    };
    tokio::select! {
        () = upstream => {}
        () = downstream => {}
    }
    Ok(())
}

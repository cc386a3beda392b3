//! Talking to a sandbox's agent: run a command and stream what it prints.

use std::net::SocketAddr;

use cordon_sandbox_agent::ExecEvent;
pub use cordon_sandbox_agent::ExecRequest;
use http_body_util::BodyExt;

use crate::http::{HttpClient, HttpError};

/// How a command ended, as the agent reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecOutcome {
    Exited(i32),
    Signalled(i32),
    TimedOut,
    /// The command could not be started (the agent's message).
    NotStarted(String),
}

impl ExecOutcome {
    /// The conventional shell exit status: the code, 128 + signal, 124 for a timeout (as
    /// `timeout(1)`), 127 for a command that could not start.
    pub fn exit_status(&self) -> i32 {
        match self {
            ExecOutcome::Exited(code) => *code,
            ExecOutcome::Signalled(signal) => 128 + signal,
            ExecOutcome::TimedOut => 124,
            ExecOutcome::NotStarted(_) => 127,
        }
    }
}

/// How long a tool call may take, end to end.
pub const TOOL_CALL_LIMIT: std::time::Duration = std::time::Duration::from_secs(660);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the agent at {0} did not answer a tool call within {1:?}")]
    Timeout(SocketAddr, std::time::Duration),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("the agent at {0} sent an answer that is not an event stream: {1}")]
    Protocol(SocketAddr, String),
    #[error("the agent at {0} closed the stream before the command ended")]
    Truncated(SocketAddr),
}

/// Makes one CMA tool call in the sandbox whose agent is at `agent`.
pub async fn tool(
    http: &HttpClient,
    agent: SocketAddr,
    token: &str,
    call: &cordon_sandbox_agent::tools::ToolCall,
) -> Result<cordon_sandbox_agent::tools::ToolResult, AgentError> {
    let url = format!("http://{agent}/tool");
    let body =
        serde_json::to_string(call).map_err(|e| AgentError::Protocol(agent, e.to_string()))?;
    // Past the longest bash timeout the agent accepts, plus its own clean-up.
    let text = tokio::time::timeout(
        TOOL_CALL_LIMIT,
        http.call(http::Method::POST, &url, Some(token), Some(body)),
    )
    .await
    .map_err(|_| AgentError::Timeout(agent, TOOL_CALL_LIMIT))??;
    serde_json::from_str(&text).map_err(|e| AgentError::Protocol(agent, e.to_string()))
}

/// Runs `request` in the sandbox whose agent is at `agent`, calling `on_output` with each
/// piece of output (`true` for standard error) as it arrives.
pub async fn exec(
    http: &HttpClient,
    agent: SocketAddr,
    token: &str,
    request: &ExecRequest,
    mut on_output: impl FnMut(bool, &str),
) -> Result<ExecOutcome, AgentError> {
    let url = format!("http://{agent}/exec");
    let body =
        serde_json::to_string(request).map_err(|e| AgentError::Protocol(agent, e.to_string()))?;
    let response = http
        .send(http::Method::POST, &url, Some(token), Some(body))
        .await?;
    let status = response.status();
    let mut body = response.into_body();
    if !status.is_success() {
        let bytes = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Err(AgentError::Http(HttpError::Status {
            url,
            status: status.as_u16(),
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }));
    }
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| AgentError::Protocol(agent, e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let event: ExecEvent = serde_json::from_slice(&line)
                .map_err(|e| AgentError::Protocol(agent, e.to_string()))?;
            match event {
                ExecEvent::Output { stream, data } => {
                    on_output(stream == cordon_sandbox_agent::exec::Stream::Stderr, &data)
                }
                ExecEvent::Exit {
                    timed_out: true, ..
                } => return Ok(ExecOutcome::TimedOut),
                ExecEvent::Exit {
                    exit_code: Some(code),
                    ..
                } => return Ok(ExecOutcome::Exited(code)),
                ExecEvent::Exit { signal, .. } => {
                    return Ok(ExecOutcome::Signalled(signal.unwrap_or(0)));
                }
                ExecEvent::Error { message } => return Ok(ExecOutcome::NotStarted(message)),
            }
        }
    }
    Err(AgentError::Truncated(agent))
}

/// The session runner's tools: the sandbox agent of one session.
#[derive(Debug, Clone)]
pub struct AgentTools {
    pub http: HttpClient,
    pub agent: SocketAddr,
    pub token: String,
}

#[async_trait::async_trait]
impl crate::cma::runner::ToolExecutor for AgentTools {
    async fn call(
        &self,
        call: &cordon_sandbox_agent::tools::ToolCall,
    ) -> cordon_sandbox_agent::tools::ToolResult {
        match tool(&self.http, self.agent, &self.token, call).await {
            Ok(result) => result,
            // The model gets an error result it can act on; the detail goes to the log.
            Err(e) => {
                tracing::error!(error = %e, tool = %call.name, "tool call failed");
                cordon_sandbox_agent::tools::ToolResult::error(format!(
                    "the sandbox could not run {}: {e}",
                    call.name
                ))
            }
        }
    }
}

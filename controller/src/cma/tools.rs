//! A session's tools: the CMA toolset of its sandbox's agent, and what happens when a
//! resource limit stops a call. A limit the sandbox survives (the process limit, a full
//! workspace) is named in the call's result; a limit that killed the sandbox (memory) is named
//! too, and a new sandbox is started for the session's next call, with the same /workspace.
//! Each hit counts in `cordon_controller_sandbox_limit_hits_total{limit}`.

use std::sync::{Arc, Mutex};

use cordon_sandbox_agent::tools::{ToolCall, ToolResult};

use super::runner::ToolExecutor;
use crate::agent::{AgentTools, tool};
use crate::http::HttpClient;
use crate::metrics::ControllerMetrics;
use crate::sandbox::limits::{Limit, in_result};
use crate::sandbox::{Runtime, SandboxError, agent_endpoint};

/// The tools of one session whose sandbox is running.
#[derive(Debug)]
pub struct SessionTools {
    runtime: Arc<Runtime>,
    metrics: ControllerMetrics,
    session: String,
    /// The image the session's sandbox runs on (for a restart).
    image: Option<String>,
    /// The agent answering now: a restart brings a new address and token. `None` after a
    /// restart failed: nothing is sent to the old address, which another session's sandbox
    /// may hold by now.
    agent: Mutex<Option<AgentTools>>,
    /// Restarts so far; after [`MAX_RESTARTS`] the session's calls fail instead.
    restarts: std::sync::atomic::AtomicU32,
}

/// Sandboxes started for one work item after its first died: a sandbox that dies at every
/// start costs a few cold starts, not one per tool call.
pub const MAX_RESTARTS: u32 = 3;

impl SessionTools {
    pub fn new(
        runtime: Arc<Runtime>,
        metrics: ControllerMetrics,
        session: &str,
        image: Option<String>,
    ) -> Result<Self, SandboxError> {
        let agent = Self::endpoint(&runtime, session)?;
        Ok(Self {
            runtime,
            metrics,
            session: session.to_string(),
            image,
            agent: Mutex::new(Some(agent)),
            restarts: Default::default(),
        })
    }

    fn endpoint(runtime: &Runtime, session: &str) -> Result<AgentTools, SandboxError> {
        let (agent, token) = agent_endpoint(runtime.config(), session)?;
        Ok(AgentTools {
            http: HttpClient::default(),
            agent,
            token,
        })
    }

    /// Asks the sandbox to start its browser now, in the background, so the session's first
    /// browser call does not wait for Chromium's cold start (seconds in gVisor). A sandbox
    /// whose image has no browser ignores it; a failure only costs that first call the wait.
    pub fn warm_browser(&self) {
        let Some(agent) = self.current() else {
            return;
        };
        let session = self.session.clone();
        tokio::spawn(async move {
            let url = format!("http://{}/browser/warm", agent.agent);
            let asked = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                agent
                    .http
                    .call_limited(http::Method::POST, &url, Some(&agent.token), None, 1024),
            )
            .await;
            if !matches!(asked, Ok(Ok(_))) {
                tracing::debug!(session = %session, "the sandbox did not take the browser warm-up");
            }
        });
    }

    fn current(&self) -> Option<AgentTools> {
        self.agent.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_agent(&self, agent: Option<AgentTools>) {
        *self.agent.lock().unwrap_or_else(|e| e.into_inner()) = agent;
    }

    fn hit(&self, limit: Limit, tool: &str) {
        self.metrics
            .sandbox_limit_hits
            .with_label_values(&[limit.label()])
            .inc();
        tracing::warn!(session = %self.session, tool, limit = limit.label(), "a sandbox limit stopped a tool call");
    }

    /// A new sandbox for the session, after its last one died; the workspace is kept. Runs
    /// as its own task: the runner may be dropped mid-call (a lost lease, a stop), and a start
    /// cancelled halfway would leave host resources its teardown does not know about.
    async fn restart(&self) -> Result<(), String> {
        self.set_agent(None);
        let n = self
            .restarts
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if n >= MAX_RESTARTS {
            return Err(format!(
                "the session's sandbox died {} times in this work item; not starting another",
                n + 1
            ));
        }
        let (runtime, session, image) = (
            self.runtime.clone(),
            self.session.clone(),
            self.image.clone(),
        );
        let started = tokio::spawn(async move {
            if let Err(e) = runtime.stop(&session).await {
                tracing::warn!(session = %session, error = %e, "removing a dead sandbox");
            }
            runtime.start(&session, image.as_deref()).await?;
            Self::endpoint(&runtime, &session)
        })
        .await
        .map_err(|e| format!("the restart task failed: {e}"))?
        .map_err(|e| e.to_string())?;
        self.set_agent(Some(started));
        Ok(())
    }
}

#[async_trait::async_trait]
impl ToolExecutor for SessionTools {
    async fn call(&self, call: &ToolCall) -> ToolResult {
        let agent = match self.current() {
            Some(agent) => agent,
            // The last restart failed: try once more, within the cap.
            None => match self.restart().await {
                Ok(()) => match self.current() {
                    Some(agent) => agent,
                    None => return ToolResult::error("[cordon] the session has no sandbox"),
                },
                Err(e) => {
                    return ToolResult::error(format!("[cordon] the session has no sandbox: {e}"));
                }
            },
        };
        let failure = match tool(&agent.http, agent.agent, &agent.token, call).await {
            Ok(mut result) => {
                if result.is_error
                    && let Some(limit) = in_result(
                        &result.text,
                        self.runtime.workspace_path(&self.session).as_deref(),
                    )
                {
                    self.hit(limit, &call.name);
                    result.text.push_str(&format!(
                        "\n\n[cordon] {}",
                        limit.explain(self.runtime.config())
                    ));
                }
                return result;
            }
            Err(e) => e,
        };
        tracing::error!(session = %self.session, error = %failure, tool = %call.name, "tool call failed");
        if self.runtime.sandbox_running(&self.session).await {
            // A sandbox that answers `runsc state` is alive: the call itself failed.
            return ToolResult::error(format!(
                "the sandbox could not run {}: {failure}",
                call.name
            ));
        }
        let cause = self.runtime.why_dead(&self.session).await;
        if let Some(limit) = cause {
            self.hit(limit, &call.name);
        }
        let what = match cause {
            Some(limit) => limit.explain(self.runtime.config()),
            None => format!(
                "the sandbox stopped while running {} ({failure})",
                call.name
            ),
        };
        match self.restart().await {
            Ok(()) => ToolResult::error(format!(
                "[cordon] {what}. A new sandbox was started for this session: /workspace is as \
                 the last call left it; installed packages, files elsewhere and running \
                 processes are gone."
            )),
            Err(e) => ToolResult::error(format!(
                "[cordon] {what}. A new sandbox could not be started: {e}"
            )),
        }
    }
}

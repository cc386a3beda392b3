//! A `run` tool call: the tool's program in a gVisor sandbox of its own, on its image, with its
//! declared mounts and nothing else of the host; the input JSON on standard input and the
//! call's context in its environment. Its only route out is the proxy, where it is session
//! `tool:<name>` with labels naming the calling session (registered for the call's duration).
//!
//! Every call gets a fresh sandbox, so no call sees another's files or processes. A sandbox
//! may be started before the call that uses it ([`Prepared`], the tool's warm sandboxes); it is
//! stopped after that one call, while its answer is posted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::file::{RunHandler, Tool};
use super::{Answer, CallContext, Outcome, reply, tail};
use crate::agent::{ExecOutcome, ExecRequest, exec};
use crate::http::HttpClient;
use crate::sandbox::{Runtime, Started, agent_endpoint};

/// Bytes of a failed handler's output the result quotes.
const FAILURE_TAIL: usize = 4096;
/// Time past `timeout_ms` the controller waits for the agent to report the kill.
const KILL_GRACE: Duration = Duration::from_secs(10);

/// A started tool sandbox, not yet used.
#[derive(Debug)]
pub struct Prepared {
    pub started: Started,
    agent: SocketAddr,
    token: String,
}

/// Starts a sandbox for one call of `handler`.
pub async fn prepare(
    runtime: &Runtime,
    default_image: &str,
    handler: &RunHandler,
) -> Result<Prepared, String> {
    // Sources were checked when the file was loaded; a path swapped for a link since (by a
    // process with write access to its parent) must not bind somewhere else of the host.
    for mount in &handler.mounts {
        match std::fs::canonicalize(&mount.source) {
            Ok(now) if now == mount.source => {}
            Ok(_) => {
                tracing::error!(source = %mount.source.display(), "a tool's mount source now resolves elsewhere (a link was put in its path); refusing the call");
                return Err(format!(
                    "the tool's mount for {} changed since the tools file was loaded, so the \
                     call was refused (the operator's log says more)",
                    mount.target
                ));
            }
            Err(e) => {
                tracing::error!(source = %mount.source.display(), error = %e, "a tool's mount source is gone");
                return Err(format!(
                    "the tool's mount for {} is missing on the host (the operator's log says \
                     more)",
                    mount.target
                ));
            }
        }
    }
    let image = handler.image.as_deref().unwrap_or(default_image);
    let started = runtime
        .start_tool(Some(image), &handler.mounts)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "a tool's sandbox did not start");
            "the tool's sandbox did not start (the operator's log says why)".to_string()
        })?;
    match agent_endpoint(runtime.config(), &started.id) {
        Ok((agent, token)) => Ok(Prepared {
            started,
            agent,
            token,
        }),
        Err(e) => {
            discard(runtime, &started.id).await;
            tracing::error!(error = %e, "a tool's sandbox has no agent");
            Err("the tool's sandbox did not start (the operator's log says why)".into())
        }
    }
}

/// Stops a tool sandbox and forgets it.
pub async fn discard(runtime: &Runtime, id: &str) {
    if let Err(e) = runtime.stop(id).await {
        tracing::warn!(sandbox = %id, error = %e, "stopping a tool call's sandbox");
    }
}

/// Runs one call of `tool` in `sandbox`. The proxy knows the sandbox as the tool's for exactly
/// as long as the call runs; the caller stops the sandbox ([`discard`]) once the answer is on
/// its way, so the model does not wait for the teardown.
pub async fn call(
    runtime: &Arc<Runtime>,
    tool: &Tool,
    handler: &RunHandler,
    sandbox: &Prepared,
    context: &CallContext,
    input: &Value,
) -> Answer {
    let source = std::net::IpAddr::V4(sandbox.started.sandbox_address);
    let admin = runtime.proxy_admin();
    let answer = match context.register(admin, &tool.name, source).await {
        Ok(()) => execute(tool, handler, sandbox, context, input).await,
        Err(e) => {
            tracing::error!(tool = %tool.name, error = %e, "registering a tool's sandbox with the proxy");
            Answer::error(
                Outcome::Failed,
                "[cordon] the tool's sandbox could not be registered with the proxy (the \
                 operator's log says why)",
            )
        }
    };
    CallContext::unregister(admin, &tool.name, source).await;
    answer
}

async fn execute(
    tool: &Tool,
    handler: &RunHandler,
    sandbox: &Prepared,
    context: &CallContext,
    input: &Value,
) -> Answer {
    let mut env = handler.env.clone();
    env.insert("CORDON_SESSION_ID".into(), context.session.clone());
    env.insert(
        "CORDON_AGENT_ID".into(),
        context.agent_id.clone().unwrap_or_default(),
    );
    env.insert("CORDON_TOOL_USE_ID".into(), context.tool_use_id.clone());
    env.insert("CORDON_TOOL_NAME".into(), tool.name.clone());
    let request = ExecRequest {
        argv: handler.command.clone(),
        cwd: Some(handler.cwd.clone()),
        env,
        timeout_ms: Some(tool.timeout.as_millis() as u64),
        stdin: Some(input.to_string()),
    };
    let cap = tool.max_output_bytes;
    let mut stdout = String::new();
    let mut stderr = String::new();
    let mut overflow = false;
    let ran = tokio::time::timeout(
        tool.timeout + KILL_GRACE,
        exec(
            &HttpClient::default(),
            sandbox.agent,
            &sandbox.token,
            &request,
            |is_stderr, data| {
                if is_stderr {
                    // Only the tail is ever quoted.
                    stderr.push_str(data);
                    if stderr.len() > 4 * FAILURE_TAIL {
                        stderr = tail(&stderr, FAILURE_TAIL);
                    }
                } else if stdout.len() + data.len() > cap {
                    overflow = true;
                } else {
                    stdout.push_str(data);
                }
            },
        ),
    )
    .await;
    let limit = tool.timeout.as_millis();
    match ran {
        Err(_) | Ok(Ok(ExecOutcome::TimedOut)) => Answer::error(
            Outcome::Timeout,
            format!(
                "[cordon] tool {} did not finish within its timeout_ms ({limit} ms); its sandbox \
                 was killed{}",
                tool.name,
                quoted(&stdout, &stderr)
            ),
        ),
        Ok(Err(e)) => Answer::error(
            Outcome::Failed,
            format!("[cordon] the tool's sandbox stopped answering: {e}"),
        ),
        Ok(Ok(ExecOutcome::NotStarted(why))) => Answer::error(
            Outcome::Error,
            format!(
                "[cordon] tool {}: {:?} could not be started in its sandbox: {why}",
                tool.name,
                handler.command.first().map(String::as_str).unwrap_or("")
            ),
        ),
        Ok(Ok(_)) if overflow => Answer::error(
            Outcome::Error,
            format!(
                "[cordon] tool {} wrote more than its max_output_kb ({} KiB); raise it in the \
                 tools file or make the tool write less",
                tool.name,
                cap / 1024
            ),
        ),
        Ok(Ok(ExecOutcome::Exited(0))) => Answer::new(Outcome::Ok, reply::parse(&stdout)),
        Ok(Ok(ended)) => Answer::error(
            Outcome::Error,
            format!(
                "[cordon] tool {} {}{}",
                tool.name,
                match ended {
                    ExecOutcome::Signalled(signal) => format!("was killed by signal {signal}"),
                    other => format!("exited with status {}", other.exit_status()),
                },
                quoted(&stdout, &stderr)
            ),
        ),
    }
}

/// The tails of what a failed handler wrote, for its error result.
fn quoted(stdout: &str, stderr: &str) -> String {
    let mut text = String::new();
    for (name, output) in [("standard output", stdout), ("standard error", stderr)] {
        if !output.trim().is_empty() {
            text.push_str(&format!(
                "\n\n{name} (last {FAILURE_TAIL} bytes at most):\n{}",
                tail(output, FAILURE_TAIL)
            ));
        }
    }
    text
}

//! Custom tools (docs/TOOLS.md): the tools an operator declares in one file
//! (`[controller] tools`), answered for every `agent.custom_tool_use` of the sessions the
//! controller serves.
//!
//! - [`file`]: `tools.toml`, read and checked into a [`file::ToolSet`] (every problem at once).
//! - [`schema`]: what CMA accepts as an `input_schema`, and checking a call's input against it.
//! - [`run`]: a program in a short-lived gVisor sandbox of its own, behind the proxy.
//! - [`http`]: a private service, reached through the proxy's explicit listener.
//! - [`builtin`]: the tools Cordon brings (`[builtins]`): the session's browser.
//! - [`reply`]: a handler's output as the content blocks of a `user.custom_tool_result`.
//! - [`serve`]: the set being served, reloaded on change and on SIGHUP; per-tool concurrency,
//!   metrics ([`crate::metrics`]) and the audit log ([`audit`]).
//!
//! Both handler kinds reach the network only through the proxy, under an identity of their own:
//! session id `tool:<name>`, labels naming the calling session, so the Rego policy decides what
//! a tool may reach and the proxy injects its credentials.

pub mod audit;
pub mod builtin;
pub mod file;
pub mod http;
pub mod program;
pub mod reply;
pub mod run;
pub mod schema;
pub mod serve;
pub mod setup;

use std::collections::BTreeMap;

pub use serve::CustomTools;

/// Who is calling: the session whose agent asked, and the call's id.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    pub session: String,
    /// The CMA agent of the session, when known.
    pub agent_id: Option<String>,
    pub tool_use_id: String,
}

impl CallContext {
    /// The proxy identity of `tool`'s calls: `tool:<name>`.
    pub fn proxy_id(tool: &str) -> String {
        format!("tool:{tool}")
    }

    /// Tells the proxy that traffic from `source` is `tool`'s call on behalf of this context,
    /// until [`CallContext::unregister`].
    pub async fn register(
        &self,
        admin: &crate::proxy_admin::ProxyAdmin,
        tool: &str,
        source: std::net::IpAddr,
    ) -> Result<(), crate::proxy_admin::ProxyAdminError> {
        admin
            .register_shared(
                &Self::proxy_id(tool),
                source,
                self.agent_id.as_deref(),
                &self.labels(tool),
            )
            .await
    }

    /// Forgets `source` as `tool`'s; a failure is logged (the proxy drops the registration
    /// when the controller reconciles).
    pub async fn unregister(
        admin: &crate::proxy_admin::ProxyAdmin,
        tool: &str,
        source: std::net::IpAddr,
    ) {
        if let Err(e) = admin.unregister_source(&Self::proxy_id(tool), source).await {
            tracing::warn!(tool, error = %e, "removing a tool call's proxy registration");
        }
    }

    /// The labels a call's traffic carries to the policy (`input.session.labels`).
    pub fn labels(&self, tool: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("session".to_string(), self.session.clone()),
            ("tool".to_string(), tool.to_string()),
            ("tool_use_id".to_string(), self.tool_use_id.clone()),
        ])
    }
}

/// How a call ended: the metric label and audit value (a closed set,
/// [`crate::metrics::CUSTOM_TOOL_OUTCOMES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The handler answered (its result may still say `is_error`).
    Ok,
    /// The handler answered with an error: a non-zero exit, an HTTP error, a bad result.
    Error,
    /// The handler ran out of `timeout_ms`.
    Timeout,
    /// The input does not match the tool's schema; nothing ran.
    InvalidInput,
    /// The proxy refused the handler's request (policy, SSRF guard, credentials).
    Refused,
    /// Cordon could not run the handler (sandbox start, proxy registration).
    Failed,
    /// The agent called a tool the file does not declare.
    Undeclared,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Timeout => "timeout",
            Outcome::InvalidInput => "invalid_input",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
            Outcome::Undeclared => "undeclared",
        }
    }
}

/// A handler's answer and how it went.
#[derive(Debug, Clone)]
pub struct Answer {
    pub reply: reply::ToolReply,
    pub outcome: Outcome,
}

impl Answer {
    pub fn new(outcome: Outcome, reply: reply::ToolReply) -> Self {
        // A result that says is_error is an error outcome, whoever produced it.
        let outcome = if outcome == Outcome::Ok && reply.is_error {
            Outcome::Error
        } else {
            outcome
        };
        Self { reply, outcome }
    }

    pub fn error(outcome: Outcome, text: impl Into<String>) -> Self {
        Self {
            reply: reply::ToolReply::error(text),
            outcome,
        }
    }
}

/// The last `max` bytes of `text` (on a character boundary), marked when cut.
pub fn tail(text: &str, max: usize) -> String {
    let text = text.trim_end();
    if text.len() <= max {
        return text.to_string();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("[...]{}", &text[start..])
}

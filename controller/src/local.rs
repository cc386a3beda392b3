//! Local sessions (docs/OPEN-MODELS.md): the agent loop on the gateway, against any
//! OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp's server, Ollama, a hosted
//! provider), with no Anthropic dependency. The hands are the same as for CMA sessions: each
//! session's own gVisor sandbox behind the proxy, the CMA toolset, the operator's custom tools.
//!
//! - [`agent`]: agent definitions (model endpoint, system prompt, tools, `ask`, limits).
//! - [`events`]: the session's events, in CMA's shapes.
//! - [`plan`]: the next step, read from the history alone (restart safety).
//! - [`context`]: the conversation sent to the model, kept within its budget.
//! - [`arguments`]: a call as the model wrote it, repaired or refused.
//! - [`model`]: the endpoint, reached through the proxy (policy, injected key, audit).
//! - [`toolset`]: the CMA toolset's schemas.
//! - [`session`]: one session's loop.
//! - [`manager`]: the sessions of a running controller, and what the API asks of them.
//! - [`api`]: the HTTP API (`/v1/agents`, `/v1/sessions`) on the admin listener.

pub mod agent;
pub mod api;
pub mod arguments;
pub mod context;
pub mod events;
pub mod manager;
pub mod model;
pub mod plan;
pub mod session;
pub mod toolset;

pub use manager::LocalSessions;

/// Whether `id` is a local session's (`sesn_local` and letters and digits): such sandboxes
/// belong to [`LocalSessions`], never to a CMA work item.
pub fn is_local_session_id(id: &str) -> bool {
    id.strip_prefix("sesn_local")
        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// A new local session id: `sesn_local` and 20 random letters and digits (a valid sandbox id).
pub fn new_session_id() -> String {
    format!(
        "sesn_local{}",
        crate::sandbox::names::random_alphanumeric(20)
    )
}

//! `[controller]`: `cordon-controller serve`'s webhook and admin listeners, its webhook secret
//! and the CMA environment it serves (docs/CONTROLLER.md).

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControllerSection {
    pub listen: String,
    pub admin_listen: String,
    pub webhook_secret_env: String,
    pub webhook_secret_file: Option<PathBuf>,
    pub max_body_bytes: usize,
    pub environment_id: Option<String>,
    pub environment_key_env: String,
    pub base_url: String,
    pub drain_interval_ms: u64,
    pub max_idle_ms: u64,
    pub lease_ttl_secs: u32,
    /// The custom tools file (docs/TOOLS.md), relative to cordon.toml.
    pub tools: Option<PathBuf>,
    /// The controller's audit log of custom tool calls (JSON lines), relative to cordon.toml;
    /// default `<state_dir>/controller/audit.jsonl`.
    pub audit_log: Option<PathBuf>,
    /// Serve local sessions (docs/OPEN-MODELS.md): agents on OpenAI-compatible models, the
    /// `/v1/agents` and `/v1/sessions` API on the admin listener.
    pub local_sessions: bool,
}

impl Default for ControllerSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8088".into(),
            admin_listen: "127.0.0.1:8089".into(),
            webhook_secret_env: "CORDON_WEBHOOK_SECRET".into(),
            webhook_secret_file: None,
            max_body_bytes: 256 * 1024,
            environment_id: None,
            environment_key_env: "ANTHROPIC_ENVIRONMENT_KEY".into(),
            base_url: "https://api.anthropic.com".into(),
            drain_interval_ms: 30_000,
            max_idle_ms: 60_000,
            lease_ttl_secs: 60,
            tools: None,
            audit_log: None,
            local_sessions: false,
        }
    }
}

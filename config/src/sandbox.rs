//! `[sandbox]`: the per-session gVisor sandboxes `cordon-controller` runs (docs/SANDBOXES.md).
//! The controller validates the values; the proxy only checks the section's shape.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxSection {
    pub name_prefix: String,
    pub interface_prefix: String,
    pub address_pool: String,
    pub agent_port: u16,
    pub agent: Option<PathBuf>,
    /// A statically linked agent for images without glibc (default: the one `make` builds
    /// beside the programs, when `agent` is not set either).
    pub static_agent: Option<PathBuf>,
    pub image: String,
    pub images_dir: Option<PathBuf>,
    pub agent_images: std::collections::BTreeMap<String, String>,
    pub danger_host_rootfs: bool,
    pub warm: u32,
    /// Replaced by images; kept only to say so.
    pub rootfs: Option<PathBuf>,
    pub workspace_root: Option<PathBuf>,
    /// Replaced by `workspace_retention_hours`; kept only to say so.
    pub keep_workspace: Option<bool>,
    pub workspace_max_mb: u64,
    pub workspace_retention_hours: u64,
    pub memory_mb: u64,
    pub pids: i64,
    pub cpus: f64,
    pub runsc: PathBuf,
    pub start_timeout_ms: u64,
    pub statx_compat: bool,
}

impl Default for SandboxSection {
    fn default() -> Self {
        Self {
            name_prefix: "cordon".into(),
            interface_prefix: "cdn".into(),
            address_pool: "10.200.0.0/16".into(),
            agent_port: 7070,
            agent: None,
            static_agent: None,
            image: DEFAULT_IMAGE.into(),
            images_dir: None,
            agent_images: Default::default(),
            danger_host_rootfs: false,
            warm: 0,
            rootfs: None,
            workspace_root: None,
            keep_workspace: None,
            workspace_max_mb: DEFAULT_WORKSPACE_MAX_MB,
            workspace_retention_hours: DEFAULT_WORKSPACE_RETENTION_HOURS,
            memory_mb: 1024,
            pids: 512,
            cpus: 1.0,
            runsc: "runsc".into(),
            start_timeout_ms: 10_000,
            statx_compat: true,
        }
    }
}

/// The most warm sandboxes `[sandbox] warm` may ask for per image.
pub const MAX_WARM: u32 = 64;
/// The image a session runs on when nothing else is said.
pub const DEFAULT_IMAGE: &str = "default";
/// A workspace's size limit, enforced by the kernel (a loop-mounted filesystem per workspace).
pub const DEFAULT_WORKSPACE_MAX_MB: u64 = 2048;
/// How long a workspace is kept after its session ended.
pub const DEFAULT_WORKSPACE_RETENTION_HOURS: u64 = 24;

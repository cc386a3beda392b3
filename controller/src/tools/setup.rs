//! What serving custom tools needs from `cordon.toml`: where the tools file and the audit log
//! are, the proxy's explicit listener and CA (http tools), and what a tool may not see (the
//! checks of [`super::file::Context`]).

use std::path::{Path, PathBuf};

use super::file::{Context, ImageInfo};
use super::http::ProxyRoute;
use crate::config::{ConfigError, SandboxConfig};
use crate::image::ImageStore;

/// `[controller] tools` and everything its checks compare against.
#[derive(Debug, Clone)]
pub struct ToolsConfig {
    /// The tools file; `None`: no custom tools are served.
    pub path: Option<PathBuf>,
    /// The controller's audit log of tool calls.
    pub audit_log: PathBuf,
    /// The proxy's explicit listener and CA, when the proxy has one.
    pub explicit: Option<std::net::SocketAddr>,
    pub ca_cert: PathBuf,
    /// `[sandbox] image`, for run tools that name none.
    pub default_image: String,
    host_rootfs: bool,
    images_dir: PathBuf,
    forbidden: Vec<PathBuf>,
}

impl ToolsConfig {
    /// Reads the keys from `cordon.toml` at `path`; `sandbox` is its checked `[sandbox]`.
    pub fn load(path: &Path, sandbox: &SandboxConfig) -> Result<Self, ConfigError> {
        let file = cordon_config::read(path)?;
        let raw = &file.sections.controller;
        let explicit = match &file.sections.proxy.explicit_listen {
            None => None,
            Some(value) => Some(
                cordon_config::address("proxy.explicit_listen", value).map_err(|e| {
                    ConfigError::Invalid {
                        path: path.into(),
                        errors: vec![e],
                    }
                })?,
            ),
        };
        let state_dir = file.state_dir();
        let mut forbidden = vec![
            state_dir.clone(),
            file.ca_cert(),
            file.ca_key(),
            sandbox.state_dir.clone(),
            sandbox.workspace_root.clone(),
            sandbox.images_dir.clone(),
            path.to_path_buf(),
        ];
        forbidden.extend(file.credentials_store());
        forbidden.extend(raw.webhook_secret_file.as_ref().map(|p| file.resolve(p)));
        // What would let a tool change what runs, or read what it must not: the tools file
        // (a writable mount over it would rewrite the tools), the policy, the sandbox agent,
        // the audit logs.
        forbidden.extend(raw.tools.as_ref().map(|p| file.resolve(p)));
        forbidden.extend(raw.audit_log.as_ref().map(|p| file.resolve(p)));
        forbidden.extend(
            file.sections
                .policy
                .bundle
                .as_ref()
                .map(|p| file.resolve(p)),
        );
        forbidden.extend(
            file.sections
                .audit
                .path
                .as_ref()
                .filter(|p| p.as_os_str() != "-")
                .map(|p| file.resolve(p)),
        );
        forbidden.push(sandbox.agent.clone());
        Ok(Self {
            path: raw.tools.as_ref().map(|p| file.resolve(p)),
            audit_log: raw.audit_log.as_ref().map_or_else(
                || state_dir.join("controller").join("audit.jsonl"),
                |p| file.resolve(p),
            ),
            explicit,
            ca_cert: file.ca_cert(),
            default_image: sandbox.image.clone(),
            host_rootfs: sandbox.danger_host_rootfs,
            images_dir: sandbox.images_dir.clone(),
            forbidden,
        })
    }

    /// What a tools file is checked against now (the image store is read again each time: an
    /// image built since the last load counts).
    pub fn context(&self) -> Context {
        let images = ImageStore::open(&self.images_dir)
            .and_then(|store| store.list())
            .map(|images| {
                images
                    .into_iter()
                    .map(|image| {
                        let path = image
                            .env
                            .iter()
                            .find_map(|e| e.strip_prefix("PATH="))
                            .unwrap_or(super::program::DEFAULT_PATH)
                            .to_string();
                        let info = ImageInfo {
                            root: image.root,
                            path,
                        };
                        (image.name, info)
                    })
                    .collect()
            })
            .unwrap_or_default();
        Context {
            host_rootfs: self.host_rootfs,
            images,
            default_image: self.default_image.clone(),
            forbidden: self.forbidden.clone(),
            explicit_proxy: self.explicit.is_some(),
        }
    }

    /// The route http tools take, when the proxy has an explicit listener.
    pub fn route(&self) -> Result<Option<ProxyRoute>, String> {
        self.explicit
            .map(|explicit| ProxyRoute::new(explicit, &self.ca_cert))
            .transpose()
    }
}

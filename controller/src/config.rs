//! The controller's configuration: the `[sandbox]` and `[controller]` sections of
//! `cordon.toml`, plus what it needs from the proxy's sections (state directory, admin API,
//! transparent and DNS ports, CA). The file's shape is the `cordon-config` crate's; this
//! module checks the values, listing every error at once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cordon_config::ConfigFile;
use cordon_config::controller::ControllerSection;
pub use cordon_config::sandbox::{
    DEFAULT_IMAGE, DEFAULT_WORKSPACE_MAX_MB, DEFAULT_WORKSPACE_RETENTION_HOURS, MAX_WARM,
};
use ipnet::Ipv4Net;

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] cordon_config::FileError),
    #[error("{path} has {} error(s) for the controller:\n  {}", .errors.len(), .errors.join("\n  "))]
    Invalid { path: PathBuf, errors: Vec<String> },
}

/// Everything the sandbox runtime needs.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Prefix of every host resource: netns `<prefix>-<id>`, container `<prefix>-<id>`, the
    /// nftables table `<prefix>`.
    pub name_prefix: String,
    /// Host-side veth names are `<interface_prefix><slot>` (kernel limit: 15 characters).
    pub interface_prefix: String,
    /// Each session gets one /30 of this network.
    pub address_pool: Ipv4Net,
    pub agent_port: u16,
    /// The `cordon-sandbox-agent` binary on the host, bind-mounted into every sandbox whose
    /// image it can run on.
    pub agent: PathBuf,
    /// A statically linked agent, for images without glibc when `agent` is linked against it.
    pub static_agent: Option<PathBuf>,
    /// The image sessions run on unless `agent_images` names another for their agent.
    pub image: String,
    /// The image store (an OCI image layout, docs/SANDBOXES.md).
    pub images_dir: PathBuf,
    /// CMA agent id -> image name.
    pub agent_images: std::collections::BTreeMap<String, String>,
    /// Run sandboxes on the host's own `/` (with masks) instead of an image: dangerous, since
    /// a deny-list of hidden paths can never be complete.
    pub danger_host_rootfs: bool,
    /// Warm sandboxes kept ready per image (`image` and each of `agent_images`).
    pub warm: u32,
    pub workspace_root: PathBuf,
    /// 0: no quota (a plain directory).
    pub workspace_max_mb: u64,
    pub workspace_retention: Duration,
    pub memory_bytes: i64,
    pub pids: i64,
    pub cpus: f64,
    pub runsc: PathBuf,
    pub start_timeout: Duration,
    /// Preload the statx compatibility library into sandbox processes (controller/compat).
    pub statx_compat: bool,
    /// The controller's own state (SQLite, bundles, runsc root): `<proxy state_dir>/controller`.
    pub state_dir: PathBuf,
    /// The proxy's admin API.
    pub admin: SocketAddr,
    /// Ports the nftables rules redirect to: the transparent listener and the DNS stub.
    pub transparent_port: u16,
    pub dns_port: u16,
    /// The interception CA certificate, trusted inside every sandbox.
    pub ca_cert: PathBuf,
    /// Host directories hidden (an empty tmpfs over each) when the sandbox's root is the host's
    /// own (`danger_host_rootfs`): the gateway's state (CA key, audit log, this controller's database, every
    /// session's workspace and token), its configuration and secret store, and home and SSH
    /// directories.
    pub masked_dirs: Vec<PathBuf>,
}

/// Host files hidden (an empty file over each) when the root is the host's.
pub const MASKED_FILES: [&str; 3] = ["/etc/shadow", "/etc/gshadow", "/etc/sudoers"];

/// Directories a mask must never cover: the sandbox needs them to run at all.
const SYSTEM_DIRS: [&str; 10] = [
    "/", "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib64", "/var", "/tmp", "/proc",
];

fn masked_dirs(file: &ConfigFile, workspace_root: &Path, images_dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = vec![
        file.state_dir(),
        workspace_root.to_path_buf(),
        images_dir.to_path_buf(),
    ];
    dirs.push(file.base.clone());
    for key in [file.ca_cert(), file.ca_key()] {
        if let Some(parent) = key.parent() {
            dirs.push(parent.to_path_buf());
        }
    }
    if let Some(store) = &file.credentials_store() {
        dirs.push(if store.is_dir() {
            store.clone()
        } else {
            store.parent().map(Path::to_path_buf).unwrap_or_default()
        });
    }
    for fixed in [
        "/root",
        "/home",
        "/etc/cordon",
        "/etc/ssh",
        "/var/lib/cordon",
    ] {
        dirs.push(PathBuf::from(fixed));
    }
    let mut out: Vec<PathBuf> = Vec::new();
    for dir in dirs {
        let Ok(dir) = dir.canonicalize() else {
            continue;
        };
        if SYSTEM_DIRS.iter().any(|s| dir == Path::new(s)) || !dir.is_dir() {
            continue;
        }
        if !out.contains(&dir) {
            out.push(dir);
        }
    }
    out
}

/// The images a configuration names, each with the key that names it: `sandbox.image` and
/// `sandbox.agent_images.<agent>` (an image named twice is listed twice).
pub fn configured_images<'a>(
    image: &'a str,
    agent_images: &'a std::collections::BTreeMap<String, String>,
) -> Vec<(String, &'a str)> {
    std::iter::once(("sandbox.image".to_string(), image))
        .chain(
            agent_images
                .iter()
                .map(|(agent, image)| (format!("sandbox.agent_images.{agent}"), image.as_str())),
        )
        .collect()
}

impl SandboxConfig {
    /// [`configured_images`] of this configuration.
    pub fn images(&self) -> Vec<(String, &str)> {
        configured_images(&self.image, &self.agent_images)
    }

    /// Reads `cordon.toml`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = cordon_config::read(path)?;
        Self::validate(&file).map_err(|errors| ConfigError::Invalid {
            path: path.into(),
            errors,
        })
    }

    fn validate(file: &ConfigFile) -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        let raw = &file.sections.sandbox;
        let proxy = &file.sections.proxy;
        let resolve = |p: &Path| file.resolve(p);
        let mut address = |key: &str, value: Option<&String>| -> Option<SocketAddr> {
            cordon_config::address(key, value?)
                .map_err(|e| errors.push(e))
                .ok()
        };
        let admin = address("proxy.admin_listen", Some(&proxy.admin_listen));
        let transparent_listen = address(
            "proxy.transparent_listen",
            proxy.transparent_listen.as_ref(),
        );
        let dns_listen = address("dns.listen", file.sections.dns.listen.as_ref());
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        };
        if !name_ok(&raw.name_prefix) || raw.name_prefix.len() > 40 {
            errors.push(format!(
                "sandbox.name_prefix = {:?}: use 1-40 letters, digits, '-' or '_'",
                raw.name_prefix
            ));
        }
        // Reconcile deletes every `<interface_prefix><digits>` interface no live session owns,
        // and the firewall drops everything arriving on `<interface_prefix>*`: the prefix must
        // not reach the host's own interfaces, or another controller's.
        const HOST_INTERFACES: [&str; 14] = [
            "eth", "en", "wl", "ww", "lo", "docker", "br", "veth", "virbr", "tun", "tap", "bond",
            "vlan", "cni",
        ];
        let ifp = raw.interface_prefix.as_str();
        if !name_ok(ifp)
            || ifp.len() > 8
            || ifp.ends_with(|c: char| c.is_ascii_digit())
            || HOST_INTERFACES
                .iter()
                .any(|h| ifp.starts_with(h) || h.starts_with(ifp))
        {
            errors.push(format!(
                "sandbox.interface_prefix = {ifp:?}: use 1-8 letters, digits, '-' or '_', not \
                 ending in a digit (a slot number follows) and not overlapping the host's own \
                 interface names (eth, en*, wl*, docker, br, veth, ...)"
            ));
        }
        let pool = match raw.address_pool.parse::<Ipv4Net>() {
            // At most 2^16 slots, so slot numbers stay five digits (container ids share one
            // length, which runsc's prefix matching needs).
            Ok(net) if (14..=29).contains(&net.prefix_len()) => Some(net.trunc()),
            _ => {
                errors.push(format!(
                    "sandbox.address_pool = {:?}: an IPv4 network from /14 to /29, such as \
                     \"10.200.0.0/16\"",
                    raw.address_pool
                ));
                None
            }
        };
        if raw.warm > MAX_WARM {
            errors.push(format!(
                "sandbox.warm = {}: at most {MAX_WARM} warm sandboxes per image (each holds \
                 memory and an address while idle)",
                raw.warm
            ));
        }
        if raw.warm > 0 && raw.danger_host_rootfs {
            errors.push(
                "sandbox.warm needs images: a warm pool is not kept for danger_host_rootfs \
                 sandboxes; set warm = 0 or run on an image"
                    .into(),
            );
        }
        if raw.memory_mb < 64 {
            errors.push("sandbox.memory_mb must be at least 64".into());
        }
        if raw.pids < 16 {
            errors.push("sandbox.pids must be at least 16".into());
        }
        if !(raw.cpus > 0.0 && raw.cpus <= 1024.0) {
            errors.push("sandbox.cpus must be greater than 0".into());
        }
        if raw.rootfs.is_some() {
            errors.push(
                "sandbox.rootfs is replaced by images: build one (`cordon-controller image build \
                 NAME --from-file FILE`) or import one (`cordon-controller image import FILE`) \
                 and set sandbox.image = \"NAME\" (docs/SANDBOXES.md)"
                    .into(),
            );
        }
        if raw.keep_workspace.is_some() {
            errors.push(
                "sandbox.keep_workspace is replaced by sandbox.workspace_retention_hours: \
                 workspaces are kept across a session's sandboxes and removed that long after \
                 the session ends"
                    .into(),
            );
        }
        for (what, name) in configured_images(&raw.image, &raw.agent_images) {
            if !crate::image::valid_name(name) {
                errors.push(format!(
                    "{what} = {name:?}: an image name (letters, digits, '.', '_', '-', ':', '/')"
                ));
            }
        }
        if raw.workspace_max_mb != 0 && raw.workspace_max_mb < 16 {
            errors.push("sandbox.workspace_max_mb must be at least 16 (or 0 for no quota)".into());
        }
        if raw.start_timeout_ms == 0 {
            errors.push("sandbox.start_timeout_ms must be greater than 0".into());
        }
        // Redirected sandbox traffic arrives on each veth's host-side address, so the proxy
        // must listen on all of them.
        let port_on_every_address = |address: Option<SocketAddr>| {
            address
                .filter(|a| a.ip().is_unspecified())
                .map(|a| a.port())
        };
        let transparent = port_on_every_address(transparent_listen);
        if transparent.is_none() {
            errors.push(
                "proxy.transparent_listen must be set to 0.0.0.0:<port>: sandbox TCP is \
                 redirected to it on each sandbox's host-side address"
                    .into(),
            );
        }
        let dns = port_on_every_address(dns_listen);
        if dns.is_none() {
            errors.push(
                "dns.listen must be set to 0.0.0.0:<port>: sandbox DNS is redirected to the \
                 proxy's stub on each sandbox's host-side address"
                    .into(),
            );
        }
        let beside = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(agents_beside));
        let (agent, static_agent) = match (&raw.agent, &raw.static_agent) {
            (Some(agent), static_agent) => (resolve(agent), static_agent.as_deref().map(resolve)),
            (None, explicit) => {
                let (dynamic, found) =
                    beside.unwrap_or_else(|| (PathBuf::from("cordon-sandbox-agent"), None));
                let static_agent = explicit.as_deref().map(resolve).or(found);
                // Without a dynamic build, the static one serves every image.
                match (dynamic.is_file(), static_agent) {
                    (false, Some(only)) => (only, None),
                    (_, static_agent) => (dynamic, static_agent),
                }
            }
        };
        let state_dir = file.state_dir().join("controller");
        let workspace_root = raw
            .workspace_root
            .as_ref()
            .map_or_else(|| state_dir.join("workspaces"), |p| resolve(p));
        let images_dir = raw
            .images_dir
            .as_ref()
            .map_or_else(|| state_dir.join("images"), |p| resolve(p));
        if !errors.is_empty() {
            return Err(errors);
        }
        let (Some(address_pool), Some(transparent_port), Some(dns_port), Some(admin)) =
            (pool, transparent, dns, admin)
        else {
            return Err(vec!["internal: a checked value is missing".into()]);
        };
        Ok(Self {
            name_prefix: raw.name_prefix.clone(),
            interface_prefix: raw.interface_prefix.clone(),
            address_pool,
            agent_port: raw.agent_port,
            agent,
            static_agent,
            image: raw.image.clone(),
            agent_images: raw.agent_images.clone(),
            danger_host_rootfs: raw.danger_host_rootfs,
            warm: raw.warm,
            masked_dirs: masked_dirs(file, &workspace_root, &images_dir),
            images_dir,
            workspace_root,
            workspace_max_mb: raw.workspace_max_mb,
            workspace_retention: Duration::from_secs(raw.workspace_retention_hours * 3600),
            memory_bytes: (raw.memory_mb * 1024 * 1024) as i64,
            pids: raw.pids,
            cpus: raw.cpus,
            runsc: raw.runsc.clone(),
            start_timeout: Duration::from_millis(raw.start_timeout_ms),
            statx_compat: raw.statx_compat,
            state_dir,
            admin,
            transparent_port,
            dns_port,
            ca_cert: file.ca_cert(),
        })
    }
}

/// `cordon-controller serve`: the `[controller]` section.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Where `/webhooks` is served (put TLS in front of it to expose it to CMA).
    pub listen: SocketAddr,
    /// The admin API (sessions, metrics); loopback only.
    pub admin_listen: SocketAddr,
    /// `None` without a CMA environment and no secret set: `/webhooks` refuses deliveries.
    pub webhook_secret: Option<crate::cma::webhooks::WebhookSecret>,
    pub max_body_bytes: usize,
    /// The controller's state directory (its SQLite).
    pub state_dir: PathBuf,
    /// The controller's audit log (`[controller] audit_log`): tool calls, dashboard and admin
    /// actions.
    pub audit_log: PathBuf,
    /// Serving CMA work: `None` when `environment_id` is unset (webhooks are only recorded).
    pub work: Option<WorkConfig>,
    /// `[controller] local_sessions`: the local agent loop and its API (docs/OPEN-MODELS.md).
    pub local_sessions: bool,
}

/// The self-hosted environment whose work queue `serve` drains.
#[derive(Debug, Clone)]
pub struct WorkConfig {
    pub environment_id: String,
    pub environment_key: crate::cma::client::Key,
    pub base_url: String,
    pub drain_interval: Duration,
    pub max_idle: Duration,
    pub lease_ttl_secs: u32,
}

impl ServiceConfig {
    /// Only `[controller] admin_listen`, for CLI commands that talk to a running `serve`
    /// (they need no webhook secret).
    pub fn admin_address(path: &Path) -> Result<SocketAddr, ConfigError> {
        let file = cordon_config::read(path)?;
        let raw = &file.sections.controller;
        raw.admin_listen
            .parse::<SocketAddr>()
            .map_err(|_| ConfigError::Invalid {
                path: path.into(),
                errors: vec![format!(
                    "controller.admin_listen = {:?} is not an address:port",
                    raw.admin_listen
                )],
            })
    }

    /// Where `serve` keeps the admin API's token (`<state_dir>/controller/admin-token`), which
    /// the workspace file routes ask for: read from `path` without the rest of the section.
    pub fn admin_token_path(path: &Path) -> Result<PathBuf, ConfigError> {
        let file = cordon_config::read(path)?;
        Ok(crate::admin::token::path(
            &file.state_dir().join("controller"),
        ))
    }

    /// Reads `[controller]` of `cordon.toml`; the webhook secret comes from the environment
    /// variable or the file (mode 0600) it names, never from the config file itself.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = cordon_config::read(path)?;
        let raw: &ControllerSection = &file.sections.controller;
        let invalid = |errors: Vec<String>| ConfigError::Invalid {
            path: path.into(),
            errors,
        };
        let mut errors = Vec::new();
        let listen = raw.listen.parse::<SocketAddr>().map_err(|_| {
            format!(
                "controller.listen = {:?} is not an address:port",
                raw.listen
            )
        });
        let admin_listen = match raw.admin_listen.parse::<SocketAddr>() {
            Ok(a) if a.ip().is_loopback() => Some(a),
            Ok(a) => {
                errors.push(format!(
                    "controller.admin_listen = {a} is not a loopback address; the admin API \
                     stops sessions and has no authentication, so it listens on 127.0.0.1 or \
                     ::1 only"
                ));
                None
            }
            Err(_) => {
                errors.push(format!(
                    "controller.admin_listen = {:?} is not an address:port",
                    raw.admin_listen
                ));
                None
            }
        };
        let secret_text = match &raw.webhook_secret_file {
            Some(file) => {
                let file = if file.is_absolute() {
                    file.clone()
                } else {
                    path.parent().unwrap_or(Path::new(".")).join(file)
                };
                use std::os::unix::fs::PermissionsExt;
                match std::fs::metadata(&file) {
                    Ok(m) if m.permissions().mode() & 0o077 != 0 => Err(format!(
                        "controller.webhook_secret_file {} is readable by group or others; run `chmod 600` on it",
                        file.display()
                    )),
                    Ok(_) => std::fs::read_to_string(&file)
                        .map_err(|e| format!("cannot read {}: {e}", file.display())),
                    Err(e) => Err(format!("cannot read {}: {e}", file.display())),
                }
            }
            None => match std::env::var(&raw.webhook_secret_env) {
                Ok(text) => Ok(text),
                // Without a CMA environment the secret is optional: local sessions need none,
                // and /webhooks then refuses every delivery.
                Err(_) if raw.environment_id.is_none() => Ok(String::new()),
                Err(_) => Err(format!(
                    "the webhook secret is not set: export {} (whsec_...), or set controller.webhook_secret_file",
                    raw.webhook_secret_env
                )),
            },
        };
        let secret = secret_text.and_then(|t| {
            if t.is_empty() {
                Ok(None)
            } else {
                crate::cma::webhooks::WebhookSecret::parse(&t).map(Some)
            }
        });
        if raw.max_body_bytes < 1024 {
            errors.push("controller.max_body_bytes must be at least 1024".into());
        }
        let (listen, secret) = match (listen, secret) {
            (Ok(l), Ok(s)) if errors.is_empty() => (l, s),
            (l, s) => {
                errors.extend(l.err());
                errors.extend(s.err());
                return Err(invalid(errors));
            }
        };
        let work = match &raw.environment_id {
            None => None,
            Some(environment_id) => {
                let key = std::env::var(&raw.environment_key_env).map_err(|_| {
                    invalid(vec![format!(
                        "controller.environment_id is set, but the environment key is not: export {}",
                        raw.environment_key_env
                    )])
                })?;
                Some(WorkConfig {
                    environment_id: environment_id.clone(),
                    environment_key: crate::cma::client::Key::new(key),
                    base_url: raw.base_url.clone(),
                    drain_interval: Duration::from_millis(raw.drain_interval_ms.max(1000)),
                    max_idle: Duration::from_millis(raw.max_idle_ms),
                    lease_ttl_secs: raw.lease_ttl_secs.max(10),
                })
            }
        };
        // Set whenever no error was collected, and errors returned above.
        let admin_listen = admin_listen.ok_or_else(|| invalid(errors.clone()))?;
        Ok(Self {
            listen,
            admin_listen,
            webhook_secret: secret,
            max_body_bytes: raw.max_body_bytes,
            state_dir: file.state_dir().join("controller"),
            audit_log: raw.audit_log.as_ref().map_or_else(
                || file.state_dir().join("controller/audit.jsonl"),
                |p| file.resolve(p),
            ),
            work,
            local_sessions: raw.local_sessions,
        })
    }
}

/// The target triple the statically linked sandbox agent is built for (`make build`).
pub const STATIC_AGENT_TARGET: &str = "x86_64-unknown-linux-gnu";

/// The sandbox agents that go with the programs in `dir` (a cargo profile directory such as
/// `target/release`): the one beside the programs (dynamically linked: the smaller footprint,
/// for images with glibc), and the statically linked build
/// (`<target>/x86_64-unknown-linux-gnu/<profile>`, which `make build` and `make test` make), if
/// there is one, for images without glibc.
pub fn agents_beside(dir: &std::path::Path) -> (PathBuf, Option<PathBuf>) {
    let static_agent = dir.parent().zip(dir.file_name()).map(|(target, profile)| {
        target
            .join(STATIC_AGENT_TARGET)
            .join(profile)
            .join("cordon-sandbox-agent")
    });
    (
        dir.join("cordon-sandbox-agent"),
        static_agent.filter(|p| p.is_file()),
    )
}

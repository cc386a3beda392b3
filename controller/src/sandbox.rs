//! The sandbox runtime: for each session a gVisor sandbox in its own network namespace whose
//! only way out is the proxy (and its DNS stub). Start, stop, list, reconcile; the library API
//! the CLI and the CMA integration call.
//!
//! Start: record (slot) -> netns + veth -> firewall -> proxy registration -> workspace ->
//! bundle -> runsc -> wait for the agent. A failure undoes what was done, in reverse. With a
//! warm pool (`[sandbox] warm`), a start first tries to claim a ready sandbox (pool.rs).
//! Stop: container -> netns -> record -> firewall -> registration -> workspace, an order in
//! which the sandbox never has a way out the firewall does not guard: its processes are gone
//! before its interface, and its interface before its rules.
//!
//! Concurrency: every method takes `&self`, and operations on different sessions run side by
//! side. Operations on one session are ordered by its lock (locks.rs); the process spawns
//! (`ip`, `runsc`, `mount`) run on tokio's blocking pool; the firewall table has one owner
//! task that coalesces rewrites (firewall.rs). `reconcile` and `stop_all`, which look at every
//! session's resources at once, wait until no other operation runs.

mod browse;
pub mod bundle;
pub mod firewall;
pub mod limits;
mod locks;
pub mod names;
pub mod network;
mod pool;
mod reconcile;
pub mod runsc;
mod sweep;
pub mod workspace;

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rand::Rng;
use rand::distr::Alphanumeric;

use self::bundle::HostMount;
use self::firewall::{Applier, Firewall};
use self::locks::SessionLocks;
use self::names::{
    SessionNames, is_tool_id, is_warm_id, new_tool_id, slot_count, valid_session_id,
};
pub use self::reconcile::Reconciled;
use self::runsc::{HostSupport, Runsc};
use self::workspace::{WorkspaceError, Workspaces};
use crate::command::{CommandError, available};
use crate::config::SandboxConfig;
use crate::http::HttpClient;
use crate::proxy_admin::{ProxyAdmin, ProxyAdminError};
use crate::store::{SessionRecord, SessionState, Store, StoreError};

/// Why a sandbox operation failed. Every message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{0}")]
    Prerequisite(String),
    #[error(
        "session id {0:?} is not valid: use 1-64 letters, digits, '_', '-' or '.' (not starting with '.')"
    )]
    InvalidId(String),
    #[error("no session {0:?} is recorded; see `cordon-controller sandbox list`")]
    NotFound(String),
    #[error("session {id:?} is {state}, not running")]
    NotRunning { id: String, state: &'static str },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(transparent)]
    Bundle(#[from] bundle::BundleError),
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    #[error("{0}")]
    Runsc(String),
    #[error("the sandbox firewall (nftables) could not be applied: {0}")]
    Firewall(String),
    #[error(
        "the proxy's admin API refused or did not answer: {0}; is cordon-proxy running with this cordon.toml?"
    )]
    Proxy(ProxyAdminError),
    #[error(
        "the sandbox agent did not answer within {timeout:?} at {address} (last error: {last})"
    )]
    AgentTimeout {
        timeout: Duration,
        address: SocketAddr,
        last: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("stopping {id:?} left problems: {}", .problems.join("; "))]
    Teardown { id: String, problems: Vec<String> },
}

/// A started sandbox.
#[derive(Debug, Clone)]
pub struct Started {
    pub id: String,
    pub sandbox_address: Ipv4Addr,
    pub agent: SocketAddr,
    pub support: HostSupport,
    /// The image it runs on (`host` with `danger_host_rootfs`).
    pub image: String,
    /// Claimed from the warm pool rather than started for this session.
    pub warm: bool,
    pub elapsed: Duration,
}

/// What a sandbox's root filesystem is.
#[derive(Debug, Clone)]
enum RootChoice {
    Image(Box<crate::image::Image>),
    /// `danger_host_rootfs`: the host's `/`, with masks.
    Host,
}

impl RootChoice {
    fn path(&self) -> PathBuf {
        match self {
            RootChoice::Image(image) => image.root.clone(),
            RootChoice::Host => PathBuf::from("/"),
        }
    }
}

/// One row of `list`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionView {
    pub id: String,
    /// `starting`, `running`, `stopped`, `failed`, `warm` (in the warm pool, no session) or
    /// `tool` (a custom tool call's).
    pub state: &'static str,
    pub address: Ipv4Addr,
    pub network_mode: Option<String>,
    pub image: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub error: Option<String>,
}

/// The runtime, holding the controller's lock (one mutating controller at a time per state
/// directory) for as long as it lives. Share it (`Arc`) between tasks: see the module notes.
#[derive(Debug)]
pub struct Runtime {
    config: Arc<SandboxConfig>,
    store: Arc<Store>,
    http: HttpClient,
    proxy: ProxyAdmin,
    runsc: Runsc,
    firewall: Firewall,
    /// Made on the first rewrite, on the runtime the caller runs on.
    applier: OnceLock<Applier>,
    workspaces: Workspaces,
    locks: SessionLocks,
    /// Shared by every session operation; exclusive for `reconcile` and `stop_all`.
    whole: tokio::sync::RwLock<()>,
    /// What runsc supports here, probed by the first start.
    support: tokio::sync::OnceCell<HostSupport>,
    /// Set once the host had everything a start needs.
    prerequisites: OnceLock<()>,
    /// Wakes the warm pool's refill (a sandbox was claimed or went).
    refill: tokio::sync::Notify,
    /// Set by `stop_all`: the pool starts nothing more.
    closing: std::sync::atomic::AtomicBool,
    _lock: File,
}

/// Runs blocking work (process spawns, file system writes) on tokio's blocking pool, so a
/// start waiting for `runsc` holds up no other session.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("blocking sandbox work was cancelled: {e}"),
        },
    }
}

fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> SandboxError + '_ {
    move |source| SandboxError::Io {
        path: path.into(),
        source,
    }
}

impl Runtime {
    /// Opens the state (creating it) and takes the controller lock, waiting for another
    /// controller process to finish if one holds it.
    pub fn open(config: SandboxConfig) -> Result<Self, SandboxError> {
        let dir = &config.state_dir;
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let lock_path = dir.join("controller.lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        lock.lock().map_err(io(&lock_path))?;
        let store = Arc::new(Store::open(&dir.join("state.db"))?);
        Ok(Self {
            runsc: Runsc {
                binary: config.runsc.clone(),
                root: dir.join("runsc"),
                detach: false,
            },
            firewall: Firewall {
                table: config.name_prefix.clone(),
                interface_prefix: config.interface_prefix.clone(),
                transparent_port: config.transparent_port,
                dns_port: config.dns_port,
            },
            http: HttpClient::default(),
            proxy: ProxyAdmin::new(config.admin),
            workspaces: Workspaces {
                root: config.workspace_root.clone(),
                max_mb: config.workspace_max_mb,
            },
            store,
            config: Arc::new(config),
            applier: OnceLock::new(),
            locks: SessionLocks::default(),
            whole: tokio::sync::RwLock::new(()),
            support: tokio::sync::OnceCell::new(),
            prerequisites: OnceLock::new(),
            refill: tokio::sync::Notify::new(),
            closing: std::sync::atomic::AtomicBool::new(false),
            _lock: lock,
        })
    }

    /// The session records this runtime keeps (to wire their failures into the metrics).
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// Starts sandboxes detached from here on, for a process that lives as long as they do
    /// (`serve`): it becomes a child subreaper, so a detached sandbox's processes are its
    /// children and a stop reaps them at once. Saves the `runsc run` process that otherwise
    /// waits beside every sandbox (about 5 MiB of memory each). A short-lived CLI command
    /// keeps the foreground `runsc run`, which outlives it and removes its container.
    pub fn detach_sandboxes(&mut self) -> Result<(), SandboxError> {
        rustix::process::set_child_subreaper(Some(rustix::process::getpid())).map_err(|e| {
            SandboxError::Prerequisite(format!(
                "cannot become a child subreaper (prctl PR_SET_CHILD_SUBREAPER): {e}"
            ))
        })?;
        self.runsc.detach = true;
        Ok(())
    }

    /// Everything a start needs from the host, each missing piece with how to get it. Once
    /// everything was there, later calls check nothing (each check spawns a process).
    pub fn check_prerequisites(&self) -> Result<(), SandboxError> {
        if self.prerequisites.get().is_some() {
            return Ok(());
        }
        let mut missing = Vec::new();
        if !available(&self.config.runsc, "--version") {
            missing.push(format!(
                "runsc (gVisor) is not installed at {:?}: run `apt-get install runsc` (make deps \
                 does), or set [sandbox] runsc",
                self.config.runsc
            ));
        }
        if !available("nft", "--version") {
            missing.push("nft is not installed: run `apt-get install nftables`".into());
        }
        if !available("ip", "-V") || !available("nsenter", "--version") {
            missing
                .push("ip or nsenter is missing: run `apt-get install iproute2 util-linux`".into());
        }
        if !self.config.agent.is_file() {
            missing.push(format!(
                "the sandbox agent {} does not exist: build it (`cargo build -p \
                 cordon-sandbox-agent`) or set [sandbox] agent",
                self.config.agent.display()
            ));
        }
        if self.config.workspace_max_mb > 0
            && (!available("mkfs.ext4", "-V") || !available("mount", "--version"))
        {
            missing.push(
                "mkfs.ext4 or mount is missing (workspace quotas are loop-mounted ext4 \
                 filesystems): run `apt-get install e2fsprogs mount`, or set [sandbox] \
                 workspace_max_mb = 0 for no quota"
                    .into(),
            );
        }
        if !self.config.ca_cert.is_file() {
            missing.push(format!(
                "the interception CA {} does not exist yet: start cordon-proxy once with this \
                 cordon.toml (it creates the CA)",
                self.config.ca_cert.display()
            ));
        }
        if missing.is_empty() {
            let _ = self.prerequisites.set(());
            Ok(())
        } else {
            Err(SandboxError::Prerequisite(missing.join("\n")))
        }
    }

    fn names(&self, record: &SessionRecord) -> SessionNames {
        SessionNames::new(&self.config, &record.sandbox_id, record.slot)
    }

    fn session_dir(&self, id: &str) -> PathBuf {
        self.config.state_dir.join("sessions").join(id)
    }

    /// The proxy's admin API, as this runtime talks to it.
    pub fn proxy_admin(&self) -> &ProxyAdmin {
        &self.proxy
    }

    /// The workspaces this runtime keeps.
    pub fn workspaces(&self) -> &Workspaces {
        &self.workspaces
    }

    /// The image `name` (default: `[sandbox] image`), or the host's root when
    /// `danger_host_rootfs` is set.
    fn choose_root(&self, name: Option<&str>) -> Result<RootChoice, SandboxError> {
        if self.config.danger_host_rootfs {
            tracing::warn!(
                "[sandbox] danger_host_rootfs is set: this sandbox's root is the host's own /, \
                 with a deny-list of hidden paths; every host file outside it is readable inside"
            );
            return Ok(RootChoice::Host);
        }
        let store = crate::image::ImageStore::open(&self.config.images_dir)?;
        let image = store.get(name.unwrap_or(&self.config.image))?;
        let root = RootChoice::Image(Box::new(image));
        self.agent_for(&root)?;
        Ok(root)
    }

    /// The agent binary a sandbox on `root` runs: `[sandbox] agent` where it can run, else
    /// the statically linked one. The dynamically linked agent is preferred where both can:
    /// inside gVisor each sandbox holds its own copy of the agent's pages, and the static
    /// build measured 16.6 MiB idle PSS per sandbox against 12.7 MiB for the dynamic one
    /// (`cordon-bench sandboxes`, same run, 2026-12-04).
    fn agent_for(&self, root: &RootChoice) -> Result<PathBuf, SandboxError> {
        let RootChoice::Image(image) = root else {
            return Ok(self.config.agent.clone());
        };
        if bundle::has_glibc(&image.root) || !bundle::is_dynamic(&self.config.agent) {
            return Ok(self.config.agent.clone());
        }
        match &self.config.static_agent {
            Some(agent) if agent.is_file() => Ok(agent.clone()),
            _ => Err(SandboxError::Prerequisite(format!(
                "image {:?} has no glibc (no libc.so.6 under /lib/x86_64-linux-gnu or \
                 /usr/lib/x86_64-linux-gnu: a musl image such as Alpine?), and the sandbox \
                 agent {} is linked against glibc, so it cannot run there. Build the \
                 statically linked agent, which runs on every image (`make build` does, and \
                 the controller finds it when [sandbox] agent is not set; or set [sandbox] \
                 static_agent), or use a glibc image (Debian, Ubuntu, the default one)",
                image.name,
                self.config.agent.display()
            ))),
        }
    }

    /// Rewrites the firewall for the live sessions (warm ones included) as recorded now.
    async fn apply_firewall(&self) -> Result<(), SandboxError> {
        let applier = self.applier.get_or_init(|| {
            let (store, config) = (self.store.clone(), self.config.clone());
            Applier::spawn(
                self.firewall.clone(),
                Arc::new(move || {
                    Ok(store
                        .live()
                        .map_err(|e| e.to_string())?
                        .iter()
                        .map(|r| {
                            let n = SessionNames::new(&config, &r.sandbox_id, r.slot);
                            (n.host_if, n.sandbox_addr)
                        })
                        .collect())
                }),
            )
        });
        applier.apply().await.map_err(SandboxError::Firewall)
    }

    /// Tells the proxy that `address` is session `id`'s.
    async fn register(&self, id: &str, address: Ipv4Addr) -> Result<(), SandboxError> {
        self.proxy
            .register(id, address.into())
            .await
            .map_err(SandboxError::Proxy)
    }

    /// Registers session `id`'s running sandbox with the proxy again (idempotent): a
    /// controller that resumes a session after a crash cannot know whether the registration
    /// of its last start or claim reached the proxy.
    pub async fn reregister(&self, id: &str) -> Result<(), SandboxError> {
        let _session = self.locks.lock(id).await;
        let record = self
            .store
            .get(id)?
            .ok_or_else(|| SandboxError::NotFound(id.to_string()))?;
        if record.state != SessionState::Running || record.warm {
            return Err(SandboxError::NotRunning {
                id: id.to_string(),
                state: record.state.as_str(),
            });
        }
        self.register(id, self.names(&record).sandbox_addr).await
    }

    /// Starts a sandbox for session `id` on image `image` (default: `[sandbox] image`) and
    /// waits until its agent answers: a warm one from the pool when there is one for the image
    /// and the session has no workspace yet, else a new one. The session's workspace, if an
    /// earlier sandbox of the session left one, is mounted again.
    pub async fn start(&self, id: &str, image: Option<&str>) -> Result<Started, SandboxError> {
        let started = Instant::now();
        if !valid_session_id(id) {
            return Err(SandboxError::InvalidId(id.to_string()));
        }
        let _whole = self.whole.read().await;
        let _session = self.locks.lock(id).await;
        self.check_prerequisites()?;
        let root = self.choose_root(image)?;
        if let Some(claimed) = self.claim_warm(id, &root, started).await? {
            return Ok(claimed);
        }
        self.start_sandbox(id, &root, false, &[], started).await
    }

    /// Starts a sandbox for one custom tool call on image `image` (default: `[sandbox] image`)
    /// with the tool's `mounts`, and waits until its agent answers. Its id is a new tool id
    /// (`.tool...`); it has an empty in-memory `/workspace` and is unknown to the proxy
    /// until the caller registers it (tools/run.rs). Stop it with [`Runtime::stop`]: nothing
    /// of it stays, not even its record.
    pub async fn start_tool(
        &self,
        image: Option<&str>,
        mounts: &[HostMount],
    ) -> Result<Started, SandboxError> {
        let started = Instant::now();
        let id = new_tool_id();
        let _whole = self.whole.read().await;
        let _sandbox = self.locks.lock(&id).await;
        self.check_prerequisites()?;
        let root = self.choose_root(image)?;
        self.start_sandbox(&id, &root, false, mounts, started).await
    }

    /// Starts a new sandbox under `id` (a session id, or a pool id when `warm`). The caller
    /// holds `id`'s lock.
    async fn start_sandbox(
        &self,
        id: &str,
        root: &RootChoice,
        warm: bool,
        mounts: &[HostMount],
        started: Instant,
    ) -> Result<Started, SandboxError> {
        let token: String = rand::rng()
            .sample_iter(Alphanumeric)
            .take(40)
            .map(char::from)
            .collect();
        let record = self
            .store
            .claim(id, slot_count(self.config.address_pool), &token, warm)?;
        let names = self.names(&record);
        let image_name = match root {
            RootChoice::Image(image) => {
                self.store.set_image(id, &image.name, &image.digest)?;
                image.name.clone()
            }
            RootChoice::Host => {
                self.store.set_image(id, "host", "host")?;
                "host".to_string()
            }
        };
        match self.bring_up(&record, &names, root, mounts).await {
            Ok(support) => {
                self.store.set_running(id, support.network.as_str())?;
                tracing::info!(
                    session = id,
                    address = %names.sandbox_addr,
                    network = support.network.as_str(),
                    cgroups = support.cgroups,
                    image = %image_name,
                    warm,
                    "sandbox started"
                );
                Ok(Started {
                    id: id.to_string(),
                    sandbox_address: names.sandbox_addr,
                    agent: SocketAddr::from((names.sandbox_addr, self.config.agent_port)),
                    support,
                    image: image_name,
                    warm: false,
                    elapsed: started.elapsed(),
                })
            }
            Err(e) => {
                // Clean up whatever happens to the record: a database error must not leave a
                // half-made sandbox behind.
                if let Err(teardown) = self.tear_down(&record, &names).await {
                    tracing::error!(session = id, error = %teardown, "cleanup after a failed start");
                }
                self.record_end(&record, Some(&e.to_string())).await;
                if let Err(firewall) = self.apply_firewall().await {
                    tracing::error!(session = id, error = %firewall, "firewall after a failed start");
                }
                Err(e)
            }
        }
    }

    /// What runsc supports on this host: probed (in `names`' namespace) by the first start,
    /// and by nobody after it.
    async fn host_support(
        &self,
        names: &SessionNames,
        probe_dir: PathBuf,
        root: PathBuf,
    ) -> Result<HostSupport, SandboxError> {
        let support = self
            .support
            .get_or_try_init(|| {
                let (runsc, config, names) =
                    (self.runsc.clone(), self.config.clone(), names.clone());
                async move {
                    blocking(move || {
                        runsc.probe(
                            &names.netns_path(),
                            &|own_netns| {
                                bundle::write_probe(&probe_dir, &config, own_netns, &root)
                                    .map_err(|e| e.to_string())
                            },
                            &config.state_dir.join("runsc-support"),
                            &root.join(bundle::OVERLAY_MARKER),
                        )
                    })
                    .await
                    .map_err(SandboxError::Runsc)
                }
            })
            .await?;
        Ok(*support)
    }

    async fn bring_up(
        &self,
        record: &SessionRecord,
        names: &SessionNames,
        root: &RootChoice,
        mounts: &[HostMount],
    ) -> Result<HostSupport, SandboxError> {
        let made = names.clone();
        blocking(move || network::create(&made)).await?;
        self.apply_firewall().await?;
        // A warm sandbox serves no session yet: the proxy learns its address when one claims
        // it, and until then treats it as no session's. A tool call's sandbox is registered
        // by its caller, under the tool's identity.
        let tool = is_tool_id(&record.id);
        if !record.warm && !tool {
            self.register(&record.id, names.sandbox_addr).await?;
        }
        // A tool call keeps nothing: its /workspace is in memory.
        let workspace = if tool {
            None
        } else {
            let key = self
                .store
                .workspace_dir(&record.id)?
                .unwrap_or_else(|| record.sandbox_id.clone());
            let workspaces = self.workspaces.clone();
            let attach_key = key.clone();
            let workspace = blocking(move || workspaces.attach(&attach_key)).await?;
            self.store.workspace_used(&record.id, &key)?;
            Some(workspace)
        };
        let dir = self.session_dir(&record.sandbox_id);
        let support = self
            .host_support(names, dir.join("probe"), root.path())
            .await?;
        let bundle_dir = dir.join("bundle");
        let log = dir.join("sandbox.log");
        let debug_log = dir.join("runsc-debug");
        let (config, runsc, names_for_spawn) =
            (self.config.clone(), self.runsc.clone(), names.clone());
        let (token, root_path) = (record.token.clone(), root.path());
        let agent = self.agent_for(root)?;
        let mounts = mounts.to_vec();
        let (image_env, mask_host) = match root {
            RootChoice::Image(image) => (image.env.clone(), false),
            RootChoice::Host => (Vec::new(), true),
        };
        let (bundle_at, log_at, debug_at) = (bundle_dir.clone(), log.clone(), debug_log.clone());
        let mut child = blocking(move || -> Result<std::process::Child, SandboxError> {
            bundle::write(
                &bundle_at,
                &bundle::BundleInput {
                    config: &config,
                    names: &names_for_spawn,
                    token: &token,
                    workspace: workspace.as_deref(),
                    mounts: &mounts,
                    own_network_namespace: support.network == runsc::NetworkMode::Sandbox,
                    root: &root_path,
                    image_env: &image_env,
                    mask_host,
                    agent: &agent,
                },
            )?;
            std::fs::create_dir_all(&debug_at).map_err(io(&debug_at))?;
            Ok(runsc.spawn(
                &names_for_spawn.netns_path(),
                &bundle_at,
                &names_for_spawn.container,
                support,
                &log_at,
                &debug_at,
            )?)
        })
        .await?;
        self.wait_for_agent(names, &mut child, &log, &debug_log)
            .await?;
        Ok(support)
    }

    async fn wait_for_agent(
        &self,
        names: &SessionNames,
        runsc: &mut std::process::Child,
        log: &std::path::Path,
        debug_log: &std::path::Path,
    ) -> Result<(), SandboxError> {
        let address = SocketAddr::from((names.sandbox_addr, self.config.agent_port));
        let deadline = Instant::now() + self.config.start_timeout;
        let mut last = String::from("no answer yet");
        // What runsc and the sandbox wrote, after `what` went wrong.
        let ended = |what: &str| {
            let output = std::fs::read_to_string(log).unwrap_or_default();
            let reason = Runsc::failure_reason(debug_log)
                .map(|r| format!("; runsc's log says: {r}"))
                .unwrap_or_default();
            SandboxError::Runsc(format!("{what}: {}{reason}", output.trim()))
        };
        // `runsc run --detach` exits once the container started: success is not a failure.
        let mut detached = false;
        let mut checks = 0u32;
        while Instant::now() < deadline {
            if !detached && let Ok(Some(status)) = runsc.try_wait() {
                if status.success() {
                    detached = true;
                    continue;
                }
                return Err(ended(&format!(
                    "runsc exited ({status}) before the sandbox agent answered"
                )));
            }
            match self.agent_health(address).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            // Detached, runsc no longer says when the container ends (the agent could not
            // start): ask it about once a second, rather than wait out the whole timeout. Not
            // more often: each `runsc state` is a process start competing with the boot.
            checks += 1;
            if detached && checks.is_multiple_of(100) && !self.container_running(names).await {
                return Err(ended("the sandbox stopped before its agent answered"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(SandboxError::AgentTimeout {
            timeout: self.config.start_timeout,
            address,
            last,
        })
    }

    /// One health check of the agent at `address`, answered within half a second.
    async fn agent_health(&self, address: SocketAddr) -> Result<(), String> {
        let url = format!("http://{address}/healthz");
        match tokio::time::timeout(
            Duration::from_millis(500),
            self.http.call(http::Method::GET, &url, None, None),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".into()),
        }
    }

    /// Stops session `id` and removes everything it had.
    pub async fn stop(&self, id: &str) -> Result<(), SandboxError> {
        let _whole = self.whole.read().await;
        let _session = self.locks.lock(id).await;
        self.stop_locked(id).await
    }

    /// [`Runtime::stop`], for a caller that holds `id`'s lock or every lock.
    async fn stop_locked(&self, id: &str) -> Result<(), SandboxError> {
        let record = self
            .store
            .get(id)?
            .ok_or_else(|| SandboxError::NotFound(id.to_string()))?;
        let names = self.names(&record);
        if !record.state.is_live() {
            // Its slot may belong to a live session now: the container and host interface are
            // named by slot, so only what is named by this session's id is looked at.
            return self.tear_down_by_id(&record, &names).await;
        }
        let result = self.tear_down(&record, &names).await;
        let failure = result.as_ref().err().map(|e| e.to_string());
        self.record_end(&record, failure.as_deref()).await;
        // Rules for what is left live, whatever happened above.
        self.apply_firewall().await?;
        result
    }

    /// Records how a sandbox ended. A warm sandbox no session claimed leaves nothing: its
    /// record and its (empty) workspace go.
    async fn record_end(&self, record: &SessionRecord, failure: Option<&str>) {
        let recorded = if is_tool_id(&record.id) {
            if let Some(why) = failure {
                tracing::warn!(sandbox = %record.id, error = why, "a tool call's sandbox failed");
            }
            self.store.forget_session(&record.id)
        } else if is_warm_id(&record.id) {
            let workspaces = self.workspaces.clone();
            let key = record.sandbox_id.clone();
            if let Err(e) = blocking(move || workspaces.remove(&key)).await {
                tracing::error!(sandbox = %record.id, error = %e, "removing a warm sandbox's workspace");
            }
            self.store
                .forget_workspace(&record.id)
                .and_then(|()| self.store.forget_session(&record.id))
        } else {
            match failure {
                None => self
                    .store
                    .set_state(&record.id, SessionState::Stopped, None),
                Some(why) => self
                    .store
                    .set_state(&record.id, SessionState::Failed, Some(why)),
            }
        };
        if let Err(e) = recorded {
            tracing::error!(session = %record.id, error = %e, "recording a sandbox's end");
        }
    }

    /// Stopping a session that is already stopped or failed: removes only what carries its id
    /// (a namespace, the proxy registration, the workspace, its files), never what is named by
    /// the slot it once held.
    async fn tear_down_by_id(
        &self,
        record: &SessionRecord,
        names: &SessionNames,
    ) -> Result<(), SandboxError> {
        let mut problems = Vec::new();
        let netns = names.clone();
        if let Err(e) = blocking(move || {
            if netns.netns_path().exists() {
                crate::command::run("ip", ["netns", "delete", &netns.netns]).map(|_| ())
            } else {
                Ok(())
            }
        })
        .await
        {
            problems.push(e.to_string());
        }
        self.remove_registration_and_files(record, &mut problems)
            .await;
        teardown_result(&record.id, problems)
    }

    /// Removes a session's resources, in an order that never leaves it a way out; keeps going
    /// past failures and reports them all.
    async fn tear_down(
        &self,
        record: &SessionRecord,
        names: &SessionNames,
    ) -> Result<(), SandboxError> {
        let (runsc, names_owned) = (self.runsc.clone(), names.clone());
        let mut problems = blocking(move || {
            let mut problems = Vec::new();
            if let Err(e) = runsc.remove(&names_owned.container, Some(&names_owned.netns_path())) {
                problems.push(e.to_string());
            }
            if let Err(e) = network::delete(&names_owned) {
                problems.push(e.to_string());
            }
            problems
        })
        .await;
        self.remove_registration_and_files(record, &mut problems)
            .await;
        teardown_result(&record.id, problems)
    }

    async fn remove_registration_and_files(
        &self,
        record: &SessionRecord,
        problems: &mut Vec<String>,
    ) {
        if is_tool_id(&record.id) {
            // A tool call's sandbox is registered under its tool's identity, by its caller; if
            // the caller could not remove that (a crash, a failed DELETE), it goes here, so
            // the address is free for the next sandbox that gets it.
            let address = std::net::IpAddr::V4(self.names(record).sandbox_addr);
            match self.proxy.sessions().await {
                Ok(registered) => {
                    for r in registered.into_iter().filter(|r| r.source == address) {
                        if let Err(e) = self.proxy.unregister_source(&r.id, address).await {
                            problems.push(format!("proxy registration {}: {e}", r.id));
                        }
                    }
                }
                Err(e) => problems.push(format!("proxy registrations: {e}")),
            }
        } else if !record.warm
            && let Err(e) = self.proxy.unregister(&record.id).await
        {
            problems.push(format!("proxy registration: {e}"));
        }
        // The workspace stays: the session's next sandbox mounts it again. It goes when the
        // session ends ([`Runtime::end`]) and its retention has passed.
        let dir = self.session_dir(&record.sandbox_id);
        if let Err(e) = blocking(move || {
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))
            } else {
                Ok(())
            }
        })
        .await
        {
            problems.push(e);
        }
    }

    /// Ends session `id`: stops its sandbox if it has one, and starts its workspace's
    /// retention clock (`workspace_retention_hours`; with 0 the workspace goes at once).
    pub async fn end(&self, id: &str) -> Result<(), SandboxError> {
        let stopped = {
            let _whole = self.whole.read().await;
            let _session = self.locks.lock(id).await;
            let stopped = match self.store.get(id)? {
                Some(record) if record.state.is_live() => self.stop_locked(id).await,
                _ => Ok(()),
            };
            self.store.workspace_ended(id)?;
            stopped
        };
        self.sweep_workspaces().await;
        stopped
    }

    /// Every recorded session.
    pub fn list(&self) -> Result<Vec<SessionView>, SandboxError> {
        list_sessions(&self.config, &self.store)
    }
}

/// `Ok` when nothing went wrong, else every problem at once.
fn teardown_result(id: &str, problems: Vec<String>) -> Result<(), SandboxError> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(SandboxError::Teardown {
            id: id.to_string(),
            problems,
        })
    }
}

/// Every recorded session, live first; reads the records without the controller lock.
pub fn list_sessions(
    config: &SandboxConfig,
    store: &Store,
) -> Result<Vec<SessionView>, SandboxError> {
    Ok(store
        .all()?
        .into_iter()
        .map(|r| SessionView {
            address: SessionNames::new(config, &r.sandbox_id, r.slot).sandbox_addr,
            state: if r.warm {
                "warm"
            } else if is_tool_id(&r.id) && r.state.is_live() {
                "tool"
            } else {
                r.state.as_str()
            },
            id: r.id,
            network_mode: r.network_mode,
            image: r.image,
            created_at: r.created_at,
            updated_at: r.updated_at,
            error: r.error,
        })
        .collect())
}

/// The live sessions running on the image whose manifest digest is `digest`; the warm pool's
/// sandboxes on it are named as such.
pub fn sessions_on_image(config: &SandboxConfig, digest: &str) -> Result<Vec<String>, StoreError> {
    let store = Store::open(&config.state_dir.join("state.db"))?;
    Ok(store
        .live()?
        .into_iter()
        .filter(|r| r.image_digest.as_deref() == Some(digest))
        .map(|r| {
            if r.warm {
                format!(
                    "{} (a warm sandbox: `cordon-controller sandbox stop --session {}`, and set \
                     [sandbox] warm = 0 or another image before `serve` refills the pool)",
                    r.id, r.id
                )
            } else {
                r.id
            }
        })
        .collect())
}

/// The images `[sandbox] image` and `[sandbox.agent_images]` name that the store does not
/// hold, each as a configuration error naming its key and how to fix it.
pub fn missing_images(config: &SandboxConfig) -> Vec<String> {
    if config.danger_host_rootfs {
        return Vec::new();
    }
    let store = match crate::image::ImageStore::open(&config.images_dir) {
        Ok(store) => store,
        Err(e) => return vec![format!("sandbox.images_dir: {e}")],
    };
    config
        .images()
        .into_iter()
        .filter_map(|(key, name)| match store.get(name) {
            Ok(_) => None,
            Err(e) => Some(format!("{key} = {name:?}: {e}")),
        })
        .collect()
}

/// Where session `id`'s agent listens, and its token. Reads the records without the controller
/// lock, so commands can run in one sandbox while another starts.
pub fn agent_endpoint(
    config: &SandboxConfig,
    id: &str,
) -> Result<(SocketAddr, String), SandboxError> {
    let store = Store::open(&config.state_dir.join("state.db"))?;
    let record = store
        .get(id)?
        .ok_or_else(|| SandboxError::NotFound(id.to_string()))?;
    if record.state != SessionState::Running {
        return Err(SandboxError::NotRunning {
            id: id.to_string(),
            state: record.state.as_str(),
        });
    }
    let names = SessionNames::new(config, &record.sandbox_id, record.slot);
    Ok((
        SocketAddr::from((names.sandbox_addr, config.agent_port)),
        record.token,
    ))
}

//! The sandbox runtime: for each session a gVisor sandbox in its own network namespace whose
//! only way out is the proxy (and its DNS stub). Start, stop, list, reconcile; the library API
//! the CLI and the CMA integration call.
//!
//! Start: record (slot) -> netns + veth -> firewall -> proxy registration -> workspace ->
//! bundle -> runsc -> wait for the agent. A failure undoes what was done, in reverse.
//! Stop: container -> netns -> record -> firewall -> registration -> workspace, an order in
//! which the sandbox never has a way out the firewall does not guard: its processes are gone
//! before its interface, and its interface before its rules.

pub mod bundle;
pub mod firewall;
pub mod names;
pub mod network;
pub mod runsc;
pub mod workspace;

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::Rng;
use rand::distr::Alphanumeric;

use self::firewall::Firewall;
use self::names::{SessionNames, slot_count, valid_session_id};
use self::runsc::{HostSupport, Runsc};
use self::workspace::{WorkspaceError, Workspaces};
use crate::command::{CommandError, available};
use crate::config::SandboxConfig;
use crate::http::{HttpClient, HttpError};
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
    #[error(
        "the proxy's admin API refused or did not answer: {0}; is cordon-proxy running with this cordon.toml?"
    )]
    Proxy(HttpError),
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

/// What `reconcile` found and did.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// Host resources with the Cordon prefix that no live session owned: removed.
    pub removed: Vec<String>,
    /// Recorded live sessions whose resources had vanished: marked failed.
    pub failed: Vec<String>,
    /// Removals that failed (the rest went ahead).
    pub problems: Vec<String>,
}

/// One row of `list`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionView {
    pub id: String,
    pub state: &'static str,
    pub address: Ipv4Addr,
    pub network_mode: Option<String>,
    pub image: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub error: Option<String>,
}

/// The runtime, holding the controller's lock (one mutating controller at a time per state
/// directory) for as long as it lives.
#[derive(Debug)]
pub struct Runtime {
    config: SandboxConfig,
    store: Store,
    http: HttpClient,
    runsc: Runsc,
    firewall: Firewall,
    workspaces: Workspaces,
    _lock: File,
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
        let store = Store::open(&dir.join("state.db"))?;
        Ok(Self {
            runsc: Runsc {
                binary: config.runsc.clone(),
                root: dir.join("runsc"),
            },
            firewall: Firewall {
                table: config.name_prefix.clone(),
                interface_prefix: config.interface_prefix.clone(),
                transparent_port: config.transparent_port,
                dns_port: config.dns_port,
            },
            http: HttpClient::default(),
            workspaces: Workspaces {
                root: config.workspace_root.clone(),
                max_mb: config.workspace_max_mb,
            },
            store,
            config,
            _lock: lock,
        })
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// Everything a start needs from the host, each missing piece with how to get it.
    pub fn check_prerequisites(&self) -> Result<(), SandboxError> {
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
            Ok(())
        } else {
            Err(SandboxError::Prerequisite(missing.join("\n")))
        }
    }

    fn names(&self, record: &SessionRecord) -> SessionNames {
        SessionNames::new(&self.config, &record.id, record.slot)
    }

    fn session_dir(&self, id: &str) -> PathBuf {
        self.config.state_dir.join("sessions").join(id)
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
        Ok(RootChoice::Image(Box::new(
            store.get(name.unwrap_or(&self.config.image))?,
        )))
    }

    /// Rewrites the firewall for the live sessions.
    fn apply_firewall(&self) -> Result<(), SandboxError> {
        let sessions: Vec<(String, Ipv4Addr)> = self
            .store
            .live()?
            .iter()
            .map(|r| {
                let n = self.names(r);
                (n.host_if, n.sandbox_addr)
            })
            .collect();
        self.firewall.apply(&sessions)?;
        Ok(())
    }

    fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.config.admin)
    }

    /// Starts a sandbox for session `id` on image `image` (default: `[sandbox] image`) and
    /// waits until its agent answers. The session's workspace, if an earlier sandbox of the
    /// session left one, is mounted again.
    pub async fn start(&mut self, id: &str, image: Option<&str>) -> Result<Started, SandboxError> {
        let started = Instant::now();
        if !valid_session_id(id) {
            return Err(SandboxError::InvalidId(id.to_string()));
        }
        self.check_prerequisites()?;
        let root = self.choose_root(image)?;
        let token: String = rand::rng()
            .sample_iter(Alphanumeric)
            .take(40)
            .map(char::from)
            .collect();
        let record = self
            .store
            .claim(id, slot_count(self.config.address_pool), &token)?;
        let names = self.names(&record);
        let image_name = match &root {
            RootChoice::Image(image) => {
                self.store.set_image(id, &image.name, &image.digest)?;
                image.name.clone()
            }
            RootChoice::Host => {
                self.store.set_image(id, "host", "host")?;
                "host".to_string()
            }
        };
        match self.bring_up(&record, &names, &root).await {
            Ok(support) => {
                self.store.set_running(id, support.network.as_str())?;
                tracing::info!(
                    session = id,
                    address = %names.sandbox_addr,
                    network = support.network.as_str(),
                    cgroups = support.cgroups,
                    image = %image_name,
                    "sandbox started"
                );
                Ok(Started {
                    id: id.to_string(),
                    sandbox_address: names.sandbox_addr,
                    agent: SocketAddr::from((names.sandbox_addr, self.config.agent_port)),
                    support,
                    image: image_name,
                    elapsed: started.elapsed(),
                })
            }
            Err(e) => {
                // Clean up whatever happens to the record: a database error must not leave a
                // half-made sandbox behind.
                if let Err(teardown) = self.tear_down(&record, &names).await {
                    tracing::error!(session = id, error = %teardown, "cleanup after a failed start");
                }
                if let Err(store) =
                    self.store
                        .set_state(id, SessionState::Failed, Some(&e.to_string()))
                {
                    tracing::error!(session = id, error = %store, "recording a failed start");
                }
                if let Err(firewall) = self.apply_firewall() {
                    tracing::error!(session = id, error = %firewall, "firewall after a failed start");
                }
                Err(e)
            }
        }
    }

    async fn bring_up(
        &self,
        record: &SessionRecord,
        names: &SessionNames,
        root: &RootChoice,
    ) -> Result<HostSupport, SandboxError> {
        network::create(names)?;
        self.apply_firewall()?;
        self.http
            .call(
                http::Method::PUT,
                &self.admin_url(&format!("/sessions/{}", record.id)),
                None,
                Some(serde_json::json!({"source": names.sandbox_addr}).to_string()),
            )
            .await
            .map_err(SandboxError::Proxy)?;
        let workspace = self.workspaces.attach(&record.id)?;
        self.store.workspace_used(&record.id)?;
        let dir = self.session_dir(&record.id);
        let config = &self.config;
        let probe_dir = dir.join("probe");
        let root_path = root.path();
        let support = self
            .runsc
            .probe(
                &names.netns_path(),
                &|own_netns| {
                    bundle::write_probe(&probe_dir, config, own_netns, &root_path)
                        .map_err(|e| e.to_string())
                },
                &config.state_dir.join("runsc-support"),
                &root_path.join(bundle::OVERLAY_MARKER),
            )
            .map_err(SandboxError::Runsc)?;
        let bundle_dir = dir.join("bundle");
        bundle::write(
            &bundle_dir,
            &bundle::BundleInput {
                config,
                names,
                token: &record.token,
                workspace: &workspace,
                own_network_namespace: support.network == runsc::NetworkMode::Sandbox,
                root: &root_path,
                image_env: match root {
                    RootChoice::Image(image) => &image.env,
                    RootChoice::Host => &[],
                },
                mask_host: matches!(root, RootChoice::Host),
            },
        )?;
        let log = dir.join("sandbox.log");
        let debug_log = dir.join("runsc-debug");
        std::fs::create_dir_all(&debug_log).map_err(io(&debug_log))?;
        let mut child = self.runsc.spawn(
            &names.netns_path(),
            &bundle_dir,
            &names.container,
            support,
            &log,
            &debug_log,
        )?;
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
        let url = format!("http://{address}/healthz");
        let deadline = Instant::now() + self.config.start_timeout;
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            if let Ok(Some(status)) = runsc.try_wait() {
                let output = std::fs::read_to_string(log).unwrap_or_default();
                let reason = Runsc::failure_reason(debug_log)
                    .map(|r| format!("; runsc's log says: {r}"))
                    .unwrap_or_default();
                return Err(SandboxError::Runsc(format!(
                    "runsc exited ({status}) before the sandbox agent answered: {}{reason}",
                    output.trim()
                )));
            }
            match tokio::time::timeout(
                Duration::from_millis(500),
                self.http.call(http::Method::GET, &url, None, None),
            )
            .await
            {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "timed out".into(),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(SandboxError::AgentTimeout {
            timeout: self.config.start_timeout,
            address,
            last,
        })
    }

    /// Stops session `id` and removes everything it had.
    pub async fn stop(&mut self, id: &str) -> Result<(), SandboxError> {
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
        match &result {
            Ok(()) => self.store.set_state(id, SessionState::Stopped, None)?,
            Err(e) => self
                .store
                .set_state(id, SessionState::Failed, Some(&e.to_string()))?,
        }
        // Rules for what is left live, whatever happened above.
        self.apply_firewall()?;
        result
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
        if names.netns_path().exists()
            && let Err(e) = crate::command::run("ip", ["netns", "delete", &names.netns])
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
        let mut problems = Vec::new();
        if let Err(e) = self
            .runsc
            .remove(&names.container, Some(&names.netns_path()))
        {
            problems.push(e.to_string());
        }
        if let Err(e) = network::delete(names) {
            problems.push(e.to_string());
        }
        self.remove_registration_and_files(record, &mut problems)
            .await;
        teardown_result(&record.id, problems)
    }

    async fn remove_registration_and_files(
        &self,
        record: &SessionRecord,
        problems: &mut Vec<String>,
    ) {
        match self
            .http
            .call(
                http::Method::DELETE,
                &self.admin_url(&format!("/sessions/{}", record.id)),
                None,
                None,
            )
            .await
        {
            Ok(_) | Err(HttpError::Status { status: 404, .. }) => {}
            Err(e) => problems.push(format!("proxy registration: {e}")),
        }
        // The workspace stays: the session's next sandbox mounts it again. It goes when the
        // session ends ([`Runtime::end`]) and its retention has passed.
        let dir = self.session_dir(&record.id);
        if dir.exists()
            && let Err(e) = std::fs::remove_dir_all(&dir)
        {
            problems.push(format!("{}: {e}", dir.display()));
        }
    }

    /// Ends session `id`: stops its sandbox if it has one, and starts its workspace's
    /// retention clock (`workspace_retention_hours`; with 0 the workspace goes at once).
    pub async fn end(&mut self, id: &str) -> Result<(), SandboxError> {
        let stopped = match self.store.get(id)? {
            Some(record) if record.state.is_live() => self.stop(id).await,
            _ => Ok(()),
        };
        self.store.workspace_ended(id)?;
        self.sweep_workspaces();
        stopped
    }

    /// Removes the workspaces whose session ended more than `workspace_retention_hours` ago,
    /// and unmounts those of ended sessions. Workspaces found on disk with no record (an older
    /// controller's) are recorded as ended now. Returns the sessions whose workspace went.
    pub fn sweep_workspaces(&self) -> Vec<String> {
        let mut removed = Vec::new();
        let recorded = match self.store.workspaces() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the workspace records");
                return removed;
            }
        };
        for id in self.workspaces.list() {
            if !recorded.iter().any(|r| r.session_id == id)
                && let Err(e) = self.store.workspace_ended(&id)
            {
                tracing::error!(session = %id, error = %e, "recording a found workspace");
            }
        }
        let live: Vec<String> = self
            .store
            .live()
            .map(|l| l.into_iter().map(|r| r.id).collect())
            .unwrap_or_default();
        let now = time::OffsetDateTime::now_utc();
        for record in self.store.workspaces().unwrap_or_default() {
            let Some(ended) = record.ended_at.as_deref().and_then(|e| {
                time::OffsetDateTime::parse(e, &time::format_description::well_known::Rfc3339).ok()
            }) else {
                continue;
            };
            if live.contains(&record.session_id) {
                continue;
            }
            let age = (now - ended).max(time::Duration::ZERO);
            let result = if age >= self.config.workspace_retention {
                self.workspaces.remove(&record.session_id).map(|()| {
                    let _ = self.store.forget_workspace(&record.session_id);
                    removed.push(record.session_id.clone());
                })
            } else {
                // Kept for retention, but not mounted: nothing runs in it any more.
                self.workspaces.detach(&record.session_id)
            };
            if let Err(e) = result {
                tracing::error!(session = %record.session_id, error = %e, "workspace sweep");
            }
        }
        removed
    }

    /// Every recorded session.
    pub fn list(&self) -> Result<Vec<SessionView>, SandboxError> {
        list_sessions(&self.config, &self.store)
    }

    /// Makes the host match the records: removes prefixed resources no live session owns,
    /// and marks failed (and cleans up) live sessions whose sandbox is gone.
    pub async fn reconcile(&mut self) -> Result<Reconciled, SandboxError> {
        let mut report = Reconciled::default();
        for record in self.store.live()? {
            let names = self.names(&record);
            // One failed `runsc state` is not a vanished sandbox: ask again before tearing a
            // session down.
            let mut running = self.runsc.running(&names.container, &names.netns_path());
            if !running && names.netns_path().exists() && self.runsc.exists(&names.container) {
                tokio::time::sleep(Duration::from_millis(200)).await;
                running = self.runsc.running(&names.container, &names.netns_path());
            }
            if record.state == SessionState::Starting || !running {
                let why = if record.state == SessionState::Starting {
                    "the controller stopped while the sandbox was starting"
                } else {
                    "its sandbox or network namespace disappeared"
                };
                self.store
                    .set_state(&record.id, SessionState::Failed, Some(why))?;
                let _ = self.tear_down(&record, &names).await;
                report.failed.push(record.id);
            }
        }
        let live_records = self.store.live()?;
        let live: Vec<SessionNames> = live_records.iter().map(|r| self.names(r)).collect();
        let prefix = format!("{}-", self.config.name_prefix);
        // Every removal is tried; one that fails is reported, and the rest still happen.
        let mut note = |what: String, result: Result<(), CommandError>| match result {
            Ok(()) => report.removed.push(what),
            Err(e) => report.problems.push(format!("{what}: {e}")),
        };
        for (container, _) in self.runsc.list() {
            if container.starts_with(&prefix) && !live.iter().any(|n| n.container == container) {
                note(
                    format!("container {container}"),
                    self.runsc.remove(&container, None),
                );
            }
        }
        for netns in network::list(&self.config.name_prefix) {
            if !live.iter().any(|n| n.netns == netns) {
                note(
                    format!("netns {netns}"),
                    crate::command::run("ip", ["netns", "delete", &netns]).map(|_| ()),
                );
            }
        }
        for iface in network::list_host_interfaces(&self.config.interface_prefix) {
            if !live.iter().any(|n| n.host_if == iface) {
                note(
                    format!("interface {iface}"),
                    crate::command::run("ip", ["link", "delete", &iface]).map(|_| ()),
                );
            }
        }
        self.apply_firewall()?;
        for id in self.sweep_workspaces() {
            report
                .removed
                .push(format!("workspace {id} (retention passed)"));
        }
        // Proxy registrations of addresses in this pool that no live session holds (a stop
        // whose DELETE failed): the proxy would refuse that address to the next session.
        if let Ok(text) = self
            .http
            .call(http::Method::GET, &self.admin_url("/sessions"), None, None)
            .await
            && let Ok(listing) = serde_json::from_str::<serde_json::Value>(&text)
        {
            let registered = listing["sessions"].as_array().cloned().unwrap_or_default();
            for session in registered {
                let (Some(id), Some(source)) = (
                    session["id"].as_str(),
                    session["source"]
                        .as_str()
                        .and_then(|s| s.parse::<Ipv4Addr>().ok()),
                ) else {
                    continue;
                };
                let ours = self.config.address_pool.contains(&source);
                if ours && !live_records.iter().any(|r| r.id == id) {
                    match self
                        .http
                        .call(
                            http::Method::DELETE,
                            &self.admin_url(&format!("/sessions/{id}")),
                            None,
                            None,
                        )
                        .await
                    {
                        Ok(_) => report.removed.push(format!("proxy registration {id}")),
                        Err(e) => report
                            .problems
                            .push(format!("proxy registration {id}: {e}")),
                    }
                }
            }
        }
        Ok(report)
    }

    /// Stops every live session and removes the firewall table (tests, decommissioning).
    pub async fn stop_all(&mut self) -> Result<(), SandboxError> {
        let mut problems = Vec::new();
        for record in self.store.live()? {
            if let Err(e) = self.stop(&record.id).await {
                problems.push(e.to_string());
            }
        }
        // The table goes only when nothing it guards is left: a sandbox interface that
        // survived a failed stop stays behind its drop rules.
        let leftovers = network::list_host_interfaces(&self.config.interface_prefix);
        if leftovers.is_empty() {
            if let Err(e) = self.firewall.remove() {
                problems.push(e.to_string());
            }
        } else {
            problems.push(format!(
                "the firewall table stays: interfaces {} remain",
                leftovers.join(", ")
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SandboxError::Teardown {
                id: "*".into(),
                problems,
            })
        }
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
            address: SessionNames::new(config, &r.id, r.slot).sandbox_addr,
            id: r.id,
            state: r.state.as_str(),
            network_mode: r.network_mode,
            image: r.image,
            created_at: r.created_at,
            updated_at: r.updated_at,
            error: r.error,
        })
        .collect())
}

/// The live sessions running on the image whose manifest digest is `digest`.
pub fn sessions_on_image(config: &SandboxConfig, digest: &str) -> Result<Vec<String>, StoreError> {
    let store = Store::open(&config.state_dir.join("state.db"))?;
    Ok(store
        .live()?
        .into_iter()
        .filter(|r| r.image_digest.as_deref() == Some(digest))
        .map(|r| r.id)
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
    std::iter::once(("sandbox.image".to_string(), &config.image))
        .chain(
            config
                .agent_images
                .iter()
                .map(|(agent, image)| (format!("sandbox.agent_images.{agent}"), image)),
        )
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
    let names = SessionNames::new(config, &record.id, record.slot);
    Ok((
        SocketAddr::from((names.sandbox_addr, config.agent_port)),
        record.token,
    ))
}

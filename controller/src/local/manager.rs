//! The local sessions of a running controller: agent definitions, sessions and their events,
//! and one loop task per session that is not archived ([`super::session`]). Clients' events are
//! stored first, then the session's loop is woken; every stored event is also sent to the
//! session's live subscribers (the event stream).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{Notify, broadcast};

use super::agent::AgentSpec;
use super::events::{Event, Stored, client_event};
use super::model::ModelClient;
use crate::metrics::ControllerMetrics;
use crate::sandbox::Runtime;
use crate::store::local::{AgentRecord, AgentWriteError, LocalSessionRecord};
use crate::store::{Store, StoreError};
use crate::tools::CustomTools;
use crate::tools::audit::AuditLog;

/// How long a session's sandbox stays up once the session is idle (its workspace stays).
pub const DEFAULT_SANDBOX_IDLE: Duration = Duration::from_secs(10 * 60);
/// Most events one request may post.
pub const MAX_POSTED_EVENTS: usize = 100;
/// Longest text a client's event may carry, in bytes.
pub const MAX_POSTED_BYTES: usize = 1024 * 1024;

/// Why a request about local sessions was refused.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("no local session {0:?}")]
    NoSession(String),
    #[error("no agent named {0:?}: create it first (cordon-controller agents create --file FILE)")]
    NoAgent(String),
    #[error("agent {0:?} is archived; it starts no new sessions")]
    AgentArchived(String),
    #[error("session {0:?} is archived; it takes no more events")]
    Archived(String),
    #[error("{}", .0.join("; "))]
    Invalid(Vec<String>),
    #[error("the controller is stopping; try again once it is back")]
    Stopping,
    #[error(transparent)]
    Agent(#[from] AgentWriteError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl LocalError {
    /// The HTTP status the API answers with.
    pub fn status(&self) -> u16 {
        match self {
            LocalError::NoSession(_) | LocalError::NoAgent(_) => 404,
            LocalError::AgentArchived(_) | LocalError::Archived(_) => 409,
            LocalError::Stopping => 503,
            LocalError::Invalid(_) => 400,
            LocalError::Agent(AgentWriteError::NotFound(_)) => 404,
            LocalError::Agent(
                AgentWriteError::Exists(_)
                | AgentWriteError::VersionMismatch { .. }
                | AgentWriteError::Archived(_),
            ) => 409,
            LocalError::Agent(AgentWriteError::Store(e)) | LocalError::Store(e) => {
                if e.is_disk_full() { 507 } else { 500 }
            }
        }
    }
}

/// One live session: its loop's wake-up and its subscribers.
#[derive(Debug)]
pub struct Live {
    pub wake: Notify,
    pub events: broadcast::Sender<Stored>,
}

/// Everything the loops share.
#[derive(Debug)]
pub struct LocalSessions {
    pub store: Store,
    pub runtime: Arc<Runtime>,
    pub custom_tools: Option<Arc<CustomTools>>,
    pub model: ModelClient,
    pub metrics: ControllerMetrics,
    pub audit: Option<Arc<AuditLog>>,
    pub sandbox_idle: Duration,
    live: Mutex<HashMap<String, Arc<Live>>>,
    /// The loops' tasks, aborted at `serve`'s graceful stop.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Set at `serve`'s graceful stop: no session is created or takes events any more.
    stopping: std::sync::atomic::AtomicBool,
}

impl LocalSessions {
    pub fn new(
        store: Store,
        runtime: Arc<Runtime>,
        custom_tools: Option<Arc<CustomTools>>,
        model: ModelClient,
        metrics: ControllerMetrics,
        audit: Option<Arc<AuditLog>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            runtime,
            custom_tools,
            model,
            metrics,
            audit,
            sandbox_idle: DEFAULT_SANDBOX_IDLE,
            live: Mutex::default(),
            tasks: Mutex::default(),
            stopping: Default::default(),
        })
    }

    fn live_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Live>>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes the model requests' proxy registrations a previous controller left (it died
    /// mid-request), then starts the loop of every session not archived (after a restart:
    /// each reads its history and goes on from there).
    pub async fn resume(self: &Arc<Self>) {
        let admin = self.runtime.proxy_admin();
        match admin.sessions().await {
            Ok(registrations) => {
                for leftover in registrations.iter().filter(|r| r.id.starts_with("model:")) {
                    tracing::info!(id = %leftover.id, source = %leftover.source, "removing a model request's registration a previous controller left");
                    if let Err(e) = admin.unregister_source(&leftover.id, leftover.source).await {
                        tracing::warn!(id = %leftover.id, error = %e, "removing a leftover model registration");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the proxy's registrations to remove leftover model requests")
            }
        }
        match self.store.open_local_sessions() {
            Ok(sessions) => {
                for session in sessions {
                    self.spawn(&session.id);
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read the local sessions to resume"),
        }
    }

    /// At `serve`'s graceful stop: every local session's sandbox is stopped (its workspace
    /// stays). A sandbox outlives its controller only to be used again, and a resumed local
    /// session starts a new one for its next call; a call in flight now is answered as not
    /// run again when the session resumes.
    pub async fn shutdown(&self) {
        // First nothing new, then no loop (one mid-call could start a sandbox again), then the
        // sandboxes.
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let tasks: Vec<_> =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
        let ids: Vec<String> = match self.store.open_local_sessions() {
            Ok(sessions) => sessions.into_iter().map(|s| s.id).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the local sessions to stop their sandboxes");
                return;
            }
        };
        for id in ids {
            if crate::sandbox::agent_endpoint(self.runtime.config(), &id).is_ok()
                && let Err(e) = self.runtime.stop(&id).await
            {
                tracing::warn!(session = %id, error = %e, "stopping a local session's sandbox");
            }
        }
    }

    fn spawn(self: &Arc<Self>, id: &str) {
        let live = {
            let mut map = self.live_map();
            if map.contains_key(id) {
                return;
            }
            let live = Arc::new(Live {
                wake: Notify::new(),
                events: broadcast::channel(1024).0,
            });
            map.insert(id.to_string(), live.clone());
            live
        };
        let (manager, id) = (self.clone(), id.to_string());
        let task = tokio::spawn(async move {
            manager.metrics.local.sessions.inc();
            super::session::run(manager.clone(), id.clone(), live).await;
            manager.metrics.local.sessions.dec();
            manager.live_map().remove(&id);
        });
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    fn refuse_when_stopping(&self) -> Result<(), LocalError> {
        if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(LocalError::Stopping);
        }
        Ok(())
    }

    /// The names of the custom tools served now (`None`: no tools file).
    pub fn custom_names(&self) -> Option<Vec<String>> {
        self.custom_tools.as_ref().map(|t| t.names())
    }

    fn checked(&self, spec: AgentSpec) -> Result<String, LocalError> {
        let served = self.custom_names();
        let agent = spec.check(served.as_deref()).map_err(LocalError::Invalid)?;
        if let Some(image) = &agent.spec.image {
            let known = crate::image::ImageStore::open(&self.runtime.config().images_dir)
                .and_then(|s| s.list())
                .map(|images| images.iter().any(|i| &i.name == image))
                .unwrap_or(false);
            if !known {
                return Err(LocalError::Invalid(vec![format!(
                    "image {image:?} is not in the image store (cordon-controller image list)"
                )]));
            }
        }
        serde_json::to_string(&agent.spec).map_err(|e| LocalError::Invalid(vec![e.to_string()]))
    }

    pub fn create_agent(&self, spec: AgentSpec) -> Result<AgentRecord, LocalError> {
        let name = spec.name.clone();
        let text = self.checked(spec)?;
        Ok(self.store.create_agent(&name, &text)?)
    }

    pub fn update_agent(
        &self,
        name: &str,
        spec: AgentSpec,
        version: Option<i64>,
    ) -> Result<AgentRecord, LocalError> {
        if spec.name != name {
            return Err(LocalError::Invalid(vec![format!(
                "the definition's name {:?} is not the agent's ({name:?}); an agent cannot be renamed",
                spec.name
            )]));
        }
        let text = self.checked(spec)?;
        Ok(self.store.update_agent(name, &text, version)?)
    }

    pub fn archive_agent(&self, name: &str) -> Result<AgentRecord, LocalError> {
        Ok(self.store.archive_agent(name)?)
    }

    pub fn agent(&self, name: &str) -> Result<AgentRecord, LocalError> {
        self.store
            .agent(name)?
            .ok_or_else(|| LocalError::NoAgent(name.to_string()))
    }

    /// A new session of `agent`, idle until its first `user.message`.
    pub fn create_session(
        self: &Arc<Self>,
        agent: &str,
        title: Option<&str>,
    ) -> Result<LocalSessionRecord, LocalError> {
        self.refuse_when_stopping()?;
        let record = self.agent(agent)?;
        if record.archived_at.is_some() {
            return Err(LocalError::AgentArchived(agent.to_string()));
        }
        if title.is_some_and(|t| t.len() > 1024) {
            return Err(LocalError::Invalid(vec![
                "title: at most 1024 bytes".into(),
            ]));
        }
        let session = self
            .store
            .create_local_session(&super::new_session_id(), &record, title)?;
        self.spawn(&session.id);
        Ok(session)
    }

    pub fn session(&self, id: &str) -> Result<LocalSessionRecord, LocalError> {
        self.store
            .local_session(id)?
            .ok_or_else(|| LocalError::NoSession(id.to_string()))
    }

    /// Stores `events` (a client's), all or none, and wakes the session's loop.
    pub fn post(&self, id: &str, events: &[Value]) -> Result<Vec<Stored>, LocalError> {
        self.refuse_when_stopping()?;
        let session = self.session(id)?;
        if session.archived_at.is_some() {
            return Err(LocalError::Archived(id.to_string()));
        }
        if events.is_empty() || events.len() > MAX_POSTED_EVENTS {
            return Err(LocalError::Invalid(vec![format!(
                "send 1 to {MAX_POSTED_EVENTS} events in \"events\""
            )]));
        }
        let mut checked = Vec::with_capacity(events.len());
        let mut problems = Vec::new();
        for (i, value) in events.iter().enumerate() {
            if value.to_string().len() > MAX_POSTED_BYTES {
                problems.push(format!("events[{i}]: larger than {MAX_POSTED_BYTES} bytes"));
                continue;
            }
            match client_event(value) {
                Ok(event) => checked.push(event),
                Err(e) => problems.push(format!("events[{i}]: {e}")),
            }
        }
        // A verdict must answer a call that waits for one: anything else is a client's mistake
        // the session would otherwise swallow.
        let verdicts: Vec<&str> = checked
            .iter()
            .filter_map(|e| match e {
                Event::ToolConfirmation { tool_use_id, .. } => Some(tool_use_id.as_str()),
                _ => None,
            })
            .collect();
        if !verdicts.is_empty() {
            let waiting = super::plan::awaiting(&self.store.local_events(id, 0, u32::MAX)?);
            for tool_use_id in verdicts {
                if !waiting.iter().any(|w| w == tool_use_id) {
                    problems.push(format!(
                        "user.tool_confirmation: no call {tool_use_id:?} waits for confirmation \
                         (waiting: {})",
                        if waiting.is_empty() {
                            "none".to_string()
                        } else {
                            waiting.join(", ")
                        }
                    ));
                }
            }
        }
        if !problems.is_empty() {
            return Err(LocalError::Invalid(problems));
        }
        let stored = self.append(id, checked)?;
        if let Some(live) = self.live_map().get(id) {
            live.wake.notify_one();
        }
        Ok(stored)
    }

    /// Appends events to `id`'s history and tells its subscribers.
    pub fn append(&self, id: &str, events: Vec<Event>) -> Result<Vec<Stored>, StoreError> {
        let stored = self.store.append_local_events(id, events)?;
        if let Some(live) = self.live_map().get(id) {
            for event in &stored {
                // No subscriber is fine: the history has it.
                let _ = live.events.send(event.clone());
            }
        }
        Ok(stored)
    }

    /// `id`'s events after `after`.
    pub fn events(&self, id: &str, after: i64, limit: u32) -> Result<Vec<Stored>, LocalError> {
        self.session(id)?;
        Ok(self.store.local_events(id, after, limit)?)
    }

    /// A receiver of `id`'s events from now on, while its loop is live.
    pub fn subscribe(&self, id: &str) -> Option<broadcast::Receiver<Stored>> {
        self.live_map().get(id).map(|l| l.events.subscribe())
    }

    /// Archives session `id`: its loop stops (a call in flight is abandoned), its sandbox goes,
    /// its workspace's retention starts. Archiving twice is no error.
    pub fn archive(&self, id: &str) -> Result<LocalSessionRecord, LocalError> {
        let session = self.session(id)?;
        if session.archived_at.is_none() {
            self.append(id, vec![Event::StatusTerminated {}])?;
            self.store.set_local_status(id, "terminated", true)?;
            if let Some(live) = self.live_map().get(id) {
                live.wake.notify_one();
            } else {
                // No loop to end it: end the sandbox here.
                let runtime = self.runtime.clone();
                let id = id.to_string();
                tokio::spawn(async move {
                    if let Err(e) = runtime.end(&id).await {
                        tracing::warn!(session = %id, error = %e, "ending an archived session's sandbox");
                    }
                });
            }
        }
        self.session(id)
    }
}

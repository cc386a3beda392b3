//! The custom tools being served: the last good load of the tools file, each tool with its
//! input check, its concurrency limit and its warm sandboxes.
//!
//! A call is checked against the tool's schema before anything runs, waits for one of the
//! tool's `concurrency` permits, and runs as a task of its own: the session runner may be
//! dropped mid-call (a lost lease), and a call cancelled halfway would leave a sandbox and a
//! proxy registration behind. Every call is counted and audited, whatever its outcome.
//!
//! The file is read again when it changes (polled) and on SIGHUP. A file with errors keeps
//! the previous set serving; the errors are logged, and `cordon-controller tools check` shows
//! them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use tokio::sync::Semaphore;

use super::audit::{AuditLog, ToolCallRecord, now};
use super::file::{Handler, Tool};
use super::http::ProxyRoute;
use super::reply::ToolReply;
use super::run::{self, Prepared};
use super::schema::InputCheck;
use super::setup::ToolsConfig;
use super::{Answer, CallContext, Outcome};
use crate::metrics::ControllerMetrics;
use crate::sandbox::Runtime;

/// How often the tools file's modification time is checked.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);
/// Every this many checks (30 s), tools short of warm sandboxes are topped up.
const WARM_CHECK_POLLS: u32 = 15;

/// One tool as served.
#[derive(Debug)]
struct Served {
    tool: Tool,
    check: InputCheck,
    permits: Arc<Semaphore>,
    /// Sandboxes started ahead of calls (`warm`), each used by one call.
    warm: Mutex<Vec<Prepared>>,
    /// Warm sandboxes being started now.
    starting: std::sync::atomic::AtomicUsize,
}

#[derive(Debug, Default)]
struct Generation {
    tools: BTreeMap<String, Arc<Served>>,
    /// The file's modification time at this load.
    modified: Option<SystemTime>,
}

/// The custom tools of a running controller.
#[derive(Debug)]
pub struct CustomTools {
    config: ToolsConfig,
    runtime: Arc<Runtime>,
    route: Option<ProxyRoute>,
    metrics: ControllerMetrics,
    audit: AuditLog,
    current: RwLock<Arc<Generation>>,
}

impl CustomTools {
    /// Loads the tools file (every problem at once: a controller does not start serving a
    /// file with errors), opens the audit log and removes tool sandboxes a previous
    /// controller left.
    pub async fn start(
        config: ToolsConfig,
        runtime: Arc<Runtime>,
        metrics: ControllerMetrics,
    ) -> Result<Arc<Self>, Vec<String>> {
        let audit = AuditLog::open(&config.audit_log).map_err(|e| vec![e.to_string()])?;
        let route = config.route().map_err(|e| vec![e])?;
        let tools = Arc::new(Self {
            config,
            runtime,
            route,
            metrics,
            audit,
            current: RwLock::default(),
        });
        tools.remove_leftovers().await;
        tools.load()?;
        Ok(tools)
    }

    /// The tools file, if any.
    pub fn path(&self) -> Option<&PathBuf> {
        self.config.path.as_ref()
    }

    fn generation(&self) -> Arc<Generation> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The names served now.
    pub fn names(&self) -> Vec<String> {
        self.generation().tools.keys().cloned().collect()
    }

    /// The declarations of the tools among `names` served now (unknown names are skipped).
    pub fn definitions(&self, names: &[String]) -> Vec<Tool> {
        let generation = self.generation();
        names
            .iter()
            .filter_map(|name| generation.tools.get(name).map(|s| s.tool.clone()))
            .collect()
    }

    /// Whether the browser built-in is served now (`[builtins] browser`).
    pub fn serves_browser(&self) -> bool {
        self.generation()
            .tools
            .values()
            .any(|served| matches!(served.tool.handler, Handler::Browser))
    }

    /// Warm sandboxes `tool` has ready now.
    pub fn warm_ready(&self, tool: &str) -> usize {
        self.generation().tools.get(tool).map_or(0, |s| {
            s.warm.lock().unwrap_or_else(|e| e.into_inner()).len()
        })
    }

    /// Reads the tools file and serves it if it has no errors; else the previous set stays.
    /// Returns the names now served.
    pub fn load(&self) -> Result<Vec<String>, Vec<String>> {
        let Some(path) = &self.config.path else {
            return Ok(Vec::new());
        };
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let set = super::file::load(path, &self.config.context())?;
        let mut problems = Vec::new();
        if self.route.is_none()
            && let Some(tool) = set
                .tools
                .values()
                .find(|t| matches!(t.handler, Handler::Http(_)))
        {
            problems.push(format!(
                "tool {:?}: http tools need the proxy's explicit listener and its CA ({})",
                tool.name,
                self.config.ca_cert.display()
            ));
        }
        let previous = self.generation();
        let mut tools = BTreeMap::new();
        for (name, tool) in set.tools {
            // Unchanged: the same permits (calls in flight keep counting) and warm sandboxes.
            if let Some(served) = previous.tools.get(&name).filter(|s| s.tool == tool) {
                tools.insert(name, served.clone());
                continue;
            }
            match InputCheck::new(&tool.input_schema) {
                Ok(check) => {
                    let permits = Arc::new(Semaphore::new(tool.concurrency as usize));
                    tools.insert(
                        name,
                        Arc::new(Served {
                            tool,
                            check,
                            permits,
                            warm: Mutex::default(),
                            starting: Default::default(),
                        }),
                    );
                }
                Err(e) => problems.push(format!("tool {name:?}: input_schema: {e}")),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        self.metrics
            .declare_custom_tools(tools.keys().map(String::as_str));
        let names: Vec<String> = tools.keys().cloned().collect();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(Generation { tools, modified });
        // The warm sandboxes of tools that changed or went were made for old definitions.
        let current = self.generation();
        let stale: Vec<Arc<Served>> = previous
            .tools
            .iter()
            .filter(|(name, served)| {
                current
                    .tools
                    .get(*name)
                    .is_none_or(|now| !Arc::ptr_eq(now, served))
            })
            .map(|(_, served)| served.clone())
            .collect();
        let runtime = self.runtime.clone();
        tokio::spawn(async move {
            for served in stale {
                drain_warm(&runtime, &served).await;
            }
        });
        tracing::info!(path = %path.display(), tools = ?names, "custom tools loaded");
        Ok(names)
    }

    /// Reloads when the file changes and on SIGHUP; never returns.
    pub async fn watch(self: Arc<Self>) {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(signal) => Some(signal),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; the tools file is still reloaded when it changes");
                None
            }
        };
        let Some(path) = self.config.path.clone() else {
            return;
        };
        self.fill_warm();
        let mut polls = 0u32;
        loop {
            // Warm sandboxes that failed to start are tried again now and then.
            polls += 1;
            if polls.is_multiple_of(WARM_CHECK_POLLS) {
                self.fill_warm();
            }
            let signalled = tokio::select! {
                () = tokio::time::sleep(WATCH_INTERVAL) => false,
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            };
            let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
            if !signalled && modified == self.generation().modified {
                continue;
            }
            match self.load() {
                Ok(_) => self.fill_warm(),
                Err(errors) => {
                    // Remember the broken version, so it is reported once, not every poll.
                    let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
                    let tools = current.tools.clone();
                    *current = Arc::new(Generation { tools, modified });
                    tracing::error!(
                        path = %path.display(),
                        errors = %errors.join("; "),
                        "the tools file has errors; the previous tools keep serving (see `cordon-controller tools check`)"
                    );
                }
            }
        }
    }

    /// Starts the warm sandboxes each run tool asks for that it does not have.
    fn fill_warm(self: &Arc<Self>) {
        for served in self.generation().tools.values() {
            self.top_up(served);
        }
    }

    /// Starts the warm sandboxes `served` asks for beyond those it has or is starting.
    fn top_up(self: &Arc<Self>, served: &Arc<Served>) {
        let want = match &served.tool.handler {
            Handler::Run(run) => run.warm as usize,
            Handler::Http(_) | Handler::Browser => 0,
        };
        let have = served.warm.lock().unwrap_or_else(|e| e.into_inner()).len()
            + served.starting.load(std::sync::atomic::Ordering::SeqCst);
        for _ in have..want {
            self.refill(served.clone());
        }
    }

    /// Starts one warm sandbox for `served`, in the background.
    fn refill(self: &Arc<Self>, served: Arc<Served>) {
        let Handler::Run(handler) = &served.tool.handler else {
            return;
        };
        let handler = handler.clone();
        let this = self.clone();
        served
            .starting
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tokio::spawn(async move {
            let prepared = run::prepare(&this.runtime, &this.config.default_image, &handler).await;
            served
                .starting
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            match prepared {
                Ok(prepared) => {
                    // Still served? A reload may have replaced the tool meanwhile.
                    let current = this.generation();
                    if current
                        .tools
                        .get(&served.tool.name)
                        .is_some_and(|s| Arc::ptr_eq(s, &served))
                    {
                        served
                            .warm
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(prepared);
                    } else {
                        run::discard(&this.runtime, &prepared.started.id).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(tool = %served.tool.name, error = %e, "starting a warm tool sandbox")
                }
            }
        });
    }

    /// Stops every warm tool sandbox (at shutdown).
    pub async fn shutdown(&self) {
        for served in self.generation().tools.values() {
            drain_warm(&self.runtime, served).await;
        }
    }

    async fn remove_leftovers(&self) {
        // An http call's registration a crash left behind (its source is on loopback, which
        // the sandbox reconcile does not look at).
        let admin = self.runtime.proxy_admin();
        if let Ok(registered) = admin.sessions().await {
            for r in registered
                .iter()
                .filter(|r| r.id.starts_with("tool:") && super::http::is_call_source(r.source))
            {
                if let Err(e) = admin.unregister_source(&r.id, r.source).await {
                    tracing::warn!(tool = %r.id, error = %e, "removing a stale http tool registration");
                }
            }
        }
        let Ok(list) = self.runtime.list() else {
            return;
        };
        for view in list.into_iter().filter(|v| v.state == "tool") {
            tracing::info!(sandbox = %view.id, "removing a tool sandbox a previous controller left");
            run::discard(&self.runtime, &view.id).await;
        }
    }

    /// Answers one `agent.custom_tool_use`. Never fails: every problem is an error result the
    /// model reads, and the session goes on.
    pub async fn call(
        self: &Arc<Self>,
        context: CallContext,
        name: &str,
        input: Value,
    ) -> ToolReply {
        let begun = Instant::now();
        let input_bytes = input.to_string().len();
        let generation = self.generation();
        let (answer, handler) = match generation.tools.get(name) {
            None => (self.undeclared(name, &generation), "none"),
            Some(served) => {
                let kind = served.tool.handler.kind();
                let problems = served.check.problems(&input);
                if problems.is_empty() {
                    let task =
                        tokio::spawn(self.clone().run(served.clone(), context.clone(), input));
                    let answer = task.await.unwrap_or_else(|e| {
                        Answer::error(
                            Outcome::Failed,
                            format!("[cordon] the tool call's task failed: {e}"),
                        )
                    });
                    (answer, kind)
                } else {
                    (
                        Answer::error(
                            Outcome::InvalidInput,
                            format!(
                                "[cordon] the input of tool {name} does not match its input_schema, so it did not run:\n- {}",
                                problems.join("\n- ")
                            ),
                        ),
                        kind,
                    )
                }
            }
        };
        let elapsed = begun.elapsed();
        let label = if answer.outcome == Outcome::Undeclared {
            "undeclared"
        } else {
            name
        };
        self.metrics
            .custom_tool_calls
            .with_label_values(&[label, answer.outcome.as_str()])
            .inc();
        if answer.outcome != Outcome::Undeclared {
            self.metrics
                .custom_tool_duration
                .with_label_values(&[name])
                .observe(elapsed.as_secs_f64());
        }
        self.audit.record(&ToolCallRecord {
            time: now(),
            kind: "custom_tool_call",
            session: &context.session,
            agent_id: context.agent_id.as_deref(),
            tool: name,
            tool_use_id: &context.tool_use_id,
            handler,
            outcome: answer.outcome.as_str(),
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            input_bytes,
            output_bytes: answer.reply.size(),
            images: answer.reply.images(),
        });
        tracing::info!(
            session = %context.session,
            tool = %name,
            outcome = answer.outcome.as_str(),
            ms = elapsed.as_millis() as u64,
            "custom tool call"
        );
        answer.reply
    }

    fn undeclared(&self, name: &str, generation: &Generation) -> Answer {
        let served: Vec<&str> = generation.tools.keys().map(String::as_str).collect();
        tracing::warn!(tool = %name, "the agent called a custom tool the tools file does not declare (the agent's definition and the file have drifted: run `cordon-controller agents sync`)");
        Answer::error(
            Outcome::Undeclared,
            format!(
                "[cordon] this environment serves no custom tool named {name:?}; it serves: {}",
                if served.is_empty() {
                    "none".to_string()
                } else {
                    served.join(", ")
                }
            ),
        )
    }

    /// The call itself, under a permit; a run tool's sandbox is stopped before the permit is
    /// given back.
    async fn run(
        self: Arc<Self>,
        served: Arc<Served>,
        context: CallContext,
        input: Value,
    ) -> Answer {
        let Ok(permit) = served.permits.clone().acquire_owned().await else {
            return Answer::error(Outcome::Failed, "[cordon] the tool is no longer served");
        };
        let tool = &served.tool;
        match &tool.handler {
            Handler::Http(handler) => match &self.route {
                Some(route) => {
                    super::http::call(
                        self.runtime.proxy_admin(),
                        route,
                        tool,
                        handler,
                        &context,
                        &input,
                    )
                    .await
                }
                None => Answer::error(
                    Outcome::Failed,
                    "[cordon] http tools need the proxy's explicit listener",
                ),
            },
            Handler::Browser => {
                let answer =
                    super::builtin::browser_call(&self.runtime, tool, &context, &input).await;
                drop(permit);
                answer
            }
            Handler::Run(handler) => {
                let warm = served.warm.lock().unwrap_or_else(|e| e.into_inner()).pop();
                // Top the tool's warm sandboxes up, whether this call took one or found none.
                self.top_up(&served);
                let sandbox = match warm {
                    Some(prepared) => prepared,
                    None => match run::prepare(&self.runtime, &self.config.default_image, handler)
                        .await
                    {
                        Ok(prepared) => prepared,
                        Err(e) => return Answer::error(Outcome::Failed, format!("[cordon] {e}")),
                    },
                };
                let answer =
                    run::call(&self.runtime, tool, handler, &sandbox, &context, &input).await;
                // The permit is given back once the sandbox is gone, so `concurrency` bounds
                // the tool's sandboxes, not only its calls.
                let runtime = self.runtime.clone();
                tokio::spawn(async move {
                    run::discard(&runtime, &sandbox.started.id).await;
                    drop(permit);
                });
                answer
            }
        }
    }
}

async fn drain_warm(runtime: &Runtime, served: &Served) {
    let warm: Vec<Prepared> =
        std::mem::take(&mut *served.warm.lock().unwrap_or_else(|e| e.into_inner()));
    for prepared in warm {
        run::discard(runtime, &prepared.started.id).await;
    }
}

//! `cordon-controller`: the control plane's CLI.
//!
//! ```text
//! cordon-controller sandbox start --config cordon.toml --session ID
//! cordon-controller sandbox exec  --config cordon.toml --session ID [--timeout-ms N] -- CMD...
//! cordon-controller sandbox stop  --config cordon.toml --session ID
//! cordon-controller sandbox list  --config cordon.toml [--json]
//! cordon-controller sandbox reconcile --config cordon.toml
//! cordon-controller serve --config cordon.toml      # CMA: webhooks, work queue, admin API
//! cordon-controller sessions --config cordon.toml [--json] [--stop ID]
//! cordon-controller tools check|schema --config cordon.toml [--file tools.toml]
//! cordon-controller agents sync --config cordon.toml --agent ID [--dry-run]
//! cordon-controller agents create|update --config cordon.toml --file agent.toml [--version N]
//! cordon-controller agents list|show|archive --config cordon.toml [NAME]
//! cordon-controller run --config cordon.toml --agent NAME [--yes|--no] [--json] [--archive] "task"
//! cordon-controller dashboard user add|remove|list --config cordon.toml [NAME --role R]
//! cordon-controller files ls  --config cordon.toml --session ID [PATH] [--json]
//! cordon-controller files get --config cordon.toml --session ID PATH [--output FILE]
//! cordon-controller files put --config cordon.toml --session ID LOCAL PATH [--replace]
//! ```
//!
//! Exit codes: 0 success (exec: the command's own status), 64 bad configuration or arguments,
//! 65 the tools file has errors, 66 no such session, sandbox or file, 69 a prerequisite is
//! missing, the sandbox could not be started or `serve` cannot be reached, 70 anything else.

mod cli_dashboard;
mod cli_files;
mod cli_image;
mod cli_local;
mod cli_tools;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cordon_controller::config::SandboxConfig;
use cordon_controller::http::HttpClient;
use cordon_controller::sandbox::{Runtime, SandboxError, agent_endpoint};
use cordon_controller::tools::CustomTools;
use cordon_controller::tools::setup::ToolsConfig;
use cordon_sandbox_agent::ExecRequest;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Cordon's control plane: per-session gVisor sandboxes behind the proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sandboxes: start, exec, stop, list, reconcile.
    Sandbox {
        #[command(subcommand)]
        action: SandboxAction,
    },
    /// Sandbox images: build, import, list, inspect, rm.
    Image {
        #[command(subcommand)]
        action: cli_image::ImageAction,
    },
    /// Serves CMA: `POST /webhooks` (verified, deduplicated, recorded) and, with
    /// `[controller] environment_id`, the work queue: each session in its own sandbox.
    /// The admin API (`/sessions`, `/metrics`) listens on `[controller] admin_listen`.
    Serve {
        #[command(flatten)]
        common: Common,
    },
    /// Custom tools (docs/TOOLS.md): check the tools file, print its CMA `tools` entries.
    Tools {
        #[command(subcommand)]
        action: cli_tools::ToolsAction,
    },
    /// Agents: local agent definitions (`create|update|list|show|archive`,
    /// docs/OPEN-MODELS.md), and registering the custom tools on a CMA agent (`sync`).
    Agents {
        #[command(subcommand)]
        action: cli_tools::AgentsAction,
    },
    /// The web dashboard's local users (docs/DASHBOARD.md): `dashboard user add|remove|list`.
    Dashboard {
        #[command(subcommand)]
        action: cli_dashboard::DashboardAction,
    },
    /// A session's workspace through the running controller (`serve`): `files ls|get|put`.
    Files {
        #[command(subcommand)]
        action: cli_files::FilesAction,
    },
    /// Runs one local session from the terminal (docs/OPEN-MODELS.md): creates it with the
    /// agent, sends the task, prints each step as it happens; exits 0 when the agent ends its
    /// turn, 1 when the run stopped otherwise, 130 when interrupted (Ctrl-C).
    Run {
        #[command(flatten)]
        common: Common,
        /// The local agent (`cordon-controller agents list`).
        #[arg(long)]
        agent: String,
        /// Allow every call that asks for confirmation, without asking.
        #[arg(long, conflicts_with = "no")]
        yes: bool,
        /// Deny every call that asks for confirmation, without asking.
        #[arg(long)]
        no: bool,
        /// Print the events as JSON lines instead of progress lines.
        #[arg(long)]
        json: bool,
        /// Archive the session when the run ends (its sandbox goes; its workspace's
        /// retention starts). Without it the session stays, idle, for more messages.
        #[arg(long)]
        archive: bool,
        /// What the agent should do.
        task: String,
    },
    /// Lists the sessions of the running controller (`serve`): sandbox state, work item,
    /// tool calls, egress decisions. `--stop ID` stops serving one.
    Sessions {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        json: bool,
        /// Stop serving this session: its sandbox is torn down, its work item stopped.
        #[arg(long, value_name = "SESSION")]
        stop: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
pub(crate) struct Common {
    /// The gateway's cordon.toml (the same file the proxy runs on).
    #[arg(long, default_value = "/etc/cordon/cordon.toml")]
    pub(crate) config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum SandboxAction {
    /// Starts a sandbox for a session; prints its address once its agent answers.
    Start {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        session: String,
        /// The image to run on (default: `[sandbox] image`).
        #[arg(long)]
        image: Option<String>,
    },
    /// Runs a command in a session's sandbox, streaming its output; exits with its status.
    Exec {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        session: String,
        /// Kill the command after this many milliseconds (exit 124).
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// Working directory inside the sandbox (default /workspace).
        #[arg(long)]
        cwd: Option<String>,
        /// The command and its arguments (not run through a shell).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Makes one CMA tool call (bash, read, write, edit, glob, grep) in a session's sandbox;
    /// prints the result's text, exits 1 when it is an error result.
    Tool {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        session: String,
        /// The tool's name.
        #[arg(long)]
        name: String,
        /// The tool's input, as JSON (`{"command": "ls"}`).
        #[arg(long, default_value = "{}")]
        input: String,
    },
    /// Stops a session's sandbox and removes everything it had but its workspace, which the
    /// session's next sandbox mounts again.
    Stop {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        session: String,
        /// The session is over: its workspace is removed after `workspace_retention_hours`
        /// (at once with 0).
        #[arg(long)]
        end: bool,
    },
    /// Lists recorded sessions.
    List {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        json: bool,
    },
    /// Removes Cordon resources no live session owns; marks vanished sessions failed.
    Reconcile {
        #[command(flatten)]
        common: Common,
    },
}

fn load(common: &Common) -> Result<SandboxConfig, ExitCode> {
    SandboxConfig::load(&common.config).map_err(|e| {
        eprintln!("cordon-controller: {e}");
        ExitCode::from(64)
    })
}

fn fail(e: &SandboxError) -> ExitCode {
    eprintln!("cordon-controller: {e}");
    match e {
        SandboxError::InvalidId(_) => ExitCode::from(64),
        SandboxError::Prerequisite(_)
        | SandboxError::Store(_)
        | SandboxError::Image(cordon_controller::image::ImageError::NotFound { .. }) => {
            ExitCode::from(69)
        }
        SandboxError::NotFound(_) | SandboxError::NotRunning { .. } => ExitCode::from(66),
        _ => ExitCode::from(70),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CORDON_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        Command::Sandbox { action } => run(action).await,
        Command::Image { action } => cli_image::run(action),
        Command::Serve { common } => serve(common).await,
        Command::Sessions { common, json, stop } => sessions(common, json, stop).await,
        Command::Tools { action } => cli_tools::run(action),
        Command::Dashboard { action } => cli_dashboard::run(action),
        Command::Files { action } => cli_files::run(action).await,
        Command::Agents { action } => cli_tools::agents(action).await,
        Command::Run {
            common,
            agent,
            yes,
            no,
            json,
            archive,
            task,
        } => {
            let confirm = match (yes, no) {
                (true, _) => cli_local::Confirm::Allow,
                (_, true) => cli_local::Confirm::Deny,
                _ => cli_local::Confirm::Ask,
            };
            cli_local::run(&common, &agent, &task, confirm, json, archive).await
        }
    };
    match result {
        Ok(code) | Err(code) => code,
    }
}

async fn serve(common: Common) -> Result<ExitCode, ExitCode> {
    use std::sync::Arc;
    let config = cordon_controller::config::ServiceConfig::load(&common.config).map_err(|e| {
        eprintln!("cordon-controller: {e}");
        ExitCode::from(64)
    })?;
    let dashboard_config = cordon_controller::dashboard::config::DashboardConfig::load(
        &common.config,
    )
    .map_err(|e| {
        eprintln!("cordon-controller: {e}");
        ExitCode::from(64)
    })?;
    let metrics = cordon_controller::metrics::ControllerMetrics::new().map_err(|e| {
        eprintln!("cordon-controller: metrics: {e}");
        ExitCode::from(70)
    })?;
    // Every store reports its failed writes to the one set of metrics: a full disk is one
    // episode in the log and `cordon_controller_store_disk_full`.
    let open_store = || {
        let store = cordon_controller::store::Store::open(&config.state_dir.join("state.db"))
            .map_err(|e| {
                eprintln!("cordon-controller: {e}");
                ExitCode::from(69)
            })?;
        store.report_to(metrics.store.clone());
        Ok::<_, ExitCode>(store)
    };
    let receiver = Arc::new(cordon_controller::cma::receiver::Receiver::new(
        config.webhook_secret.clone(),
        open_store()?,
        metrics.clone(),
    ));
    let bind = |address: std::net::SocketAddr| async move {
        tokio::net::TcpListener::bind(address).await.map_err(|e| {
            eprintln!("cordon-controller: cannot listen on {address}: {e}");
            ExitCode::from(69)
        })
    };
    let listener = bind(config.listen).await?;
    let admin_listener = bind(config.admin_listen).await?;
    let mut sandbox_config = None;
    // Kept to stop warm tool sandboxes, and the firewall if nothing is left, at shutdown.
    let mut served_tools = None;
    let mut served_runtime = None;
    let mut local_sessions = None;
    let audit = match cordon_controller::tools::audit::AuditLog::open(&config.audit_log) {
        Ok(log) => Some(Arc::new(log)),
        Err(e) => {
            eprintln!("cordon-controller: {e}; admin and dashboard actions are logged only");
            None
        }
    };
    if config.work.is_some() || config.local_sessions {
        let sandbox = SandboxConfig::load(&common.config).map_err(|e| {
            eprintln!("cordon-controller: {e}");
            ExitCode::from(64)
        })?;
        sandbox_config = Some(sandbox.clone());
        // An image the configuration names but the store lacks is a configuration error now,
        // not a failed session later.
        let missing = cordon_controller::sandbox::missing_images(&sandbox);
        if !missing.is_empty() {
            eprintln!(
                "cordon-controller: {} has {} error(s) for the controller:\n  {}",
                common.config.display(),
                missing.len(),
                missing.join("\n  ")
            );
            return Err(ExitCode::from(64));
        }
        let mut runtime = Runtime::open(sandbox).map_err(|e| fail(&e))?;
        runtime.store().report_to(metrics.store.clone());
        // serve lives as long as its sandboxes: they run detached, reaped by it.
        runtime.detach_sandboxes().map_err(|e| fail(&e))?;
        let runtime = Arc::new(runtime);
        served_runtime = Some(runtime.clone());
        let tools = ToolsConfig::load(&common.config, runtime.config()).map_err(|e| {
            eprintln!("cordon-controller: {e}");
            ExitCode::from(64)
        })?;
        // After a crash: sandboxes still running are kept for their sessions to resume; what
        // vanished or was half-made is cleaned up.
        report_reconcile(runtime.reconcile().await);
        // A tools file with errors is refused now, every error at once; later, a reload
        // with errors keeps the last good set serving.
        let custom_tools = match tools.path.clone() {
            None => None,
            Some(path) => {
                let tools = CustomTools::start(tools.clone(), runtime.clone(), metrics.clone())
                    .await
                    .map_err(|errors| {
                        eprintln!(
                            "cordon-controller: the tools file {} has {} error(s):\n  {}",
                            path.display(),
                            errors.len(),
                            errors.join("\n  ")
                        );
                        ExitCode::from(64)
                    })?;
                eprintln!(
                    "cordon-controller: serving custom tools from {}: {}",
                    path.display(),
                    tools.names().join(", ")
                );
                tokio::spawn(tools.clone().watch());
                served_tools = Some(tools.clone());
                Some(tools)
            }
        };
        // The proxy keeps registrations in memory: after it restarts, running sessions are
        // registered again within this interval.
        tokio::spawn(runtime.clone().keep_registered(
            std::time::Duration::from_secs(2),
            metrics.registrations_restored.clone(),
        ));
        if config.local_sessions {
            let route = tools
                .route()
                .map_err(|e| {
                    eprintln!("cordon-controller: local sessions: {e}");
                    ExitCode::from(69)
                })?
                .ok_or_else(|| {
                    eprintln!(
                        "cordon-controller: {}: controller.local_sessions needs the proxy's \
                         explicit listener ([proxy] explicit_listen): model requests go \
                         through it",
                        common.config.display()
                    );
                    ExitCode::from(64)
                })?;
            let local = cordon_controller::local::LocalSessions::new(
                open_store()?,
                runtime.clone(),
                custom_tools.clone(),
                cordon_controller::local::model::ModelClient {
                    route,
                    admin: runtime.proxy_admin().clone(),
                },
                metrics.clone(),
                audit.clone(),
            );
            local.resume().await;
            eprintln!(
                "cordon-controller: serving local sessions (/v1/agents, /v1/sessions) on {}",
                config.admin_listen
            );
            local_sessions = Some(local);
        }
    }
    if let (Some(work), Some(runtime)) = (&config.work, served_runtime.clone()) {
        let custom_tools = served_tools.clone();
        let worker = format!("cordon-{}", std::process::id());
        let client = cordon_controller::cma::client::CmaClient::new(
            &work.base_url,
            &work.environment_id,
            work.environment_key.clone(),
            &worker,
        )
        .map_err(|e| {
            eprintln!("cordon-controller: {e}");
            ExitCode::from(69)
        })?;
        let service = Arc::new(cordon_controller::cma::service::Service {
            client,
            runtime,
            store: open_store()?,
            metrics: metrics.clone(),
            runner: cordon_controller::cma::runner::RunnerConfig {
                max_idle: work.max_idle,
                ..Default::default()
            },
            lease_ttl_secs: work.lease_ttl_secs,
            wake: receiver.wake.clone(),
            stops: receiver.stops.clone(),
            custom_tools,
        });
        eprintln!(
            "cordon-controller: serving work of environment {} at {}",
            work.environment_id, work.base_url
        );
        tokio::spawn(service.run(work.drain_interval));
    }
    let local_for_shutdown = local_sessions.clone();
    let admin = Arc::new(cordon_controller::admin::Admin {
        store: open_store()?,
        metrics: metrics.clone(),
        stops: receiver.stops.clone(),
        proxy_admin: sandbox_config
            .as_ref()
            .map(|c| cordon_controller::proxy_admin::ProxyAdmin::new(c.admin)),
        sandbox: sandbox_config,
        runtime: served_runtime.clone(),
        actions: audit,
        local: local_sessions.clone(),
        files_token: Some(
            cordon_controller::admin::token::ensure(&config.state_dir).map_err(|e| {
                eprintln!(
                    "cordon-controller: the admin token in {}: {e}",
                    config.state_dir.display()
                );
                ExitCode::from(70)
            })?,
        ),
    });
    eprintln!(
        "cordon-controller: serving POST /webhooks on {}, the admin API (/sessions, /metrics) on {}",
        config.listen, config.admin_listen
    );
    if let Some(dashboard) = dashboard_config {
        let listener = bind(dashboard.listen).await?;
        let dashboard_store = || open_store().map(Arc::new);
        start_dashboard(
            &dashboard,
            listener,
            admin.clone(),
            receiver.deliveries.clone(),
            dashboard_store()?,
            open_store()?,
            &metrics,
        )?;
    }
    let admin_app = cordon_controller::admin::router(admin);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(admin_listener, admin_app).await {
            eprintln!("cordon-controller: admin API: {e}");
        }
    });
    let app = cordon_controller::cma::receiver::router(receiver, config.max_body_bytes);
    axum::serve(listener, app)
        .with_graceful_shutdown(stop_signal())
        .await
        .map_err(|e| {
            eprintln!("cordon-controller: {e}");
            ExitCode::from(70)
        })?;
    // CMA sessions' sandboxes stay for a restarted controller to resume; warm tool sandboxes
    // hold nothing and are started again by the next `serve`; local sessions' sandboxes are
    // stopped (their workspaces stay, and a resumed session starts a new sandbox for its next
    // call). With no sandbox left, the firewall table goes too.
    if let Some(tools) = served_tools {
        tools.shutdown().await;
    }
    if let Some(local) = local_for_shutdown {
        local.shutdown().await;
    }
    if let Some(runtime) = served_runtime
        && let Err(e) = runtime.release_firewall_if_idle().await
    {
        eprintln!("cordon-controller: {e}");
    }
    eprintln!("cordon-controller: stopped");
    Ok(ExitCode::SUCCESS)
}

/// Starts the dashboard on `listener`: the egress ingester (the proxy's audit log into
/// `ingest_store`), the pages, and their server.
fn start_dashboard(
    config: &cordon_controller::dashboard::config::DashboardConfig,
    listener: tokio::net::TcpListener,
    admin: std::sync::Arc<cordon_controller::admin::Admin>,
    deliveries: std::sync::Arc<cordon_controller::cma::deliveries::DeliveryLog>,
    ingest_store: std::sync::Arc<cordon_controller::store::Store>,
    read_store: cordon_controller::store::Store,
    metrics: &cordon_controller::metrics::ControllerMetrics,
) -> Result<(), ExitCode> {
    use cordon_controller::dashboard::{self, Dashboard, EgressFeed};
    use cordon_controller::egress::{EgressIngestConfig, EgressIngester, EgressMetrics};
    use std::sync::Arc;
    let egress_metrics = EgressMetrics::new()
        .and_then(|m| m.register(&metrics.registry).map(|()| m))
        .map_err(|e| {
            eprintln!("cordon-controller: metrics: {e}");
            ExitCode::from(70)
        })?;
    let ingester = EgressIngester::spawn(
        EgressIngestConfig {
            max_age: config.egress_retention,
            max_rows: config.egress_retention_rows,
            ..EgressIngestConfig::new(config.audit_log.clone())
        },
        ingest_store,
        egress_metrics,
    );
    // One handle on the controller's audit log, shared with the admin API.
    let actions = admin.actions.clone();
    let bound = listener.local_addr().map_err(|e| {
        eprintln!("cordon-controller: the dashboard's listener: {e}");
        ExitCode::from(69)
    })?;
    let dashboard = Arc::new(Dashboard::new(
        config,
        bound,
        admin,
        deliveries,
        EgressFeed::new(read_store, ingester),
        actions,
    ));
    if let dashboard::Authenticator::LocalUsers(users) = &dashboard.auth.authenticator
        && users.users().is_empty()
    {
        eprintln!(
            "cordon-controller: the dashboard has no users yet: add one with `cordon-controller \
             dashboard user add NAME --role operator` ({})",
            users.path().display()
        );
    }
    let scheme = match config.transport {
        dashboard::config::Transport::Tls { .. } => "https",
        _ => "http",
    };
    eprintln!(
        "cordon-controller: the dashboard on {scheme}://{}/",
        config.listen
    );
    let listening = dashboard::Listening::new(&config.transport).map_err(|e| {
        eprintln!("cordon-controller: {e}");
        ExitCode::from(64)
    })?;
    tokio::spawn(async move {
        if let Err(e) = dashboard::serve(listener, listening, dashboard::router(dashboard)).await {
            eprintln!("cordon-controller: {e}");
        }
    });
    Ok(())
}

/// SIGTERM or SIGINT.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

/// `cordon-controller sessions`: the running controller's sessions, or a stop.
async fn sessions(common: Common, json: bool, stop: Option<String>) -> Result<ExitCode, ExitCode> {
    let admin =
        cordon_controller::config::ServiceConfig::admin_address(&common.config).map_err(|e| {
            eprintln!("cordon-controller: {e}");
            ExitCode::from(64)
        })?;
    let http = HttpClient::default();
    let unreachable = |e: cordon_controller::http::HttpError| {
        eprintln!(
            "cordon-controller: {e}\n(is `cordon-controller serve` running with this config?)"
        );
        ExitCode::from(69)
    };
    if let Some(id) = stop {
        let url = format!("http://{admin}/sessions/{id}/stop");
        return match http.call(http::Method::POST, &url, None, None).await {
            Ok(_) => {
                println!(
                    "session {id}: stopping (its sandbox is torn down and its work item stopped)"
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(cordon_controller::http::HttpError::Status { status: 404, .. }) => {
                eprintln!("cordon-controller: session {id} is not being served");
                Ok(ExitCode::from(66))
            }
            Err(e) => Err(unreachable(e)),
        };
    }
    let text = http
        .call(
            http::Method::GET,
            &format!("http://{admin}/sessions"),
            None,
            None,
        )
        .await
        .map_err(unreachable)?;
    if json {
        println!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    #[derive(serde::Deserialize)]
    struct Listing {
        sessions: Vec<cordon_controller::admin::SessionRow>,
    }
    let listing: Listing = serde_json::from_str(&text).map_err(|e| {
        eprintln!("cordon-controller: the admin API answered something unexpected: {e}");
        ExitCode::from(70)
    })?;
    print!("{}", cordon_controller::admin::table(&listing.sessions));
    Ok(ExitCode::SUCCESS)
}

/// Says on stderr what a reconcile did (before a start or a serve), and what it could not.
fn report_reconcile(result: Result<cordon_controller::sandbox::Reconciled, SandboxError>) {
    match result {
        Ok(report) => {
            for removed in report.removed {
                eprintln!("cordon-controller: reconcile removed {removed}");
            }
            for failed in report.failed {
                eprintln!("cordon-controller: reconcile marked {failed} failed");
            }
            for problem in report.problems {
                eprintln!("cordon-controller: reconcile could not remove {problem}");
            }
        }
        Err(e) => eprintln!("cordon-controller: reconcile: {e}"),
    }
}

async fn run(action: SandboxAction) -> Result<ExitCode, ExitCode> {
    match action {
        SandboxAction::Start {
            common,
            session,
            image,
        } => {
            let runtime = Runtime::open(load(&common)?).map_err(|e| fail(&e))?;
            // With the lock held no other start is in flight: anything half-made is a crash's.
            report_reconcile(runtime.reconcile().await);
            let started = runtime
                .start(&session, image.as_deref())
                .await
                .map_err(|e| fail(&e))?;
            println!(
                "session {} running at {} (image {}, agent {}, network {}, limits {}) in {} ms",
                started.id,
                started.sandbox_address,
                started.image,
                started.agent,
                started.support.network.as_str(),
                if started.support.cgroups {
                    "enforced"
                } else {
                    "NOT enforced: runsc cannot use cgroups on this host"
                },
                started.elapsed.as_millis()
            );
            Ok(ExitCode::SUCCESS)
        }
        SandboxAction::Exec {
            common,
            session,
            timeout_ms,
            cwd,
            command,
        } => {
            let config = load(&common)?;
            let (agent, token) = agent_endpoint(&config, &session).map_err(|e| fail(&e))?;
            let request = ExecRequest {
                argv: command,
                cwd,
                env: Default::default(),
                timeout_ms,
                stdin: None,
            };
            let outcome = cordon_controller::agent::exec(
                &HttpClient::default(),
                agent,
                &token,
                &request,
                |stderr, data| {
                    if stderr {
                        let _ = std::io::stderr().write_all(data.as_bytes());
                    } else {
                        let mut out = std::io::stdout();
                        let _ = out.write_all(data.as_bytes());
                        let _ = out.flush();
                    }
                },
            )
            .await
            .map_err(|e| {
                eprintln!("cordon-controller: {e}");
                ExitCode::from(70)
            })?;
            if let cordon_controller::agent::ExecOutcome::NotStarted(message) = &outcome {
                eprintln!("cordon-controller: {message}");
            }
            if outcome == cordon_controller::agent::ExecOutcome::TimedOut {
                eprintln!("cordon-controller: the command timed out and was killed");
            }
            Ok(ExitCode::from(outcome.exit_status().clamp(0, 255) as u8))
        }
        SandboxAction::Tool {
            common,
            session,
            name,
            input,
        } => {
            let config = load(&common)?;
            let input: serde_json::Value = serde_json::from_str(&input).map_err(|e| {
                eprintln!("cordon-controller: --input is not JSON: {e}");
                ExitCode::from(64)
            })?;
            let (agent, token) = agent_endpoint(&config, &session).map_err(|e| fail(&e))?;
            let call = cordon_sandbox_agent::tools::ToolCall { name, input };
            let result =
                cordon_controller::agent::tool(&HttpClient::default(), agent, &token, &call)
                    .await
                    .map_err(|e| {
                        eprintln!("cordon-controller: {e}");
                        ExitCode::from(70)
                    })?;
            println!("{}", result.text);
            Ok(if result.is_error {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        SandboxAction::Stop {
            common,
            session,
            end,
        } => {
            let runtime = Runtime::open(load(&common)?).map_err(|e| fail(&e))?;
            if end {
                runtime.end(&session).await.map_err(|e| fail(&e))?;
                println!("session {session} ended (its workspace goes after the retention)");
            } else {
                runtime.stop(&session).await.map_err(|e| fail(&e))?;
                println!("session {session} stopped (its workspace is kept)");
            }
            Ok(ExitCode::SUCCESS)
        }
        SandboxAction::List { common, json } => {
            // Without the controller lock: listing works while `serve` runs.
            let config = load(&common)?;
            let store = cordon_controller::store::Store::open(&config.state_dir.join("state.db"))
                .map_err(|e| fail(&SandboxError::from(e)))?;
            let sessions =
                cordon_controller::sandbox::list_sessions(&config, &store).map_err(|e| fail(&e))?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&sessions).unwrap_or_default()
                );
            } else {
                println!(
                    "{:<24} {:<9} {:<15} {:<8} {:<16} CREATED",
                    "SESSION", "STATE", "ADDRESS", "NETWORK", "IMAGE"
                );
                for s in sessions {
                    println!(
                        "{:<24} {:<9} {:<15} {:<8} {:<16} {}{}",
                        s.id,
                        s.state,
                        s.address,
                        s.network_mode.as_deref().unwrap_or("-"),
                        s.image.as_deref().unwrap_or("-"),
                        s.created_at,
                        s.error.map(|e| format!("  ({e})")).unwrap_or_default()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        SandboxAction::Reconcile { common } => {
            let runtime = Runtime::open(load(&common)?).map_err(|e| fail(&e))?;
            let report = runtime.reconcile().await.map_err(|e| fail(&e))?;
            for removed in &report.removed {
                println!("removed {removed}");
            }
            for failed in &report.failed {
                println!("marked failed: {failed}");
            }
            for problem in &report.problems {
                eprintln!("cordon-controller: reconcile could not remove {problem}");
            }
            Ok(if report.problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(70)
            })
        }
    }
}

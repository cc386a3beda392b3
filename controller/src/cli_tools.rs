//! `cordon-controller tools ...` and `agents sync`: check the custom tools file, print its CMA
//! `tools` entries, register them on an agent (docs/TOOLS.md).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use cordon_controller::config::SandboxConfig;
use cordon_controller::tools::file::{Handler, ToolSet};
use cordon_controller::tools::setup::ToolsConfig;

use crate::Common;

/// `println!` that stops quietly when standard output is closed (`tools schema | head`)
/// instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

#[derive(Debug, Subcommand)]
pub(crate) enum ToolsAction {
    /// Loads the tools file as `serve` does and reports every problem at once (exit 65), or
    /// lists the tools it declares.
    Check {
        #[command(flatten)]
        common: Common,
        /// Check this file instead of `[controller] tools`.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Prints the `tools` entries of a CMA agent definition, one per declared tool (JSON).
    Schema {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AgentsAction {
    /// Adds or updates the tools file's tools on a CMA agent through the Agents API (with the
    /// organization API key in ANTHROPIC_API_KEY), leaving the agent's other tools as they
    /// were; tools Cordon added earlier that the file no longer declares are removed.
    Sync {
        #[command(flatten)]
        common: Common,
        /// The agent (`agent_...`).
        #[arg(long)]
        agent: String,
        /// Print the change, make none.
        #[arg(long)]
        dry_run: bool,
    },
    /// Local sessions (docs/OPEN-MODELS.md): adds an agent definition (a TOML file) to the
    /// running controller.
    Create {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        file: PathBuf,
    },
    /// Replaces a local agent's definition (the file's `name` says which); sessions already
    /// started keep the definition they began with.
    Update {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        file: PathBuf,
        /// Only if the agent is at this version now.
        #[arg(long)]
        version: Option<i64>,
    },
    /// Lists the local agents.
    List {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        json: bool,
    },
    /// Prints one local agent's definition (JSON).
    Show {
        #[command(flatten)]
        common: Common,
        name: String,
    },
    /// Archives a local agent: it starts no new sessions.
    Archive {
        #[command(flatten)]
        common: Common,
        name: String,
    },
}

/// The checked tools file, or exit 64 (configuration) / 65 (the tools file's errors).
fn load(common: &Common, file: Option<&Path>) -> Result<ToolSet, ExitCode> {
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("cordon-controller: {e}");
        ExitCode::from(64)
    };
    let sandbox = SandboxConfig::load(&common.config).map_err(|e| fail(&e))?;
    let config = ToolsConfig::load(&common.config, &sandbox).map_err(|e| fail(&e))?;
    let Some(path) = file.map(Path::to_path_buf).or(config.path.clone()) else {
        eprintln!(
            "cordon-controller: {} sets no [controller] tools; set it to your tools file (or pass \
             --file)",
            common.config.display()
        );
        return Err(ExitCode::from(64));
    };
    cordon_controller::tools::file::load(&path, &config.context()).map_err(|errors| {
        eprintln!(
            "cordon-controller: {} has {} error(s):\n  {}",
            path.display(),
            errors.len(),
            errors.join("\n  ")
        );
        ExitCode::from(65)
    })
}

pub(crate) fn run(action: ToolsAction) -> Result<ExitCode, ExitCode> {
    match action {
        ToolsAction::Check { common, file } => {
            let set = load(&common, file.as_deref())?;
            let path = set.path.as_deref().unwrap_or(Path::new("?"));
            say!("{}: {} tool(s), no errors", path.display(), set.tools.len());
            for tool in set.tools.values() {
                let what = match &tool.handler {
                    Handler::Run(run) => format!(
                        "run {} on image {}{}",
                        run.command.join(" "),
                        run.image.as_deref().unwrap_or("(default)"),
                        if run.mounts.is_empty() {
                            String::new()
                        } else {
                            format!(
                                ", mounts {}",
                                run.mounts
                                    .iter()
                                    .map(|m| format!(
                                        "{}:{}{}",
                                        m.source.display(),
                                        m.target,
                                        if m.writable { " (writable)" } else { "" }
                                    ))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        }
                    ),
                    Handler::Http(http) => format!("http {} {}", http.method, http.url),
                    Handler::Browser => "built-in: the session's browser".to_string(),
                };
                say!(
                    "  {:<24} {what}; timeout {} ms, concurrency {}",
                    tool.name,
                    tool.timeout.as_millis(),
                    tool.concurrency
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ToolsAction::Schema { common, file } => {
            let set = load(&common, file.as_deref())?;
            let text = serde_json::to_string_pretty(&set.agent_entries()).unwrap_or_default();
            say!("{text}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub(crate) async fn agents(action: AgentsAction) -> Result<ExitCode, ExitCode> {
    use cordon_controller::cma::agent_tools::sync;
    use cordon_controller::cma::client::{CmaClient, Key};
    let (common, agent, dry_run) = match action {
        AgentsAction::Sync {
            common,
            agent,
            dry_run,
        } => (common, agent, dry_run),
        AgentsAction::Create { common, file } => {
            return crate::cli_local::create(&common, &file).await;
        }
        AgentsAction::Update {
            common,
            file,
            version,
        } => return crate::cli_local::update(&common, &file, version).await,
        AgentsAction::List { common, json } => return crate::cli_local::list(&common, json).await,
        AgentsAction::Show { common, name } => return crate::cli_local::show(&common, &name).await,
        AgentsAction::Archive { common, name } => {
            return crate::cli_local::archive(&common, &name).await;
        }
    };
    let usage = |message: String| {
        eprintln!("cordon-controller: {message}");
        ExitCode::from(64)
    };
    if agent.is_empty() || agent.contains(['/', '?', '#']) || agent.contains(char::is_whitespace) {
        return Err(usage(format!(
            "--agent {agent:?} is not an agent id (agent_...)"
        )));
    }
    let key = std::env::var("ANTHROPIC_API_KEY")
        .ok()
        .filter(|k| !k.trim().is_empty())
        .ok_or_else(|| {
            usage(
                "ANTHROPIC_API_KEY is not set: export the organization API key \
                 (sk-ant-api03-...), which the Agents API takes"
                    .into(),
            )
        })?;
    let set = load(&common, None)?;
    let file = cordon_config::read(&common.config).map_err(|e| usage(e.to_string()))?;
    let base_url = &file.sections.controller.base_url;
    let client =
        CmaClient::new(base_url, "", Key::new(key), "cordon-agents-sync").map_err(usage)?;
    match sync(&client, &agent, &set.agent_entries(), dry_run).await {
        Ok((plan, version)) => {
            say!("agent {agent} (version {}):", plan.version.unwrap_or(0));
            say!("{plan}");
            if dry_run {
                say!("dry run: nothing changed");
            } else if plan.is_noop() {
                say!("agent {agent} already has these tools");
            } else {
                say!(
                    "agent {agent} updated to version {}",
                    version.map_or("?".to_string(), |v| v.to_string())
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let hint = if e.is_unauthorized() {
                "\n(the Agents API takes the organization API key, sk-ant-api03-..., in \
                 ANTHROPIC_API_KEY; an environment key is refused)"
            } else {
                ""
            };
            eprintln!("cordon-controller: {e}{hint}");
            Err(ExitCode::from(if e.is_not_found() {
                66
            } else if e.is_unavailable() {
                69
            } else {
                70
            }))
        }
    }
}

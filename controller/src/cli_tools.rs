//! `cordon-controller tools ...`: check the custom tools file, print its CMA `tools` entries
//! (docs/TOOLS.md).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use cordon_controller::config::SandboxConfig;
use cordon_controller::tools::file::{Handler, ToolSet};
use cordon_controller::tools::setup::ToolsConfig;

use crate::Common;

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
            println!("{}: {} tool(s), no errors", path.display(), set.tools.len());
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
                };
                println!(
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
            println!("{text}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

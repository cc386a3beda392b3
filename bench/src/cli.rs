//! The command line: one subcommand per measurement.

mod compare;
mod load;
mod report;
mod soak;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(version, about = "Cordon measurements")]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generates HTTPS load against one server or proxy and prints the result as JSON.
    Load(load::LoadArgs),
    /// Runs the scenarios against direct, Cordon, Squid and mitmdump side by side and writes
    /// bench/results/<date>.json.
    Compare(compare::CompareArgs),
    /// Writes docs/BENCHMARKS.md and its plots from a `compare` result.
    Report(report::ReportArgs),
    /// Starts COUNT sandboxes one after another behind a fresh proxy, keeps them all running,
    /// then stops them: start and stop latency, memory per idle sandbox. Needs root and runsc.
    Sandboxes {
        #[arg(long, default_value_t = 20)]
        count: usize,
        /// Where to write the JSON result (a file named by the date).
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
        /// A Markdown file (docs/BENCHMARKS.md) whose sandbox section is rewritten with the
        /// figures against their targets.
        #[arg(long)]
        doc: Option<PathBuf>,
    },
    /// The session's browser: the first browser_navigate of a sandbox (Chromium's cold
    /// start), warm navigate + screenshot, memory with the browser open, against curl of the
    /// same page in the same sandbox. Needs root, runsc and the browser image.
    Browser {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
        /// A Markdown file (docs/BENCHMARKS.md) whose browser section is rewritten.
        #[arg(long)]
        doc: Option<PathBuf>,
    },
    /// Soak: sessions registered on their own loopback addresses, some coming and going, and
    /// mixed traffic at a target rate for minutes; the proxy's descriptors, memory,
    /// connections and sessions judged for leaks. Writes bench/results/soak-<date>.json.
    Soak(soak::SoakArgs),
    /// The local agent loop's own time per model turn (docs/OPEN-MODELS.md), against the
    /// same model requests and tool calls made directly. Needs root and runsc.
    LocalLoop {
        #[arg(long, default_value_t = 200)]
        turns: usize,
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
        /// A Markdown file (docs/BENCHMARKS.md) whose local loop section is rewritten.
        #[arg(long)]
        doc: Option<PathBuf>,
    },
    /// Custom tool call overhead: a run tool warm and cold against the handler's own time, an
    /// http tool against the upstream direct. Needs root and runsc.
    Tools {
        #[arg(long, default_value_t = 20)]
        calls: usize,
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
        /// A Markdown file (docs/BENCHMARKS.md) whose custom tools section is rewritten.
        #[arg(long)]
        doc: Option<PathBuf>,
    },
}

impl Cli {
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Load(args) => args.run().await,
            Command::Compare(args) => args.run().await,
            Command::Report(args) => args.run(),
            Command::Soak(args) => args.run().await,
            Command::Sandboxes { count, out, doc } => {
                let report = cordon_bench::sandboxes::run(count, &out, doc.as_deref())
                    .await
                    .map_err(anyhow::Error::msg)
                    .context("sandboxes")?;
                println!("{report}");
                Ok(())
            }
            Command::Browser { rounds, out, doc } => {
                let report = cordon_bench::browser::run(rounds, &out, doc.as_deref())
                    .await
                    .map_err(anyhow::Error::msg)
                    .context("browser")?;
                println!("{report}");
                Ok(())
            }
            Command::LocalLoop { turns, out, doc } => {
                let report = cordon_bench::local::run(turns, &out, doc.as_deref())
                    .await
                    .map_err(anyhow::Error::msg)
                    .context("local loop")?;
                println!("{report}");
                Ok(())
            }
            Command::Tools { calls, out, doc } => {
                let report = cordon_bench::tools::run(calls, &out, doc.as_deref())
                    .await
                    .map_err(anyhow::Error::msg)
                    .context("tools")?;
                println!("{report}");
                Ok(())
            }
        }
    }
}

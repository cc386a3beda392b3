//! `cordon-bench`: measurements (see the crate docs).
//!
//! ```text
//! cordon-bench sandboxes [--count 20] [--out bench/results]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(version, about = "Cordon measurements")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Starts COUNT sandboxes one after another behind a fresh proxy, keeps them all running,
    /// then stops them: start and stop latency, memory per idle sandbox. Needs root and runsc.
    Sandboxes {
        #[arg(long, default_value_t = 20)]
        count: usize,
        /// Where to write the JSON result (a file named by the date).
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Sandboxes { count, out } => {
            match cordon_bench::sandboxes::run(count, &out).await {
                Ok(report) => {
                    println!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("cordon-bench: {e}");
                    ExitCode::from(70)
                }
            }
        }
    }
}

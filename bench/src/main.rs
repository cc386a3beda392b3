//! `cordon-bench`: measurements (see the crate docs).
//!
//! ```text
//! cordon-bench load --connect 127.0.0.1:8443 --ca ca.pem https://bench.test:8443/small
//! cordon-bench compare [--duration 6] [--out bench/results]
//! cordon-bench report bench/results/<date>.json [--doc docs/BENCHMARKS.md]
//! cordon-bench sandboxes [--count 20] [--out bench/results] [--doc docs/BENCHMARKS.md]
//! cordon-bench tools [--calls 20] [--out bench/results] [--doc docs/BENCHMARKS.md]
//! cordon-bench browser [--rounds 5] [--out bench/results] [--doc docs/BENCHMARKS.md]
//! cordon-bench soak [--rate 10000] [--duration 600] [--sessions 200] [--doc docs/BENCHMARKS.md]
//! ```

mod cli;

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    match cli::Cli::parse().run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cordon-bench: {e:#}");
            ExitCode::from(70)
        }
    }
}

//! `cordon-cma-sim`: plays a scenario against a CMA worker (see the crate docs).
//!
//! ```text
//! cordon-cma-sim run --scenario s.toml [--listen 127.0.0.1:9300]
//!                    [--webhook-url http://127.0.0.1:9090/webhooks --webhook-secret-file F]
//!                    [--timeout-secs 600] [--report report.json]
//! cordon-cma-sim check --scenario s.toml
//! ```
//!
//! Exit codes: 0 the scenario passed (or is valid, for `check`), 1 it failed or timed out,
//! 64 bad arguments or scenario, 69 the listen address cannot be bound.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use cordon_cma_sim::Sim;
use cordon_cma_sim::scenario::Scenario;
use cordon_cma_sim::webhook::{Delivery, SigningKey};
use cordon_cma_sim::world::WorldConfig;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "A Claude Managed Agents simulator for Cordon's development and tests"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serves the CMA endpoints, opens the scenario's sessions, waits for the worker to play
    /// them through, prints the verdict.
    Run(RunArgs),
    /// Validates a scenario file.
    Check {
        #[arg(long)]
        scenario: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    #[arg(long)]
    scenario: PathBuf,
    /// Where to serve the CMA API (workers use http://ADDR as their base URL).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where to deliver webhooks (the controller's POST /webhooks).
    #[arg(long, requires = "webhook_secret_file")]
    webhook_url: Option<String>,
    /// A file holding the whsec_... signing secret.
    #[arg(long)]
    webhook_secret_file: Option<PathBuf>,
    /// The first webhook retry waits this long, doubling after (CMA: 5 s).
    #[arg(long, default_value_t = 5000)]
    webhook_backoff_ms: u64,
    /// The environment variable holding the environment key workers must present.
    #[arg(long, default_value = "CORDON_SIM_ENVIRONMENT_KEY")]
    environment_key_env: String,
    /// Hand out work items without a per-item sessions token (workers then use the
    /// environment key throughout).
    #[arg(long)]
    no_sessions_token: bool,
    /// The longest lease granted, in seconds.
    #[arg(long, default_value_t = 60)]
    max_ttl_secs: u64,
    /// Open the sessions only once this URL answers (the controller's /healthz), waiting at
    /// most 60 s; by default they open at once.
    #[arg(long)]
    start_after: Option<String>,
    /// Give up (and fail) after this long.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// Also write the JSON report here.
    #[arg(long)]
    report: Option<PathBuf>,
}

/// Waits until `url` answers with any HTTP status.
async fn wait_for(url: &str, patience: Duration) -> Result<(), String> {
    use hyper_util::client::legacy::Client;
    let client: Client<_, http_body_util::Empty<bytes::Bytes>> =
        Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("--start-after {url:?} is not a URL: {e}"))?;
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if client.get(uri.clone()).await.is_ok() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "{url} did not answer within {} s",
                patience.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("cordon-cma-sim: {message}");
    ExitCode::from(code)
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
    match Cli::parse().command {
        Command::Check { scenario } => match Scenario::load(&scenario) {
            Ok(s) => {
                println!(
                    "{}: {} session(s), {} tool call(s)",
                    scenario.display(),
                    s.sessions.len(),
                    s.sessions.iter().map(|s| s.steps.len()).sum::<usize>()
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(64, e),
        },
        Command::Run(args) => run(args).await,
    }
}

async fn run(args: RunArgs) -> ExitCode {
    let scenario = match Scenario::load(&args.scenario) {
        Ok(s) => s,
        Err(e) => return fail(64, e),
    };
    let delivery = match (&args.webhook_url, &args.webhook_secret_file) {
        (Some(url), Some(file)) => {
            let key = match std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))
                .and_then(|text| {
                    SigningKey::parse(&text).map_err(|e| format!("{}: {e}", file.display()))
                }) {
                Ok(key) => key,
                Err(e) => return fail(64, e),
            };
            Some(Delivery {
                url: url.clone(),
                key,
                backoff: Duration::from_millis(args.webhook_backoff_ms),
            })
        }
        _ => None,
    };
    let mut config = WorldConfig {
        sessions_token: !args.no_sessions_token,
        max_ttl: Duration::from_secs(args.max_ttl_secs.max(1)),
        ..WorldConfig::default()
    };
    if let Ok(key) = std::env::var(&args.environment_key_env) {
        if key.is_empty() {
            return fail(64, format!("{} is set but empty", args.environment_key_env));
        }
        config.environment_key = key;
    }
    let sim = match Sim::start(&scenario, config, delivery, args.listen).await {
        Ok(sim) => sim,
        Err(e) => return fail(69, format!("cannot listen on {}: {e}", args.listen)),
    };
    println!(
        "cordon-cma-sim: serving environment {} at {}",
        scenario.environment_id,
        sim.base_url()
    );
    let _ = std::io::stdout().flush();
    if let Some(url) = &args.start_after
        && let Err(e) = wait_for(url, Duration::from_secs(60)).await
    {
        return fail(1, e);
    }
    sim.open_sessions();
    let report = sim.wait(Duration::from_secs(args.timeout_secs)).await;
    print!("{}", report.summary());
    if let Some(path) = &args.report {
        let json = serde_json::to_string_pretty(&report).unwrap_or_default();
        if let Err(e) = std::fs::write(path, json) {
            return fail(70, format!("cannot write {}: {e}", path.display()));
        }
    }
    if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

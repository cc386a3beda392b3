//! `cordon-proxy`: the Cordon egress gateway.
//!
//! `cordon-proxy --config cordon.toml` serves; `cordon-proxy ca print --config cordon.toml`
//! writes the interception CA certificate (PEM) to stdout. Exit 64 on a bad configuration,
//! 69 when the gateway cannot start.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use cordon_proxy::config::ProxyConfig;
use cordon_proxy::intercept::ca::CertificateAuthority;
use cordon_proxy::state::GatewayState;

// The hot path allocates per request (headers, the input document, the audit line). jemalloc
// serves 15% more keep-alive requests per CPU-second than glibc malloc here, at about the same
// memory per idle connection; mimalloc was as fast but held twice the memory
// (bench/analysis.md has the A/B runs).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "cordon-proxy", version, about = "Cordon egress gateway")]
struct Cli {
    /// The configuration file (docs/CONFIG.md).
    #[arg(long, global = true, default_value = "cordon.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// The interception CA.
    Ca {
        #[command(subcommand)]
        action: CaAction,
    },
}

#[derive(Subcommand)]
enum CaAction {
    /// Write the CA certificate (PEM) to stdout, generating the CA first if needed.
    Print,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let config = match ProxyConfig::load(&cli.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("cordon-proxy: {e}");
            return ExitCode::from(64);
        }
    };
    match cli.command {
        Some(Command::Ca {
            action: CaAction::Print,
        }) => {
            match CertificateAuthority::load_or_generate(
                &config.tls.ca_cert,
                &config.tls.ca_key,
                config.tls.leaf_validity,
            ) {
                Ok(ca) => {
                    print!("{}", ca.cert_pem());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("cordon-proxy: {e}");
                    ExitCode::from(69)
                }
            }
        }
        None => {
            // Pingora retries a busy address for a while and then runs on without that
            // listener; fail at once instead, so a supervisor sees the error.
            if let Err(message) = check_listen_addresses(&config) {
                eprintln!("cordon-proxy: cannot start: {message}");
                return ExitCode::from(69);
            }
            let state = match GatewayState::new(config) {
                Ok(state) => Arc::new(state),
                Err(e) => {
                    eprintln!("cordon-proxy: cannot start: {e}");
                    return ExitCode::from(69);
                }
            };
            let generation = state.policy.generation();
            tracing::info!(generation = %generation.info().id, explicit = ?state.config.listen.explicit, transparent = ?state.config.listen.transparent, admin = %state.config.listen.admin, "cordon-proxy starting");
            match cordon_proxy::server::build(state.clone(), None) {
                Ok(server) => {
                    // `run` returns once the runtimes have stopped (SIGTERM after the grace
                    // period, SIGINT at once); then the buffered audit records are written.
                    server.run(pingora::server::RunArgs::default());
                    state.audit.close();
                    tracing::info!("cordon-proxy stopped");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("cordon-proxy: cannot start: {e}");
                    ExitCode::from(69)
                }
            }
        }
    }
}

/// Binds (and releases) every configured listen address, naming the first that is unusable.
fn check_listen_addresses(config: &ProxyConfig) -> Result<(), String> {
    let listen = &config.listen;
    let addresses = [
        ("proxy.explicit_listen", listen.explicit),
        ("proxy.transparent_listen", listen.transparent),
        ("proxy.admin_listen", Some(listen.admin)),
        ("proxy.metrics_listen", listen.metrics),
    ];
    for (key, address) in addresses {
        if let Some(address) = address {
            std::net::TcpListener::bind(address).map_err(|e| format!("{key} = {address}: {e}"))?;
        }
    }
    Ok(())
}

/// Log level from `CORDON_LOG` (default `info`), format from `CORDON_LOG_FORMAT` (`plain` or
/// `json`); pingora's `log` records are bridged into tracing.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CORDON_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("CORDON_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

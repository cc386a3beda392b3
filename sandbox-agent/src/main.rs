//! `cordon-sandbox-agent --listen ADDR --token-file PATH`: the controller's hands inside a
//! sandbox. See the crate docs for the API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use cordon_sandbox_agent::{AgentState, router};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Runs commands inside a Cordon sandbox for the controller"
)]
struct Args {
    /// Address to listen on: the sandbox's own address.
    #[arg(long)]
    listen: SocketAddr,
    /// File holding the per-session token the controller authenticates with.
    #[arg(long)]
    token_file: PathBuf,
    /// Working directory of commands that name none.
    #[arg(long, default_value = "/workspace")]
    workdir: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let token = match std::fs::read_to_string(&args.token_file) {
        Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
        Ok(_) => {
            eprintln!(
                "cordon-sandbox-agent: {} is empty",
                args.token_file.display()
            );
            return ExitCode::from(64);
        }
        Err(e) => {
            eprintln!(
                "cordon-sandbox-agent: cannot read {}: {e}",
                args.token_file.display()
            );
            return ExitCode::from(64);
        }
    };
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "cordon-sandbox-agent: cannot listen on {}: {e}",
                args.listen
            );
            return ExitCode::from(69);
        }
    };
    let app = router(Arc::new(AgentState::new(token, args.workdir)));
    match axum::serve(listener, app).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cordon-sandbox-agent: {e}");
            ExitCode::from(70)
        }
    }
}

//! `cordon-proxy`: not built yet (see the crate docs).

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("cordon-proxy: not implemented yet; this build only carries the workspace layout");
    ExitCode::from(69) // EX_UNAVAILABLE
}

//! Running the host tools the sandbox runtime drives (`ip`, `nft`, `runsc`, `nsenter`).
//!
//! These are the stable, documented interfaces of iproute2, nftables and gVisor; a netlink or
//! nftables library would add a second implementation of the same rules to keep in step with
//! the kernel, and runsc has no library interface at all.

use std::ffi::OsStr;
use std::process::{Output, Stdio};

/// A host command failed; the message names the command and quotes its error output.
#[derive(Debug, thiserror::Error)]
#[error("`{command}` {problem}")]
pub struct CommandError {
    pub command: String,
    pub problem: String,
}

/// Runs `program args...`, returning its standard output; an exit status other than 0 is an
/// error carrying the standard error text.
pub fn run<I, S>(program: impl AsRef<OsStr>, args: I) -> Result<String, CommandError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_with_input(program, args, None)
}

/// [`run`], with `input` written to the command's standard input.
pub fn run_with_input<I, S>(
    program: impl AsRef<OsStr>,
    args: I,
    input: Option<&str>,
) -> Result<String, CommandError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let program = program.as_ref();
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let command = std::iter::once(program)
        .chain(args.iter().map(|a| a.as_os_str()))
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = std::process::Command::new(program)
        .args(&args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CommandError {
            command: command.clone(),
            problem: format!("cannot be started: {e}"),
        })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        use std::io::Write;
        stdin.write_all(text.as_bytes()).map_err(|e| CommandError {
            command: command.clone(),
            problem: format!("did not take its input: {e}"),
        })?;
    }
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().map_err(|e| CommandError {
        command: command.clone(),
        problem: format!("failed: {e}"),
    })?;
    if status.success() {
        Ok(String::from_utf8_lossy(&stdout).into_owned())
    } else {
        Err(CommandError {
            command,
            problem: format!(
                "exited with {status}: {}",
                String::from_utf8_lossy(&stderr).trim()
            ),
        })
    }
}

/// Whether `program` can be run at all (found on PATH or at its path).
pub fn available(program: impl AsRef<OsStr>, version_arg: &str) -> bool {
    std::process::Command::new(program)
        .arg(version_arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

//! `bash`: one persistent `/bin/bash --noprofile --norc` per session, so the working
//! directory, variables and background jobs carry from one call to the next (`/bin/sh` on an
//! image without bash).
//!
//! Each command is written to a file and sourced, with standard input from /dev/null and
//! standard error merged into standard output, followed by a sentinel line carrying the exit
//! status: a syntax error stays inside the sourced file instead of swallowing the sentinel.
//! Output is capped at 100 KiB and ANSI escapes are removed; a timeout kills the shell's whole
//! process group and starts a fresh shell.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::LazyLock;
use std::time::Duration;

use rand::Rng;
use rand::distr::Alphanumeric;
use regex::bytes::Regex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout};

use super::ToolResult;

/// Output kept per call.
pub const OUTPUT_CAP: usize = 100 * 1024;
/// Timeout when the call names none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest timeout a call may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(600);

/// CSI, OSC and two-byte escape sequences.
static ANSI: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]").ok()
});

/// The running shell.
#[derive(Debug)]
struct Shell {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    nonce: String,
}

/// The session's shell, started on first use and after a timeout, an exit or a restart.
#[derive(Debug)]
pub struct BashSession {
    workdir: PathBuf,
    shell: Option<Shell>,
}

fn strip_ansi(bytes: &[u8]) -> Vec<u8> {
    match ANSI.as_ref() {
        Some(re) => re.replace_all(bytes, &b""[..]).into_owned(),
        None => bytes.to_vec(),
    }
}

/// SIGKILL to process group `pgid`. `kill(1)` rather than libc: the workspace forbids
/// `unsafe`, and this happens only on a timeout or restart.
fn kill_group(pgid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
}

impl BashSession {
    pub fn new(workdir: PathBuf) -> Self {
        Self {
            workdir,
            shell: None,
        }
    }

    fn spawn(&self) -> Result<Shell, String> {
        // An image without bash (Alpine and other busybox images) gets its POSIX shell: the
        // staging below (`.`, `printf`, `$?`) is POSIX, so commands run the same way there.
        let (program, args): (&str, &[&str]) = if Path::new("/bin/bash").exists() {
            ("/bin/bash", &["--noprofile", "--norc"])
        } else if Path::new("/bin/sh").exists() {
            ("/bin/sh", &[])
        } else {
            return Err(
                "this sandbox's image has no shell (neither /bin/bash nor /bin/sh): the file \
                 tools work, bash does not; use an image with a shell"
                    .into(),
            );
        };
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .current_dir(&self.workdir)
            .env_clear()
            // Everything but Anthropic's variables, which the sandbox must never hold.
            .envs(std::env::vars().filter(|(k, _)| !k.starts_with("ANTHROPIC_")))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {program}: {e}"))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("bash started without its pipes".into());
        };
        let nonce: String = rand::rng()
            .sample_iter(Alphanumeric)
            .take(16)
            .map(char::from)
            .collect();
        Ok(Shell {
            child,
            stdin,
            stdout,
            nonce,
        })
    }

    fn stop(&mut self) {
        if let Some(mut shell) = self.shell.take() {
            if let Some(pgid) = shell.child.id() {
                kill_group(pgid);
            }
            let _ = shell.child.start_kill();
        }
    }

    /// `restart: true`: a fresh shell (working directory and variables reset).
    pub async fn restart(&mut self) -> ToolResult {
        self.stop();
        match self.spawn() {
            Ok(shell) => {
                self.shell = Some(shell);
                ToolResult::ok("bash restarted")
            }
            Err(e) => ToolResult::error(e),
        }
    }

    /// Runs `command`; a non-zero exit status is an error result.
    pub async fn run(&mut self, command: &str, timeout_ms: Option<u64>) -> ToolResult {
        let timeout = timeout_ms.map_or(DEFAULT_TIMEOUT, Duration::from_millis);
        if timeout > MAX_TIMEOUT || timeout.is_zero() {
            return ToolResult::error(format!(
                "timeout_ms must be between 1 and {}",
                MAX_TIMEOUT.as_millis()
            ));
        }
        if self.shell.is_none() {
            match self.spawn() {
                Ok(shell) => self.shell = Some(shell),
                Err(e) => return ToolResult::error(e),
            }
        }
        let Some(shell) = self.shell.as_mut() else {
            return ToolResult::error("bash is not running");
        };
        // Named apart from the sentinel's nonce: a command can read its own script's name
        // ($BASH_SOURCE), and must not learn the sentinel from it.
        let name: String = rand::rng()
            .sample_iter(Alphanumeric)
            .take(16)
            .map(char::from)
            .collect();
        let script = std::env::temp_dir().join(format!("cordon-bash-{name}.sh"));
        if let Err(e) = std::fs::write(&script, command) {
            return ToolResult::error(format!("cannot stage the command: {e}"));
        }
        let line = format!(
            ". {} </dev/null 2>&1; printf '\\n__CORDON_{}__ %d\\n' \"$?\"\n",
            script.display(),
            shell.nonce
        );
        let marker = format!("\n__CORDON_{}__ ", shell.nonce).into_bytes();
        if let Err(e) = shell.stdin.write_all(line.as_bytes()).await {
            self.stop();
            return ToolResult::error(format!("bash is gone ({e}); it restarts on the next call"));
        }
        let outcome =
            tokio::time::timeout(timeout, read_until_marker(&mut shell.stdout, &marker)).await;
        let _ = std::fs::remove_file(&script);
        match outcome {
            Err(_) => {
                self.stop();
                ToolResult::error(format!(
                    "timed out after {} ms; the shell was killed with everything it started and \
                     restarts on the next call (working directory and variables reset)",
                    timeout.as_millis()
                ))
            }
            Ok(Read::Exited(output)) => {
                self.stop();
                let text = String::from_utf8_lossy(&strip_ansi(&output)).into_owned();
                ToolResult::error(format!(
                    "{text}\n[the shell exited; a new one starts on the next call]"
                ))
            }
            Ok(Read::Done {
                output,
                dropped,
                status,
            }) => {
                let mut text = String::from_utf8_lossy(&strip_ansi(&output)).into_owned();
                if dropped > 0 {
                    text.push_str(&format!(
                        "\n[output truncated: {dropped} more bytes were not kept (cap {} KiB)]",
                        OUTPUT_CAP / 1024
                    ));
                }
                if status == 0 {
                    ToolResult::ok(text)
                } else {
                    ToolResult::error(
                        format!("{text}\n[exit code {status}]")
                            .trim_start()
                            .to_string(),
                    )
                }
            }
        }
    }
}

impl Drop for BashSession {
    fn drop(&mut self) {
        self.stop();
    }
}

enum Read {
    Done {
        output: Vec<u8>,
        dropped: usize,
        status: i32,
    },
    Exited(Vec<u8>),
}

/// Reads until `marker` and the status after it, keeping at most [`OUTPUT_CAP`] bytes.
async fn read_until_marker(stdout: &mut ChildStdout, marker: &[u8]) -> Read {
    let mut kept: Vec<u8> = Vec::new();
    let mut window: Vec<u8> = Vec::new();
    let mut dropped = 0usize;
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = match stdout.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                kept.extend_from_slice(&window);
                return Read::Exited(kept);
            }
            Ok(n) => n,
        };
        window.extend_from_slice(&chunk[..n]);
        if let Some(at) = window.windows(marker.len()).position(|w| w == marker)
            && let Some(end) = window[at + marker.len()..].iter().position(|b| *b == b'\n')
        {
            let status = std::str::from_utf8(&window[at + marker.len()..at + marker.len() + end])
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(-1);
            keep(&mut kept, &mut dropped, &window[..at]);
            return Read::Done {
                output: kept,
                dropped,
                status,
            };
        }
        // Move all but a marker's length into the kept output (or count it as dropped).
        let safe = window.len().saturating_sub(marker.len() + 16);
        if safe > 0 {
            let head: Vec<u8> = window.drain(..safe).collect();
            keep(&mut kept, &mut dropped, &head);
        }
    }
}

fn keep(kept: &mut Vec<u8>, dropped: &mut usize, bytes: &[u8]) {
    let room = OUTPUT_CAP.saturating_sub(kept.len());
    let take = room.min(bytes.len());
    kept.extend_from_slice(&bytes[..take]);
    *dropped += bytes.len() - take;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn state_persists_and_failures_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut bash = BashSession::new(dir.path().to_path_buf());
        let r = bash
            .run("mkdir sub && cd sub && export GREETING=hi", None)
            .await;
        assert!(!r.is_error, "{r:?}");
        let r = bash.run("pwd; echo $GREETING; echo err >&2", None).await;
        assert!(r.text.ends_with("sub\nhi\nerr\n"), "{r:?}");
        let r = bash.run("false", None).await;
        assert!(r.is_error && r.text.contains("[exit code 1]"), "{r:?}");
        let r = bash.run("true", None).await;
        assert_eq!(r.text, "(no output)");
        // A syntax error is the command's, not the session's.
        let r = bash.run("echo \"unterminated", None).await;
        assert!(r.is_error, "{r:?}");
        let r = bash.run("echo still here", None).await;
        assert_eq!(r.text, "still here\n");
        // Colours are removed; stdin is /dev/null.
        let r = bash
            .run("printf '\\033[31mred\\033[0m\\n'; cat", None)
            .await;
        assert_eq!(r.text, "red\n");
    }

    #[tokio::test]
    async fn timeouts_exits_restarts_and_caps() {
        let dir = tempfile::tempdir().unwrap();
        let mut bash = BashSession::new(dir.path().to_path_buf());
        bash.run("cd /; X=1", None).await;
        let r = bash.run("sleep 30 & sleep 30", Some(300)).await;
        assert!(r.is_error && r.text.contains("timed out"), "{r:?}");
        let r = bash.run("pwd; echo ${X:-unset}", None).await;
        assert!(
            r.text.ends_with("unset\n"),
            "a fresh shell after a timeout: {r:?}"
        );
        let r = bash.run("exit 3", None).await;
        assert!(r.is_error && r.text.contains("shell exited"), "{r:?}");
        assert_eq!(bash.run("echo back", None).await.text, "back\n");
        bash.run("Y=2", None).await;
        assert_eq!(bash.restart().await.text, "bash restarted");
        assert_eq!(bash.run("echo ${Y:-unset}", None).await.text, "unset\n");
        let r = bash
            .run("head -c 300000 /dev/zero | tr '\\0' x", None)
            .await;
        assert!(r.text.len() < OUTPUT_CAP + 200, "{}", r.text.len());
        assert!(
            r.text.contains("[output truncated"),
            "{}",
            &r.text[r.text.len() - 100..]
        );
        assert!(bash.run("true", Some(10_000_000)).await.is_error);
    }
}

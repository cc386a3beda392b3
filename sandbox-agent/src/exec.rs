//! Running one command: output streamed as it comes, a timeout that kills the whole process
//! group, and an exit status that says how the command ended.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// Longest timeout a request may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Timeout when the request names none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// What to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// The program and its arguments; not run through a shell.
    pub argv: Vec<String>,
    /// Working directory; default `/workspace`.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Milliseconds before the command is killed; default 120 000, at most 3 600 000.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Bytes written to the command's standard input (then closed).
    #[serde(default)]
    pub stdin: Option<String>,
}

/// One line of an `/exec` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum ExecEvent {
    /// Output, as it arrives. Bytes that are not UTF-8 are replaced (U+FFFD).
    Output { stream: Stream, data: String },
    /// The command ended. `exit_code` is absent when a signal ended it.
    Exit {
        exit_code: Option<i32>,
        signal: Option<i32>,
        timed_out: bool,
    },
    /// The command could not be started.
    Error { message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Why a request is refused before anything runs.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExecError {
    #[error("argv is empty; give the program and its arguments")]
    EmptyArgv,
    #[error("timeout_ms {0} is over the limit of {max}", max = MAX_TIMEOUT.as_millis())]
    Timeout(u64),
}

impl ExecRequest {
    pub fn validate(&self) -> Result<Duration, ExecError> {
        if self.argv.is_empty() || self.argv[0].is_empty() {
            return Err(ExecError::EmptyArgv);
        }
        match self.timeout_ms {
            None => Ok(DEFAULT_TIMEOUT),
            Some(ms) if Duration::from_millis(ms) > MAX_TIMEOUT => Err(ExecError::Timeout(ms)),
            Some(ms) => Ok(Duration::from_millis(ms)),
        }
    }
}

/// Runs `request`, sending its events to `events` until the exit event. `default_cwd` is used
/// when the request names no directory.
pub async fn run(
    request: ExecRequest,
    timeout: Duration,
    default_cwd: &str,
    events: mpsc::Sender<ExecEvent>,
) {
    let mut command = tokio::process::Command::new(&request.argv[0]);
    command
        .args(&request.argv[1..])
        .current_dir(request.cwd.as_deref().unwrap_or(default_cwd))
        .envs(&request.env)
        .stdin(if request.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills what it started too.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let _ = events
                .send(ExecEvent::Error {
                    message: format!("cannot start {:?}: {e}", request.argv[0]),
                })
                .await;
            return;
        }
    };
    if let (Some(input), Some(mut stdin)) = (request.stdin, child.stdin.take()) {
        tokio::spawn(async move {
            let _ = stdin.write_all(input.as_bytes()).await;
        });
    }
    let readers = [
        child
            .stdout
            .take()
            .map(|s| tokio::spawn(pump(s, Stream::Stdout, events.clone()))),
        child
            .stderr
            .take()
            .map(|s| tokio::spawn(pump(s, Stream::Stderr, events.clone()))),
    ];
    let pgid = child.id();
    let deadline = tokio::time::Instant::now() + timeout;
    let (status, mut timed_out) = match tokio::time::timeout_at(deadline, child.wait()).await {
        Ok(status) => (status.ok(), false),
        Err(_) => {
            if let Some(pgid) = pgid {
                kill_group(pgid);
            }
            (child.wait().await.ok(), true)
        }
    };
    // The output ends when every writer is gone, background children included (`cmd &`): the
    // same deadline covers them, and past it the whole group is killed.
    for mut reader in readers.into_iter().flatten() {
        if tokio::time::timeout_at(deadline, &mut reader)
            .await
            .is_err()
        {
            if let Some(pgid) = pgid {
                kill_group(pgid);
            }
            timed_out = true;
            let _ = reader.await;
        }
    }
    use std::os::unix::process::ExitStatusExt;
    let _ = events
        .send(ExecEvent::Exit {
            exit_code: status.and_then(|s| s.code()),
            signal: status.and_then(|s| s.signal()),
            timed_out,
        })
        .await;
}

/// SIGKILL to the process group `pgid` (the command and everything it started). A system
/// call (rustix, safe), not `kill(1)`: an image need not have one (the default image does not:
/// no procps), and a timeout that cannot kill is no timeout.
fn kill_group(pgid: u32) {
    let Some(pgid) = rustix::process::Pid::from_raw(pgid as i32) else {
        return;
    };
    let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
}

async fn pump<R: AsyncRead + Unpin>(mut from: R, stream: Stream, events: mpsc::Sender<ExecEvent>) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut pending = Vec::new();
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                pending.extend_from_slice(&buf[..n]);
                // Send whole UTF-8 characters; keep a split one for the next read.
                let cut = utf8_boundary(&pending);
                let data = String::from_utf8_lossy(&pending[..cut]).into_owned();
                pending.drain(..cut);
                if !data.is_empty()
                    && events
                        .send(ExecEvent::Output { stream, data })
                        .await
                        .is_err()
                {
                    return;
                }
            }
        }
    }
    if !pending.is_empty() {
        let data = String::from_utf8_lossy(&pending).into_owned();
        let _ = events.send(ExecEvent::Output { stream, data }).await;
    }
}

/// The longest prefix of `bytes` that does not end inside a UTF-8 character.
fn utf8_boundary(bytes: &[u8]) -> usize {
    let len = bytes.len();
    for back in 1..=3.min(len) {
        let b = bytes[len - back];
        if b & 0xC0 != 0x80 {
            // `b` starts a character: is it complete?
            let need = match b {
                0xF0..=0xF7 => 4,
                0xE0..=0xEF => 3,
                0xC0..=0xDF => 2,
                _ => 1,
            };
            return if need > back { len - back } else { len };
        }
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(request: ExecRequest) -> Vec<ExecEvent> {
        let timeout = request.validate().unwrap();
        let (tx, mut rx) = mpsc::channel(64);
        tokio::spawn(run(request, timeout, "/", tx));
        let mut events = Vec::new();
        while let Some(e) = rx.recv().await {
            events.push(e);
        }
        events
    }

    fn request(argv: &[&str]) -> ExecRequest {
        ExecRequest {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            cwd: None,
            env: BTreeMap::new(),
            timeout_ms: None,
            stdin: None,
        }
    }

    fn output(events: &[ExecEvent], which: Stream) -> String {
        events
            .iter()
            .filter_map(|e| match e {
                ExecEvent::Output { stream, data } if *stream == which => Some(data.as_str()),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn streams_both_outputs_and_the_exit_code() {
        let events = collect(request(&["sh", "-c", "echo out; echo err >&2; exit 3"])).await;
        assert_eq!(output(&events, Stream::Stdout), "out\n");
        assert_eq!(output(&events, Stream::Stderr), "err\n");
        assert_eq!(
            events.last().unwrap(),
            &ExecEvent::Exit {
                exit_code: Some(3),
                signal: None,
                timed_out: false
            }
        );
    }

    #[tokio::test]
    async fn a_timeout_kills_the_process_group() {
        let mut r = request(&["sh", "-c", "sleep 30 & sleep 30; echo never"]);
        r.timeout_ms = Some(300);
        let started = std::time::Instant::now();
        let events = collect(r).await;
        assert!(started.elapsed() < Duration::from_secs(10));
        match events.last().unwrap() {
            ExecEvent::Exit {
                timed_out, signal, ..
            } => {
                assert!(*timed_out);
                assert_eq!(*signal, Some(9));
            }
            other => panic!("{other:?}"),
        }
        assert!(!output(&events, Stream::Stdout).contains("never"));
    }

    #[tokio::test]
    async fn background_children_holding_the_output_are_bounded_by_the_timeout() {
        let mut r = request(&["sh", "-c", "echo started; sleep 600 &"]);
        r.timeout_ms = Some(500);
        let started = std::time::Instant::now();
        let events = collect(r).await;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(output(&events, Stream::Stdout), "started\n");
        assert!(matches!(
            events.last().unwrap(),
            ExecEvent::Exit {
                exit_code: Some(0),
                timed_out: true,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn stdin_env_and_cwd_reach_the_command() {
        let mut r = request(&["sh", "-c", "cat; echo \" $GREETING\"; pwd"]);
        r.stdin = Some("hello".into());
        r.env.insert("GREETING".into(), "world".into());
        r.cwd = Some("/tmp".into());
        let events = collect(r).await;
        assert_eq!(output(&events, Stream::Stdout), "hello world\n/tmp\n");
    }

    #[tokio::test]
    async fn says_why_a_command_cannot_start() {
        let events = collect(request(&["/no/such/program"])).await;
        match &events[0] {
            ExecEvent::Error { message } => assert!(message.contains("/no/such/program")),
            other => panic!("{other:?}"),
        }
        assert_eq!(request(&[]).validate(), Err(ExecError::EmptyArgv));
        let mut r = request(&["true"]);
        r.timeout_ms = Some(10_000_000);
        assert!(matches!(r.validate(), Err(ExecError::Timeout(_))));
    }

    #[test]
    fn utf8_boundaries() {
        assert_eq!(utf8_boundary(b"abc"), 3);
        assert_eq!(utf8_boundary("é".as_bytes()), 2);
        assert_eq!(utf8_boundary(&"é".as_bytes()[..1]), 0);
        assert_eq!(utf8_boundary(&"a€".as_bytes()[..3]), 1);
    }
}

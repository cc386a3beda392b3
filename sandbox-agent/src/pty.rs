//! `GET /pty` (a WebSocket): an interactive shell on a pseudo-terminal, for the dashboard's
//! terminal (docs/DASHBOARD.md). The controller opens it with the agent's token and relays the
//! browser's frames; nothing else reaches the agent.
//!
//! Frames: binary both ways is the terminal's bytes (keystrokes in, output out); a text frame
//! from the client is a control message, `{"resize": [cols, rows]}`. The shell is `bash -l`
//! when the image has bash, else `sh -l`, in `/workspace`, with `TERM=xterm-256color`; it is a
//! session leader with the PTY as its controlling terminal, so `exit` or a closed socket ends
//! it and every process it started in its session (the group is killed).

use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::ws::{Message, WebSocket};
use futures_util::{SinkExt, StreamExt};

/// Shells open at once in one sandbox: a terminal per browser tab, bounded so a stuck client
/// cannot exhaust the sandbox's pids.
pub const MAX_TERMINALS: usize = 8;

/// Terminals open now.
pub static OPEN: AtomicUsize = AtomicUsize::new(0);

/// A terminal's size: the client's first word until its first resize.
const DEFAULT_SIZE: (u16, u16) = (80, 24);

/// Takes a slot, or `None` when [`MAX_TERMINALS`] are open.
pub fn reserve() -> Option<Slot> {
    let taken = OPEN.fetch_add(1, Ordering::SeqCst);
    if taken >= MAX_TERMINALS {
        OPEN.fetch_sub(1, Ordering::SeqCst);
        return None;
    }
    Some(Slot(()))
}

/// One open terminal's place among [`MAX_TERMINALS`]; freed when dropped.
#[derive(Debug)]
pub struct Slot(());

impl Drop for Slot {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Control {
    resize: (u16, u16),
}

/// The shell to run: bash if the image has it.
fn shell() -> &'static str {
    ["/bin/bash", "/usr/bin/bash"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("/bin/sh")
}

/// A shell on a new PTY: its controller side, the child, and the controller's two directions.
struct Shell {
    master: Box<dyn portable_pty::MasterPty + Send>,
    child: Box<dyn portable_pty::Child + Send + Sync>,
    reader: Box<dyn std::io::Read + Send>,
    writer: Box<dyn std::io::Write + Send>,
}

fn start(cwd: &str) -> Result<Shell, String> {
    let system = portable_pty::native_pty_system();
    let pair = system
        .openpty(portable_pty::PtySize {
            rows: DEFAULT_SIZE.1,
            cols: DEFAULT_SIZE.0,
            pixel_width: 0,
            pixel_height: 0,
        })
        .map_err(|e| format!("no pseudo-terminal: {e}"))?;
    let mut command = portable_pty::CommandBuilder::new(shell());
    command.arg("-l");
    command.cwd(if std::path::Path::new(cwd).is_dir() {
        cwd
    } else {
        "/"
    });
    command.env("TERM", "xterm-256color");
    let child = pair
        .slave
        .spawn_command(command)
        .map_err(|e| format!("cannot start {}: {e}", shell()))?;
    // The shell holds its side; ours would keep the terminal open after it exits.
    drop(pair.slave);
    let reader = pair.master.try_clone_reader().map_err(|e| e.to_string())?;
    let writer = pair.master.take_writer().map_err(|e| e.to_string())?;
    Ok(Shell {
        master: pair.master,
        child,
        reader,
        writer,
    })
}

/// Runs a shell for `socket` until either side ends. The PTY's reads and writes block, so each
/// direction has a thread of its own, bridged by channels.
pub async fn serve(mut socket: WebSocket, cwd: String, _slot: Slot) {
    let Shell {
        master,
        mut child,
        mut reader,
        mut writer,
    } = match start(&cwd) {
        Ok(shell) => shell,
        Err(e) => {
            let _ = socket
                .send(Message::Text(
                    format!("\r\n[cordon] cannot start a shell: {e}\r\n").into(),
                ))
                .await;
            return;
        }
    };
    let leader = child.process_id();
    let mut killer = child.clone_killer();
    let (output_tx, mut output) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    std::thread::spawn(move || {
        let mut buffer = vec![0u8; 16 * 1024];
        // EIO once the shell and everything on the terminal have exited.
        while let Ok(n @ 1..) = reader.read(&mut buffer) {
            if output_tx.blocking_send(buffer[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let (input, input_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        for chunk in input_rx {
            if writer
                .write_all(&chunk)
                .and_then(|()| writer.flush())
                .is_err()
            {
                break;
            }
        }
    });
    let status = tokio::task::spawn_blocking(move || child.wait());
    let (mut sink, mut stream) = socket.split();
    let to_client = async {
        while let Some(chunk) = output.recv().await {
            if sink.send(Message::Binary(chunk.into())).await.is_err() {
                return;
            }
        }
        let status = match status.await {
            Ok(Ok(status)) => format!("exit status {}", status.exit_code()),
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        let _ = sink
            .send(Message::Text(
                format!("\r\n[the shell ended: {status}]\r\n").into(),
            ))
            .await;
        let _ = sink.send(Message::Close(None)).await;
    };
    // Owns the PTY's controller side (for resizes): it is Send, not Sync.
    let from_client = async move {
        while let Some(Ok(message)) = stream.next().await {
            let typed = match message {
                Message::Binary(bytes) => bytes.to_vec(),
                Message::Text(text) => match serde_json::from_str::<Control>(&text) {
                    Ok(Control {
                        resize: (cols, rows),
                    }) => {
                        if (1..=1000).contains(&cols) && (1..=1000).contains(&rows) {
                            let _ = master.resize(portable_pty::PtySize {
                                rows,
                                cols,
                                pixel_width: 0,
                                pixel_height: 0,
                            });
                        }
                        continue;
                    }
                    // Not a control message: typed text sent as text.
                    Err(_) => text.as_bytes().to_vec(),
                },
                Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) => continue,
            };
            if input.send(typed).is_err() {
                break;
            }
        }
    };
    tokio::select! {
        () = to_client => {}
        () = from_client => {}
    }
    // The shell leads its own session and process group: end whatever it left running.
    if let Some(pid) = leader.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
    let _ = killer.kill();
}

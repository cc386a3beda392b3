//! Which resource limit stopped a tool call, from evidence the host has (measured on this
//! machine: runsc 20221219, ptrace platform, cgroup v1; docs/SANDBOXES.md, "Limits"):
//!
//! - **memory** (`memory_mb`): gVisor does not OOM-kill inside; the host's memory cgroup kills
//!   the whole sandbox (the sentry). Evidence: the kernel log's `Killed process <sentry pid>`,
//!   the pid read from runsc's state file (a foreground `runsc run` would also log `Exiting
//!   with status: 9`; sandboxes run detached, so that is only a fallback).
//! - **pids** (`pids`): gVisor enforces RLIMIT_NPROC inside, so a fork past it fails with
//!   EAGAIN and the sandbox lives on; the shell says `fork: ... Resource temporarily
//!   unavailable`. The host cgroup's task limit is only a backstop; reaching it kills the
//!   sentry with Go's `newosproc` / `resource temporarily unavailable` in runsc's boot log.
//! - **workspace_disk** (`workspace_max_mb`): the workspace's own filesystem is full (no free
//!   blocks or inodes, read with statvfs on the host) and the command said ENOSPC.
//! - cpu (`cpus`) throttles and never kills; it is not counted.

use std::io::Read;
use std::path::Path;

/// A limit that stopped a tool call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Memory,
    Pids,
    WorkspaceDisk,
}

impl Limit {
    /// The `limit` label of `cordon_controller_sandbox_limit_hits_total`.
    pub fn label(self) -> &'static str {
        match self {
            Limit::Memory => "memory",
            Limit::Pids => "pids",
            Limit::WorkspaceDisk => "workspace_disk",
        }
    }

    /// What the model (and the operator reading the transcript) is told.
    pub fn explain(self, config: &crate::config::SandboxConfig) -> String {
        match self {
            Limit::Memory => format!(
                "the sandbox went over its memory limit ({} MiB, [sandbox] memory_mb) and was \
                 killed; files written outside /workspace count against it too",
                config.memory_bytes / (1024 * 1024)
            ),
            Limit::Pids => format!(
                "the sandbox reached its process limit ({} processes, [sandbox] pids)",
                config.pids
            ),
            Limit::WorkspaceDisk => format!(
                "/workspace is full: its quota is {} MiB ([sandbox] workspace_max_mb); delete \
                 files there or write large scratch data elsewhere",
                config.workspace_max_mb
            ),
        }
    }
}

/// Whether a tool result that came back says a limit the sandbox survived was reached: the
/// process limit, or the workspace quota (`workspace` is its mount point on the host, `None`
/// when workspaces have no quota).
pub fn in_result(text: &str, workspace: Option<&Path>) -> Option<Limit> {
    let lower = text.to_ascii_lowercase();
    if (lower.contains("no space left on device") || lower.contains("disk quota exceeded"))
        && workspace.is_some_and(filesystem_full)
    {
        return Some(Limit::WorkspaceDisk);
    }
    // bash retries a fork that failed with EAGAIN, and reports EINTR when a child's exit
    // interrupts that wait: both are the process limit.
    let fork_failed = (lower.contains("resource temporarily unavailable")
        && (lower.contains("fork") || lower.contains("spawn")))
        || lower.contains("can't start new thread")
        || lower.contains("fork: interrupted system call");
    if fork_failed || lower.contains("cannot fork") || lower.contains("can't fork") {
        return Some(Limit::Pids);
    }
    None
}

/// Whether the filesystem at `dir` has (almost) no room left: no inodes, or less free than
/// 2 MiB or 1% of it, whichever is more (a write that failed leaves up to one of its chunks
/// free: measured, `dd bs=1M` into a full 16 MiB workspace left 332 KiB). `f_bavail`, not
/// `f_bfree`: the sandbox cannot use ext4's reserved blocks.
fn filesystem_full(dir: &Path) -> bool {
    let Ok(fs) = rustix::fs::statvfs(dir) else {
        return false;
    };
    let free = fs.f_bavail.saturating_mul(fs.f_frsize);
    let size = fs.f_blocks.saturating_mul(fs.f_frsize);
    fs.f_ffree == 0 || free < (size / 100).max(2 * 1024 * 1024)
}

/// Why a sandbox that stopped answering died, from runsc's `--debug-log` files in
/// `debug_dir` and the kernel log; `None` when nothing says a limit did it.
pub fn why_dead(debug_dir: &Path, sentry_pid: Option<u32>, cgroups: bool) -> Option<Limit> {
    let logs = read_logs(debug_dir);
    let lower = logs.to_ascii_lowercase();
    if lower.contains("newosproc") || lower.contains("error initializing first thread") {
        return Some(Limit::Pids);
    }
    let killed = lower.contains("exiting with status: 9");
    if let Some(pid) = sentry_pid
        && let Some(kernel) = kernel_log()
    {
        if kernel.contains(&format!("Killed process {pid} ")) {
            return Some(Limit::Memory);
        }
        return None;
    }
    // No kernel log to ask (not root, or a restricted dmesg): a SIGKILLed sentry under a
    // memory cgroup is the cgroup's OOM kill.
    (killed && cgroups).then_some(Limit::Memory)
}

fn read_logs(dir: &Path) -> String {
    let mut text = String::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if let Ok(content) = std::fs::read_to_string(entry.path()) {
                text.push_str(&content);
            }
        }
    }
    text
}

/// The kernel's log buffer as text, one record per line (read without blocking from
/// `/dev/kmsg`, which gives one record per read).
fn kernel_log() -> Option<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open("/dev/kmsg")
        .ok()?;
    let mut text = String::new();
    let mut record = vec![0u8; 8192];
    loop {
        match file.read(&mut record) {
            Ok(0) => break,
            Ok(n) => {
                let line = String::from_utf8_lossy(&record[..n]);
                // `priority,sequence,timestamp,flags;message`
                text.push_str(line.split_once(';').map_or(&line[..], |(_, m)| m));
                if !text.ends_with('\n') {
                    text.push('\n');
                }
            }
            // A record overwritten while reading: go on with the next.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::PIPE.raw_os_error()) => {}
            Err(_) => break,
        }
    }
    Some(text)
}

/// The host pid of the sandbox's sentry (gVisor's kernel), from runsc's state file for
/// `container` under runsc's `root`.
pub fn sentry_pid(runsc_root: &Path, container: &str) -> Option<u32> {
    super::runsc::state_pids(runsc_root, container).0
}

impl super::Runtime {
    /// Whether session `id`'s sandbox still runs. One failed `runsc state` is not a dead
    /// sandbox: it is asked again a moment later, as reconcile does.
    pub async fn sandbox_running(&self, id: &str) -> bool {
        let Ok(Some(record)) = self.store.get(id) else {
            return false;
        };
        if !record.state.is_live() {
            return false;
        }
        let names = self.names(&record);
        for attempt in 0..2 {
            if attempt > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            if self.container_running(&names).await {
                return true;
            }
        }
        false
    }

    /// Why session `id`'s sandbox, which stopped answering, died: the limit that killed it,
    /// if the evidence says so. Ask before stopping it (stopping removes runsc's logs).
    pub async fn why_dead(&self, id: &str) -> Option<Limit> {
        let record = self.store.get(id).ok()??;
        // A record that is not live may have lost its slot (and container id) to another.
        if !record.state.is_live() {
            return None;
        }
        let names = self.names(&record);
        let debug = self.session_dir(&record.sandbox_id).join("runsc-debug");
        let runsc_root = self.runsc.root.clone();
        // Unknown when this controller claimed a warm sandbox an earlier one started: runsc
        // uses cgroups wherever it can.
        let cgroups = self.support.get().is_none_or(|s| s.cgroups);
        super::blocking(move || {
            why_dead(&debug, sentry_pid(&runsc_root, &names.container), cgroups)
        })
        .await
    }

    /// Where session `id`'s workspace is mounted on the host; `None` without a quota
    /// (`workspace_max_mb = 0`: the workspace is a plain directory of the host's filesystem).
    pub fn workspace_path(&self, id: &str) -> Option<std::path::PathBuf> {
        if self.config.workspace_max_mb == 0 {
            return None;
        }
        let dir = self.store.workspace_dir(id).ok()??;
        Some(self.workspaces.dir(&dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_name_the_limit_they_hit() {
        let full = tempfile::tempdir().unwrap();
        assert_eq!(
            in_result("bash: fork: retry: Resource temporarily unavailable", None),
            Some(Limit::Pids)
        );
        assert_eq!(in_result("exit status 1", None), None);
        // ENOSPC counts only when the workspace really is full (a temp dir on the host is not).
        assert_eq!(
            in_result(
                "dd: error writing 'x': No space left on device",
                Some(full.path())
            ),
            None
        );
        assert_eq!(
            in_result("No space left on device", Some(Path::new("/nonexistent"))),
            None
        );
    }

    #[test]
    fn the_sentry_pid_is_read_from_runscs_state_file() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(
            root.path().join("c-00001_sandbox:c-00001.state"),
            r#"{"id": "c-00001", "goferPid": 4241, "sandbox": {"id": "c-00001", "pid": 4242}}"#,
        )
        .unwrap();
        assert_eq!(sentry_pid(root.path(), "c-00001"), Some(4242));
        assert_eq!(
            super::super::runsc::state_pids(root.path(), "c-00001"),
            (Some(4242), Some(4241))
        );
        assert_eq!(sentry_pid(root.path(), "c-00002"), None);
    }

    #[test]
    fn a_dead_sandbox_is_explained_by_its_logs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("runsc.log.boot.txt"),
            "fatal error: newosproc\n",
        )
        .unwrap();
        assert_eq!(why_dead(dir.path(), None, true), Some(Limit::Pids));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("runsc.log.run.txt"),
            "I Exiting with status: 9\n",
        )
        .unwrap();
        assert_eq!(why_dead(dir.path(), None, true), Some(Limit::Memory));
        assert_eq!(why_dead(dir.path(), None, false), None, "no memory cgroup");
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(why_dead(empty.path(), None, true), None);
    }
}

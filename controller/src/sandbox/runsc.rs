//! gVisor's `runsc`: probing what works on this host, and running, listing and removing
//! session containers.
//!
//! runsc is started inside the session's netns with `nsenter --net=` (setns, as DESIGN.md
//! records: `ip netns exec` remounts /sys and hides the cgroup hierarchy).

use std::path::{Path, PathBuf};

use crate::command::{CommandError, run};

/// How the sandbox gets its network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkMode {
    /// gVisor's own netstack (`--network=sandbox`): the stronger isolation.
    Sandbox,
    /// The host kernel's stack inside the session netns (`--network=host`): what works where
    /// netstack refuses to start.
    Host,
}

impl NetworkMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::Sandbox => "sandbox",
            NetworkMode::Host => "host",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "sandbox" => Some(NetworkMode::Sandbox),
            "host" => Some(NetworkMode::Host),
            _ => None,
        }
    }
}

/// What the probe found: the network mode, and whether runsc can apply cgroup limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostSupport {
    pub network: NetworkMode,
    pub cgroups: bool,
}

/// The runsc binary and its state root.
#[derive(Debug, Clone)]
pub struct Runsc {
    pub binary: PathBuf,
    /// `--root`: runsc's container state, under the controller's state directory.
    pub root: PathBuf,
    /// Run sandboxes detached ([`super::Runtime::detach_sandboxes`]): no `runsc run` waits
    /// beside each (about 5 MiB of memory each), and this process, a child subreaper, reaps
    /// them.
    pub detach: bool,
}

/// The host pids of container `id`'s sandbox (gVisor's sentry) and gofer, from runsc's state
/// file under `root`.
pub fn state_pids(root: &Path, id: &str) -> (Option<u32>, Option<u32>) {
    let file = root.join(format!("{id}_sandbox:{id}.state"));
    let Some(state) = std::fs::read_to_string(file)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
    else {
        return (None, None);
    };
    let pid = |v: Option<&serde_json::Value>| {
        v.and_then(serde_json::Value::as_u64)
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0)
    };
    // runsc 20221219 writes lower-case keys; some releases capitalise them.
    let sandbox = state.get("sandbox").or_else(|| state.get("Sandbox"));
    (
        pid(sandbox.and_then(|s| s.get("pid").or_else(|| s.get("Pid")))),
        pid(state.get("goferPid").or_else(|| state.get("GoferPid"))),
    )
}

/// Waits (up to `limit`) for the processes `pids` to exit and reaps them, if they are this
/// process's children (a detached sandbox's, reparented to this subreaper); others are left.
fn reap(pids: &[u32], limit: std::time::Duration) -> bool {
    use rustix::process::{Pid, WaitOptions, waitpid};
    let deadline = std::time::Instant::now() + limit;
    let mut all = true;
    for raw in pids {
        let Some(pid) = i32::try_from(*raw).ok().and_then(Pid::from_raw) else {
            continue;
        };
        loop {
            match waitpid(Some(pid), WaitOptions::NOHANG) {
                Ok(Some(_)) => break,
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                // Not ours (ECHILD), or still running at the deadline.
                _ => {
                    all = false;
                    break;
                }
            }
        }
    }
    all
}

impl Runsc {
    fn global_args(&self, support: HostSupport) -> Vec<String> {
        let mut args = vec![
            format!("--root={}", self.root.display()),
            format!("--network={}", support.network.as_str()),
            "--overlay2=root:memory".to_string(),
        ];
        if !support.cgroups {
            args.push("--ignore-cgroups".into());
        }
        args
    }

    /// `nsenter`'s arguments for `runsc run` of `bundle` as `id` inside `netns`; runsc's own
    /// log goes to files in `debug_log` (a directory), where its reason for a failed start is.
    fn run_args(
        &self,
        netns: &Path,
        bundle: &Path,
        id: &str,
        support: HostSupport,
        debug_log: Option<&Path>,
    ) -> Vec<String> {
        let mut args = vec![
            format!("--net={}", netns.display()),
            self.binary.display().to_string(),
        ];
        args.extend(self.global_args(support));
        if let Some(dir) = debug_log {
            args.push(format!("--debug-log={}/", dir.display()));
        }
        args.push("run".into());
        // Detached, `runsc run` returns once the container started instead of waiting beside
        // it for the sandbox's whole life (measured: that process held about 5 MiB of private
        // memory per sandbox). Probes run to their end.
        if self.detach && debug_log.is_some() {
            args.push("--detach".into());
        }
        args.extend([format!("--bundle={}", bundle.display()), id.into()]);
        args
    }

    /// runsc's own reason for a failed start, from the files its `--debug-log` wrote into
    /// `dir`: the fatal lines (runsc's exit message is only "cannot read client sync file"),
    /// else its last warnings.
    pub fn failure_reason(dir: &Path) -> Option<String> {
        let mut fatal = Vec::new();
        let mut warnings = Vec::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        for file in files {
            let Ok(text) = std::fs::read_to_string(&file) else {
                continue;
            };
            for line in text.lines() {
                let lower = line.to_ascii_lowercase();
                if lower.contains("fatal error") || lower.contains("fatal:") {
                    fatal.push(line.trim().to_string());
                } else if line.starts_with('W') || line.starts_with('E') {
                    warnings.push(line.trim().to_string());
                }
            }
        }
        fatal.dedup();
        if !fatal.is_empty() {
            return Some(fatal.join("; "));
        }
        let n = warnings.len();
        (n > 0).then(|| warnings[n.saturating_sub(3)..].join("; "))
    }

    /// `runsc --version`'s first line.
    pub fn version(&self) -> Result<String, CommandError> {
        Ok(run(&self.binary, ["--version"])?
            .lines()
            .next()
            .unwrap_or("")
            .to_string())
    }

    /// Starts the bundle at `bundle` as container `id` inside the netns at `netns`, as a
    /// background `runsc run` in its own process group that outlives this process. Not
    /// `--detach`: the foreground `runsc run` is the sandbox's parent and reaps it the moment it
    /// exits, so a stop never waits on whatever reaps orphans on this host (seconds, on some).
    /// runsc's output and the container's (the agent's log) go to `log`.
    pub fn spawn(
        &self,
        netns: &Path,
        bundle: &Path,
        id: &str,
        support: HostSupport,
        log: &Path,
        debug_log: &Path,
    ) -> Result<std::process::Child, CommandError> {
        let args = self.run_args(netns, bundle, id, support, Some(debug_log));
        let command = format!("nsenter {}", args.join(" "));
        let problem = |problem: String| CommandError {
            command: command.clone(),
            problem,
        };
        let file = std::fs::File::create(log)
            .map_err(|e| problem(format!("cannot create its log {}: {e}", log.display())))?;
        let err = file
            .try_clone()
            .map_err(|e| problem(format!("cannot share its log: {e}")))?;
        use std::os::unix::process::CommandExt;
        std::process::Command::new("nsenter")
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(file)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| problem(format!("cannot be started: {e}")))
    }

    /// Runs the bundle at `bundle` to completion (probes).
    fn run_to_end(
        &self,
        netns: &Path,
        bundle: &Path,
        id: &str,
        support: HostSupport,
    ) -> Result<(), CommandError> {
        let args = self.run_args(netns, bundle, id, support, None);
        let result = run("nsenter", args).map(|_| ());
        let _ = self.remove(id, Some(netns));
        result
    }

    /// Kills and deletes container `id`; one that does not exist is not an error. `netns` is
    /// the namespace it runs in, if it still exists: runsc reaches a sandbox's control socket
    /// (an abstract socket, so per network namespace) only from there.
    pub fn remove(&self, id: &str, netns: Option<&Path>) -> Result<(), CommandError> {
        if !self.exists(id) {
            return Ok(());
        }
        let runsc = |args: &[&str]| {
            let mut full: Vec<String> = Vec::new();
            let program = match netns.filter(|n| n.exists()) {
                Some(netns) => {
                    full.push(format!("--net={}", netns.display()));
                    full.push(self.binary.display().to_string());
                    PathBuf::from("nsenter")
                }
                None => self.binary.clone(),
            };
            full.push(format!("--root={}", self.root.display()));
            full.extend(args.iter().map(|a| a.to_string()));
            run(program, full)
        };
        let (sentry, gofer) = state_pids(&self.root, id);
        let _ = runsc(&["kill", id, "KILL"]);
        // A detached sandbox this process started is its child: reaped here, the delete is
        // immediate. A foreground one's `runsc run` removes the container after the kill;
        // give that a moment before forcing the delete, which waits (about 2 s) for a sandbox
        // process nobody reaps at once.
        let reaped = self.detach
            && reap(
                &[sentry, gofer].into_iter().flatten().collect::<Vec<_>>(),
                std::time::Duration::from_secs(2),
            );
        if !reaped {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            while self.exists(id) && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        if self.exists(id) {
            runsc(&["delete", "--force", id])?;
        }
        Ok(())
    }

    /// Whether runsc has state for container `id` (its state file, which `runsc run` removes
    /// when the container ends; reading the directory is much cheaper than `runsc list`).
    pub fn exists(&self, id: &str) -> bool {
        std::fs::read_dir(&self.root)
            .map(|entries| {
                entries.flatten().any(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.starts_with(&format!("{id}_sandbox:")))
                })
            })
            .unwrap_or(false)
    }

    /// Whether container `id` is running, asked from inside its netns (from anywhere else
    /// runsc cannot reach the sandbox's control socket and calls every container stopped).
    pub fn running(&self, id: &str, netns: &Path) -> bool {
        if !netns.exists() || !self.exists(id) {
            return false;
        }
        let out = run(
            "nsenter",
            [
                format!("--net={}", netns.display()),
                self.binary.display().to_string(),
                format!("--root={}", self.root.display()),
                "state".into(),
                id.into(),
            ],
        );
        out.ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .is_some_and(|state| state["status"] == "running")
    }

    /// Containers under this root: (id, status as runsc sees it from here, which says
    /// `stopped` for containers in other network namespaces: use only the ids).
    pub fn list(&self) -> Vec<(String, String)> {
        let root = format!("--root={}", self.root.display());
        let Ok(out) = run(&self.binary, [root.as_str(), "list", "--format=json"]) else {
            return Vec::new();
        };
        serde_json::from_str::<Option<Vec<serde_json::Value>>>(&out)
            .ok()
            .flatten()
            .unwrap_or_default()
            .iter()
            .filter_map(|c| {
                Some((
                    c["id"].as_str()?.to_string(),
                    c["status"].as_str().unwrap_or("unknown").to_string(),
                ))
            })
            .collect()
    }

    /// Finds what works on this host by running probe containers (which print nothing and
    /// exit) in `netns`; the answer is cached in `cache` per runsc version, since probing costs
    /// a few hundred milliseconds.
    pub fn probe(
        &self,
        netns: &Path,
        probe_bundle: &dyn Fn(bool) -> Result<PathBuf, String>,
        cache: &Path,
        overlay_marker_on_host: &Path,
    ) -> Result<HostSupport, String> {
        let version = self.version().map_err(|e| e.to_string())?;
        if let Ok(text) = std::fs::read_to_string(cache)
            && let Some((cached_version, rest)) = text.split_once('\n')
            && cached_version == version
            && let Some((network, cgroups)) = rest.trim().split_once(' ')
            && let Some(network) = NetworkMode::parse(network)
        {
            return Ok(HostSupport {
                network,
                cgroups: cgroups == "cgroups",
            });
        }
        let id = format!(
            "{}-probe",
            netns
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("cordon")
        );
        let mut found = None;
        let mut last_error = String::new();
        'search: for network in [NetworkMode::Sandbox, NetworkMode::Host] {
            let bundle = probe_bundle(network == NetworkMode::Sandbox)?;
            for cgroups in [true, false] {
                let support = HostSupport { network, cgroups };
                let ran = self.run_to_end(netns, &bundle, &id, support);
                if let Err(e) = &ran {
                    last_error = e.to_string();
                }
                if ran.is_ok() {
                    // The probe wrote at the sandbox's root: if that reached the host, the
                    // overlay is not working and a sandbox could write the host's files.
                    if overlay_marker_on_host.exists() {
                        let _ = std::fs::remove_file(overlay_marker_on_host);
                        return Err(format!(
                            "runsc wrote through to the host's root filesystem ({} appeared):                              this runsc does not honour --overlay2=root:memory; refusing to                              run sandboxes",
                            overlay_marker_on_host.display()
                        ));
                    }
                    found = Some(support);
                    break 'search;
                }
            }
        }
        let support = found.ok_or_else(|| {
            format!(
                "runsc could not run a probe container (`/bin/sh` writing at the root) in any \
                 network mode (sandbox or host, with or without cgroups); the last attempt: \
                 {last_error}. Check `runsc --version`, that the kernel supports ptrace, and \
                 that the image has /bin/sh"
            )
        })?;
        let _ = std::fs::write(
            cache,
            format!(
                "{version}\n{} {}\n",
                support.network.as_str(),
                if support.cgroups {
                    "cgroups"
                } else {
                    "no-cgroups"
                }
            ),
        );
        Ok(support)
    }
}

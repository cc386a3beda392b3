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

    /// `runsc --version`'s first line.
    pub fn version(&self) -> Result<String, CommandError> {
        Ok(run(&self.binary, ["--version"])?
            .lines()
            .next()
            .unwrap_or("")
            .to_string())
    }

    /// Starts the bundle at `bundle` as container `id`, detached, inside the netns at `netns`.
    /// runsc's output, and the container's (the agent's log), go to `log`: a detached sandbox
    /// keeps its standard streams open, so they cannot be pipes this process waits on.
    pub fn run_detached(
        &self,
        netns: &Path,
        bundle: &Path,
        id: &str,
        support: HostSupport,
        log: &Path,
    ) -> Result<(), CommandError> {
        let mut args = vec![
            format!("--net={}", netns.display()),
            self.binary.display().to_string(),
        ];
        args.extend(self.global_args(support));
        args.extend([
            "run".into(),
            "--detach".into(),
            format!("--bundle={}", bundle.display()),
            id.into(),
        ]);
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
        let status = std::process::Command::new("nsenter")
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(file)
            .stderr(err)
            .status()
            .map_err(|e| problem(format!("cannot be started: {e}")))?;
        if status.success() {
            Ok(())
        } else {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            Err(problem(format!("exited with {status}: {}", text.trim())))
        }
    }

    /// Runs the bundle at `bundle` to completion (probes).
    fn run_to_end(
        &self,
        netns: &Path,
        bundle: &Path,
        id: &str,
        support: HostSupport,
    ) -> Result<(), CommandError> {
        let mut args = vec![
            format!("--net={}", netns.display()),
            self.binary.display().to_string(),
        ];
        args.extend(self.global_args(support));
        args.extend([
            "run".into(),
            format!("--bundle={}", bundle.display()),
            id.into(),
        ]);
        let result = run("nsenter", args).map(|_| ());
        let _ = self.remove(id);
        result
    }

    /// Kills and deletes container `id`; one that does not exist is not an error.
    pub fn remove(&self, id: &str) -> Result<(), CommandError> {
        let root = format!("--root={}", self.root.display());
        if !self.exists(id) {
            return Ok(());
        }
        let _ = run(&self.binary, [root.as_str(), "kill", id, "KILL"]);
        run(&self.binary, [root.as_str(), "delete", "--force", id]).map(|_| ())
    }

    pub fn exists(&self, id: &str) -> bool {
        self.list().iter().any(|(name, _)| name == id)
    }

    /// Containers under this root: (id, status).
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
        'search: for network in [NetworkMode::Sandbox, NetworkMode::Host] {
            let bundle = probe_bundle(network == NetworkMode::Sandbox)?;
            for cgroups in [true, false] {
                let support = HostSupport { network, cgroups };
                if self.run_to_end(netns, &bundle, &id, support).is_ok() {
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
            "runsc could not run a probe container in any network mode (sandbox or host, with or \
             without cgroups); run `runsc --version` and check the kernel supports ptrace"
                .to_string()
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

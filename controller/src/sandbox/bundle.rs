//! The OCI bundle runsc runs for a session: `config.json` (built with oci-spec) and the files it
//! mounts (the agent's token, resolv.conf, the CA bundle).

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResourcesBuilder, MountBuilder, PosixRlimitBuilder, PosixRlimitType,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder,
};

use super::names::SessionNames;
use crate::config::SandboxConfig;

/// Where things are inside the sandbox.
pub const AGENT_PATH: &str = "/usr/local/bin/cordon-sandbox-agent";
pub const TOKEN_PATH: &str = "/run/cordon/agent-token";
pub const CA_BUNDLE_PATH: &str = "/etc/ssl/certs/ca-certificates.crt";
pub const CORDON_CA_PATH: &str = "/usr/local/share/ca-certificates/cordon.crt";
pub const WORKSPACE: &str = "/workspace";
pub const STATX_COMPAT_PATH: &str = "/usr/local/lib/cordon/statx-compat.so";

/// The statx compatibility library (controller/compat/statx.c), built by build.rs.
const STATX_COMPAT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/statx-compat.so"));

/// The host's system trust bundle, to which the Cordon CA is added.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Environment variables common tools read for extra or replacement CA bundles.
const CA_VARIABLES: [&str; 7] = [
    "SSL_CERT_FILE",
    "CURL_CA_BUNDLE",
    "REQUESTS_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "PIP_CERT",
    "NODE_EXTRA_CA_CERTS",
    "AWS_CA_BUNDLE",
];

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot write the sandbox bundle at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot read the interception CA {path}: {source}; start the proxy once (it creates the CA), or run `cordon-proxy ca print`"
    )]
    Ca {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the OCI spec is invalid: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
}

/// A host file or directory bound into a sandbox (a custom tool's declared mounts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostMount {
    /// Absolute, existing.
    pub source: PathBuf,
    /// Absolute, inside the sandbox.
    pub target: String,
    pub writable: bool,
}

/// What a bundle needs to know about its session.
#[derive(Debug)]
pub struct BundleInput<'a> {
    pub config: &'a SandboxConfig,
    pub names: &'a SessionNames,
    pub token: &'a str,
    /// The session's workspace; `None`: an empty in-memory `/workspace` (a tool call's).
    pub workspace: Option<&'a Path>,
    /// Host paths bound in besides Cordon's own (a custom tool's mounts).
    pub mounts: &'a [HostMount],
    /// Whether the sandbox gets its own network namespace (runsc netstack) or uses the one it
    /// is started in (host networking inside the session netns).
    pub own_network_namespace: bool,
    /// The root filesystem: an image's unpacked root, or `/` with `danger_host_rootfs`.
    pub root: &'a Path,
    /// The sandbox agent binary to bind in (one that runs on this root).
    pub agent: &'a Path,
    /// The image's own environment (`KEY=VALUE`), under Cordon's variables.
    pub image_env: &'a [String],
    /// Hide the gateway's secrets (the root is the host's own).
    pub mask_host: bool,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.into(),
        source,
    }
}

fn write_private(path: &Path, text: &str, mode: u32) -> Result<(), BundleError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).map_err(io(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io(path))
}

/// Writes the bundle into `dir` (created), returning it.
pub fn write(dir: &Path, input: &BundleInput<'_>) -> Result<(), BundleError> {
    let files = dir.join("files");
    std::fs::create_dir_all(&files).map_err(io(&files))?;
    write_private(&files.join("agent-token"), input.token, 0o400)?;
    write_private(
        &files.join("resolv.conf"),
        &format!("nameserver {}\noptions ndots:0\n", input.names.host_addr),
        0o444,
    )?;
    let ca = std::fs::read_to_string(&input.config.ca_cert).map_err(|source| BundleError::Ca {
        path: input.config.ca_cert.clone(),
        source,
    })?;
    let system = std::fs::read_to_string(SYSTEM_BUNDLE).unwrap_or_default();
    write_private(
        &files.join("ca-bundle.crt"),
        &format!("{system}\n{ca}"),
        0o444,
    )?;
    write_private(&files.join("cordon-ca.crt"), &ca, 0o444)?;
    write_private(&files.join("empty"), "", 0o444)?;
    if input.config.statx_compat {
        let path = files.join("statx-compat.so");
        std::fs::write(&path, STATX_COMPAT).map_err(io(&path))?;
    }
    let spec = spec(&files, input)?;
    let path = dir.join("config.json");
    spec.save(&path)?;
    Ok(())
}

/// The file the probe writes at the root of the sandbox's filesystem; with the overlay working
/// it must never appear on the host.
pub const OVERLAY_MARKER: &str = "cordon-overlay-probe";

/// A bundle that writes [`OVERLAY_MARKER`] at its root and exits, with the session's root
/// filesystem and resource limits: what [`super::runsc::Runsc::probe`] starts to learn what
/// this host supports.
pub fn write_probe(
    dir: &Path,
    config: &SandboxConfig,
    own_network_namespace: bool,
    root: &Path,
) -> Result<PathBuf, BundleError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut namespaces = vec![LinuxNamespaceType::Pid, LinuxNamespaceType::Mount];
    if own_network_namespace {
        namespaces.push(LinuxNamespaceType::Network);
    }
    let spec = SpecBuilder::default()
        .version("1.0.2")
        .process(
            ProcessBuilder::default()
                .terminal(false)
                .args(vec![
                    "/bin/sh".to_string(),
                    "-c".into(),
                    format!(": > /{OVERLAY_MARKER}"),
                ])
                .cwd("/")
                .build()?,
        )
        .root(RootBuilder::default().path(root).readonly(false).build()?)
        .mounts(oci_spec::runtime::get_default_mounts())
        .linux(
            LinuxBuilder::default()
                .namespaces(
                    namespaces
                        .into_iter()
                        .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
                        .collect::<Result<Vec<_>, _>>()?,
                )
                .resources(resources(config)?)
                .build()?,
        )
        .build()?;
    spec.save(dir.join("config.json"))?;
    Ok(dir.to_path_buf())
}

/// The host cgroup's task limit for a sandbox allowed `pids` processes inside. The cgroup
/// counts the host threads of gVisor itself (the sentry, the gofer, the ptrace stubs), not
/// the sandbox's processes: measured here (runsc 20221219, ptrace), about 70 tasks idle and
/// 11-16 more per process inside; reaching the cgroup limit kills the whole sandbox, where the
/// process limit inside (RLIMIT_NPROC, which gVisor enforces) fails just the one `fork` with
/// EAGAIN. So the cgroup limit is a backstop for the host, well above what `pids` processes
/// need.
pub fn host_tasks_limit(pids: i64) -> i64 {
    256 + 24 * pids
}

fn resources(config: &SandboxConfig) -> Result<oci_spec::runtime::LinuxResources, BundleError> {
    let period: u64 = 100_000;
    Ok(LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(config.memory_bytes)
                .build()?,
        )
        .pids(
            LinuxPidsBuilder::default()
                .limit(host_tasks_limit(config.pids))
                .build()?,
        )
        .cpu(
            LinuxCpuBuilder::default()
                .period(period)
                .quota((config.cpus * period as f64) as i64)
                .build()?,
        )
        .build()?)
}

fn bind(
    source: &Path,
    destination: &str,
    writable: bool,
) -> Result<oci_spec::runtime::Mount, BundleError> {
    let mode = if writable { "rw" } else { "ro" };
    Ok(MountBuilder::default()
        .destination(destination)
        .typ("bind")
        .source(source)
        .options(vec!["rbind".into(), mode.into()])
        .build()?)
}

/// Whether the root filesystem at `root` has glibc, which the statx compatibility library (built on the
/// host against glibc) needs, and so does a dynamically linked sandbox agent; a musl image
/// would fail to load either.
pub fn has_glibc(root: &Path) -> bool {
    has_glibc_libc(root)
}

/// Whether the ELF executable at `path` names a program interpreter (it is dynamically
/// linked); `false` for a static one, or a file that is not a 64-bit ELF.
pub fn is_dynamic(path: &Path) -> bool {
    use std::io::Read;
    // The ELF header and program headers come first: 4 KiB holds them in any executable a
    // linker writes, and a start must not read the whole (tens of MiB) binary.
    let mut bytes = Vec::with_capacity(4096);
    if std::fs::File::open(path)
        .and_then(|f| f.take(4096).read_to_end(&mut bytes))
        .is_err()
    {
        return false;
    }
    let u16_at = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |at: usize| {
        bytes
            .get(at..at + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
    };
    // ELF64, little-endian: e_phoff at 0x20, e_phentsize at 0x36, e_phnum at 0x38;
    // PT_INTERP (3) is the program header of a dynamic executable.
    if bytes.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) {
        return false;
    }
    let (Some(phoff), Some(size), Some(count)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return false;
    };
    (0..usize::from(count)).any(|i| {
        usize::try_from(phoff)
            .ok()
            .and_then(|off| u32_at(off + i * usize::from(size)))
            == Some(3)
    })
}

fn has_glibc_libc(root: &Path) -> bool {
    [
        "usr/lib/x86_64-linux-gnu/libc.so.6",
        "lib/x86_64-linux-gnu/libc.so.6",
    ]
    .iter()
    .any(|p| std::fs::symlink_metadata(root.join(p)).is_ok())
}

/// The process environment: the image's own, then Cordon's defaults where the image says
/// nothing, then what Cordon must set (the CA variables, the preload) over the image's.
fn environment(input: &BundleInput<'_>, statx: bool) -> Vec<String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set =
        |key: &str, value: String, replace: bool| match env.iter_mut().find(|(k, _)| k == key) {
            Some(entry) if replace => entry.1 = value,
            Some(_) => {}
            None => env.push((key.to_string(), value)),
        };
    for entry in input.image_env {
        if let Some((k, v)) = entry.split_once('=')
            && !k.starts_with("ANTHROPIC_")
        {
            set(k, v.to_string(), true);
        }
    }
    set(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        false,
    );
    set("HOME", "/root".into(), false);
    set("LANG", "C.UTF-8".into(), false);
    for var in CA_VARIABLES {
        let value = if var == "NODE_EXTRA_CA_CERTS" {
            CORDON_CA_PATH
        } else {
            CA_BUNDLE_PATH
        };
        set(var, value.into(), true);
    }
    if statx {
        set("LD_PRELOAD", STATX_COMPAT_PATH.into(), true);
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

fn spec(files: &Path, input: &BundleInput<'_>) -> Result<Spec, BundleError> {
    let config = input.config;
    let statx = config.statx_compat && has_glibc(input.root);
    let env = environment(input, statx);
    let process = ProcessBuilder::default()
        .terminal(false)
        .args(vec![
            AGENT_PATH.to_string(),
            "--listen".into(),
            format!("{}:{}", input.names.sandbox_addr, config.agent_port),
            "--token-file".into(),
            TOKEN_PATH.into(),
            "--workdir".into(),
            WORKSPACE.into(),
        ])
        .env(env)
        .cwd("/")
        .no_new_privileges(true)
        // `[sandbox] pids`: processes inside, enforced by gVisor; a fork past it fails with
        // EAGAIN and the sandbox lives on.
        .rlimits(vec![
            PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitNproc)
                .hard(config.pids as u64)
                .soft(config.pids as u64)
                .build()?,
        ])
        .build()?;
    // Writable, but only through runsc's in-memory overlay (`--overlay2=root:memory`): the
    // probe checks that a write inside never reaches the host before any session runs.
    let root = RootBuilder::default()
        .path(input.root)
        .readonly(false)
        .build()?;
    let mut mounts = oci_spec::runtime::get_default_mounts();
    mounts.extend([
        bind(input.agent, AGENT_PATH, false)?,
        bind(&files.join("agent-token"), TOKEN_PATH, false)?,
        bind(&files.join("resolv.conf"), "/etc/resolv.conf", false)?,
        bind(&files.join("ca-bundle.crt"), CA_BUNDLE_PATH, false)?,
        bind(&files.join("cordon-ca.crt"), CORDON_CA_PATH, false)?,
        MountBuilder::default()
            .destination("/tmp")
            .typ("tmpfs")
            .source("tmpfs")
            .options(vec!["nosuid".into(), "nodev".into(), "mode=1777".into()])
            .build()?,
    ]);
    mounts.push(match input.workspace {
        Some(workspace) => bind(workspace, WORKSPACE, true)?,
        None => MountBuilder::default()
            .destination(WORKSPACE)
            .typ("tmpfs")
            .source("tmpfs")
            .options(vec!["nosuid".into(), "nodev".into(), "mode=0755".into()])
            .build()?,
    });
    for mount in input.mounts {
        mounts.push(bind(&mount.source, &mount.target, mount.writable)?);
    }
    if statx {
        mounts.push(bind(
            &files.join("statx-compat.so"),
            STATX_COMPAT_PATH,
            false,
        )?);
    }
    // The host's own root is shared read-only: hide what no sandbox may read. The masks go
    // right after the system mounts, before the bindings, so no binding lands under one.
    let mut masks = Vec::new();
    if input.mask_host {
        for dir in &config.masked_dirs {
            masks.push(
                MountBuilder::default()
                    .destination(dir)
                    .typ("tmpfs")
                    .source("tmpfs")
                    .options(vec![
                        "nosuid".into(),
                        "nodev".into(),
                        "noexec".into(),
                        "mode=0755".into(),
                        "size=1m".into(),
                    ])
                    .build()?,
            );
        }
        for file in crate::config::MASKED_FILES {
            if Path::new(file).exists() {
                masks.push(bind(&files.join("empty"), file, false)?);
            }
        }
    }
    let system = oci_spec::runtime::get_default_mounts().len();
    mounts.splice(system..system, masks);
    let mut namespaces = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ];
    if input.own_network_namespace {
        namespaces.push(LinuxNamespaceType::Network);
    }
    let namespaces = namespaces
        .into_iter()
        .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
        .collect::<Result<Vec<_>, _>>()?;
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources(config)?)
        .build()?;
    Ok(SpecBuilder::default()
        .version("1.0.2")
        .hostname(format!("cordon-{}", input.names.sandbox_addr).replace('.', "-"))
        .process(process)
        .root(root)
        .mounts(mounts)
        .linux(linux)
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_executable_is_told_from_anything_else() {
        let exe = std::env::current_exe().unwrap();
        assert!(is_dynamic(&exe), "this test binary links glibc dynamically");
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("script");
        std::fs::write(&text, "#!/bin/sh\n").unwrap();
        assert!(!is_dynamic(&text));
        assert!(!is_dynamic(&dir.path().join("missing")));
        assert!(!has_glibc(dir.path()), "an empty root has no glibc");
    }
}

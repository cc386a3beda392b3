//! The systems side by side: the upstream itself (the limit), Cordon (explicit and
//! transparent listeners), Squid with ssl-bump, and mitmdump; how each is started with an
//! equivalent allow rule (configs in bench/peers/).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use super::pki::Pki;
use super::process::{Process, free_port};
use super::scenarios::{API_HOST, BENCH_HOST, BODY_HOST, GIT_HOST, LLM_HOST, Scenario};
use super::template::render;
use crate::admin::AdminClient;
use crate::load::Route;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    Direct,
    Cordon,
    CordonTransparent,
    Squid,
    Mitmproxy,
}

pub const ALL: [System; 5] = [
    System::Direct,
    System::Cordon,
    System::CordonTransparent,
    System::Squid,
    System::Mitmproxy,
];

impl System {
    pub fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Cordon => "cordon",
            Self::CordonTransparent => "cordon-transparent",
            Self::Squid => "squid",
            Self::Mitmproxy => "mitmproxy",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        ALL.into_iter().find(|s| s.name() == name)
    }

    /// Why this system does not run `scenario`, if it does not.
    pub fn skips(self, scenario: Scenario) -> Option<&'static str> {
        match (self, scenario) {
            (Self::Squid, Scenario::Http2) => Some("Squid 5 does not speak HTTP/2 to clients"),
            (Self::Mitmproxy, Scenario::LlmStream | Scenario::GitClone) => {
                Some("not measured: the mitmdump addon sends every name to nginx")
            }
            (Self::CordonTransparent, Scenario::KeepAlive | Scenario::NewConnection) => None,
            (Self::CordonTransparent, _) => {
                Some("the transparent row is measured for scenarios 1 and 2 only")
            }
            _ => None,
        }
    }

    /// The Cordon policy bundle a scenario needs (the others ignore it).
    pub fn variant(self, scenario: Scenario) -> Variant {
        if scenario == Scenario::PolicyInjection
            && matches!(self, Self::Cordon | Self::CordonTransparent)
        {
            Variant::AgentEgress
        } else {
            Variant::Bench
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// bench/peers/cordon/policy: the allow rule equivalent to the peers'.
    Bench,
    /// examples/policies/agent-egress with the `github` secret injected (scenario 5).
    AgentEgress,
}

/// What every system's start needs.
#[derive(Debug)]
pub(crate) struct Env {
    pub work: PathBuf,
    pub peers: PathBuf,
    pub repo: PathBuf,
    pub pki: Pki,
    pub upstream_port: u16,
    /// Scenario 9's model API and scenario 10's git forge, when those scenarios run.
    pub llm_port: Option<u16>,
    pub git_port: Option<u16>,
    pub unique_hosts: u64,
    pub proxy_cpus: Option<String>,
    pub cordon_bin: PathBuf,
    pub squid_bin: PathBuf,
    pub mitmdump_bin: PathBuf,
}

/// A started system: its process (none for direct) and the route the load takes to it.
#[derive(Debug)]
pub(crate) struct Running {
    pub process: Option<Process>,
    pub route: Route,
    /// The PEM roots the load generator verifies this route's certificates with.
    pub roots: PathBuf,
    /// What git sends as its password (scenario 10): Cordon's placeholder for the `git`
    /// secret; None for the others, which get the real token.
    pub git_password: Option<String>,
    /// Cordon's admin API and metrics endpoint; None for the others.
    pub admin: Option<AdminClient>,
    pub metrics: Option<SocketAddr>,
}

pub(crate) async fn start(system: System, variant: Variant, env: &Env) -> anyhow::Result<Running> {
    match system {
        System::Direct => Ok(Running {
            process: None,
            route: Route::Direct(loopback(env.upstream_port)),
            roots: env.pki.upstream_ca.clone(),
            git_password: None,
            admin: None,
            metrics: None,
        }),
        System::Cordon | System::CordonTransparent => start_cordon(system, variant, env).await,
        System::Squid => start_squid(env).await,
        System::Mitmproxy => start_mitmdump(env).await,
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn text(path: &Path) -> String {
    path.display().to_string()
}

async fn start_cordon(system: System, variant: Variant, env: &Env) -> anyhow::Result<Running> {
    let (port, transparent, admin, metrics) =
        (free_port()?, free_port()?, free_port()?, free_port()?);
    let bundle = match variant {
        Variant::Bench => env.peers.join("cordon/policy"),
        Variant::AgentEgress => env.repo.join("examples/policies/agent-egress"),
    };
    let mut connect_to = String::new();
    let up = env.upstream_port;
    for host in [BENCH_HOST, API_HOST, BODY_HOST] {
        // Explicit mode names the upstream's port in CONNECT; a direct connection to the
        // transparent listener has no original destination, so both ports are mapped.
        let _ = writeln!(
            connect_to,
            "\"{host}:{up}\" = \"127.0.0.1:{up}\"\n\"{host}:443\" = \"127.0.0.1:{up}\""
        );
    }
    for n in 0..env.unique_hosts {
        let _ = writeln!(connect_to, "\"h{n}.bench.test:{up}\" = \"127.0.0.1:{up}\"");
    }
    for (host, port) in [(LLM_HOST, env.llm_port), (GIT_HOST, env.git_port)] {
        if let Some(port) = port {
            let _ = writeln!(connect_to, "\"{host}:{port}\" = \"127.0.0.1:{port}\"");
        }
    }
    let config = render(
        &env.peers.join("cordon/cordon.toml"),
        &[
            ("PORT", port.to_string()),
            ("TRANSPARENT_PORT", transparent.to_string()),
            ("ADMIN_PORT", admin.to_string()),
            ("METRICS_PORT", metrics.to_string()),
            ("WORK", text(&env.work)),
            ("BUNDLE", text(&bundle)),
            ("CA_CERT", text(&env.pki.intercept_ca)),
            ("CA_KEY", text(&env.pki.intercept_key)),
            ("UPSTREAM_CA", text(&env.pki.upstream_ca)),
            ("CONNECT_TO", connect_to),
        ],
    )?;
    let config_path = env.work.join("cordon.toml");
    std::fs::write(&config_path, config).context("writing cordon.toml")?;
    let secrets = env.work.join("cordon-secrets.toml");
    std::fs::copy(env.peers.join("cordon/secrets.toml"), &secrets)
        .context("copying the secret store")?;
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600))
        .context("chmod 600 secrets")?;
    let mut process = Process::spawn(
        "cordon",
        env.proxy_cpus.as_deref(),
        &env.cordon_bin,
        &["--config".into(), text(&config_path)],
        &[
            ("CORDON_LOG".into(), "warn".into()),
            (
                "CORDON_BENCH_GITHUB_TOKEN".into(),
                "bench-github-token".into(),
            ),
            (
                "CORDON_BENCH_GIT_TOKEN".into(),
                super::git::GIT_TOKEN.into(),
            ),
        ],
        &env.work,
    )?;
    process.wait_listening(loopback(port), &env.work).await?;
    process.wait_listening(loopback(admin), &env.work).await?;
    // The agent-egress policy denies connections from addresses no session holds.
    let client = AdminClient {
        address: loopback(admin),
    };
    client.register("sesn_bench", "127.0.0.1", "bench").await?;
    let git_password = client
        .placeholders("sesn_bench", &["git"])
        .await?
        .remove("git")
        .context("minting the git placeholder")?;
    let route = match system {
        System::CordonTransparent => Route::Direct(loopback(transparent)),
        _ => Route::Connect(loopback(port)),
    };
    Ok(Running {
        process: Some(process),
        route,
        roots: env.pki.intercept_ca.clone(),
        git_password: Some(git_password),
        admin: Some(client),
        metrics: Some(loopback(metrics)),
    })
}

async fn start_squid(env: &Env) -> anyhow::Result<Running> {
    let port = free_port()?;
    let config = render(
        &env.peers.join("squid.conf"),
        &[
            ("PORT", port.to_string()),
            ("WORK", text(&env.work)),
            ("CA_CERT", text(&env.pki.intercept_ca)),
            ("CA_KEY", text(&env.pki.intercept_key)),
            ("UPSTREAM_CA", text(&env.pki.upstream_ca)),
        ],
    )?;
    let config_path = env.work.join("squid.conf");
    std::fs::write(&config_path, config).context("writing squid.conf")?;
    // Squid drops to the `proxy` user after reading its config: its certificate database and
    // log must be that user's.
    let db = env.work.join("squid-ssl-db");
    if !db.exists() {
        run(Command::new("/usr/lib/squid/security_file_certgen").args([
            "-c",
            "-s",
            &text(&db),
            "-M",
            "64MB",
        ]))?;
    }
    std::fs::write(env.work.join("squid-cache.log"), "").context("squid log")?;
    run(Command::new("chown").args([
        "-R",
        "proxy:proxy",
        &text(&db),
        &text(&env.work.join("squid-cache.log")),
    ]))?;
    let args = ["-N".into(), "-f".into(), text(&config_path)];
    start_peer(env, "squid", &env.squid_bin, &args, port).await
}

async fn start_mitmdump(env: &Env) -> anyhow::Result<Running> {
    let port = free_port()?;
    let confdir = env.work.join("mitmproxy");
    std::fs::create_dir_all(&confdir).context("mitmproxy confdir")?;
    // mitmproxy reads its CA as key and certificate in one file.
    let ca = format!(
        "{}{}",
        std::fs::read_to_string(&env.pki.intercept_key).context("CA key")?,
        std::fs::read_to_string(&env.pki.intercept_ca).context("CA cert")?
    );
    std::fs::write(confdir.join("mitmproxy-ca.pem"), ca).context("mitmproxy CA")?;
    let args: Vec<String> = [
        "--listen-host",
        "127.0.0.1",
        "--listen-port",
        &port.to_string(),
        "--set",
        &format!("confdir={}", text(&confdir)),
        "--set",
        &format!(
            "ssl_verify_upstream_trusted_ca={}",
            text(&env.pki.upstream_ca)
        ),
        // Bodies over 1 MiB are streamed, not buffered (scenario 4 measures streaming).
        "--set",
        "stream_large_bodies=1m",
        "-s",
        &text(&env.peers.join("mitmproxy/bench_addon.py")),
        "--set",
        &format!("bench_upstream_port={}", env.upstream_port),
        "--quiet",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    start_peer(env, "mitmdump", &env.mitmdump_bin, &args, port).await
}

/// Starts a peer proxy pinned to the proxy CPUs, waits for its CONNECT listener on `port`;
/// clients trust the run's interception CA.
async fn start_peer(
    env: &Env,
    name: &str,
    bin: &std::path::Path,
    args: &[String],
    port: u16,
) -> anyhow::Result<Running> {
    let mut process = Process::spawn(name, env.proxy_cpus.as_deref(), bin, args, &[], &env.work)?;
    process.wait_listening(loopback(port), &env.work).await?;
    Ok(Running {
        process: Some(process),
        route: Route::Connect(loopback(port)),
        roots: env.pki.intercept_ca.clone(),
        git_password: None,
        admin: None,
        metrics: None,
    })
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

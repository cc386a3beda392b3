//! Shared set-up for the controller's root-tier tests: the real proxy, a fake upstream for
//! `allowed.test`, a `cordon.toml` with a `[sandbox]` section whose every name carries the
//! `cordon-test-<pid>` prefix, and a [`World`] that removes all of it on drop.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cordon_testkit::{free_port, spawn_recording_upstream, test_pki};

pub mod browser;
pub mod cma;

pub const POLICY: &str = r#"package cordon.egress
import rego.v1

default decision := {"allowed": false, "reason": "only allowed.test may be reached"}

decision := {"allowed": true, "reason": "allowed.test"} if input.destination.host == "allowed.test"
"#;

/// The built binaries, next to this test's own (`target/<profile>/deps/..`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is not built; run `cargo build --workspace --bins` first (make test does)",
        path.display()
    );
    path
}

/// The sandbox agents the controller would find beside these binaries, as in production: the
/// dynamically linked one (for images with glibc) and the statically linked one `make` builds
/// (for images without), if built.
pub fn agents() -> (PathBuf, Option<PathBuf>) {
    let dir = binary("cordon-sandbox-agent");
    cordon_controller::config::agents_beside(dir.parent().unwrap())
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The proxy's ports.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub explicit: u16,
    pub transparent: u16,
    pub admin: u16,
    pub metrics: u16,
    pub dns: u16,
}

/// The image store the root-tier tests run sandboxes from: built once per `make test` run
/// (cached by the image file's content) at `$CORDON_TEST_IMAGES`, default
/// `~/.cache/cordon/images`.
pub fn test_images() -> PathBuf {
    let dir = std::env::var_os("CORDON_TEST_IMAGES").map_or_else(
        || {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/cordon/images")
        },
        PathBuf::from,
    );
    assert!(
        dir.join("index.json").is_file()
            && std::fs::read_to_string(dir.join("index.json"))
                .unwrap_or_default()
                .contains("\"default\""),
        "no default image in {}: run `make test` (it builds one), or `cordon-controller image \
         build default --from-file images/default.toml --store {}`",
        dir.display(),
        dir.display()
    );
    dir
}

/// Unmounts every mount below `dir` (workspaces a failed test left mounted), deepest first.
pub fn unmount_below(dir: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount").args(["-l", p]).status();
    }
}

/// Everything a test started; dropped last, it removes all of it.
pub struct World {
    pub dir: tempfile::TempDir,
    pub proxy: Option<Child>,
    pub prefix: String,
    pub interface_prefix: String,
    pub sessions: Vec<String>,
    pub ports: Ports,
    pub agent_port: u16,
    /// Every request head the fake upstream received.
    pub received: cordon_testkit::Received,
}

/// What [`World::build`] varies.
pub struct Setup<'a> {
    /// Upstream names besides `allowed.test` (all served by the one recording upstream).
    pub hosts: &'a [&'a str],
    pub policy: &'a str,
    /// Appended to `[sandbox]`.
    pub sandbox_extra: &'a str,
    /// Appended after `[sandbox]`: whole sections (`[credentials]`, `[controller]`).
    pub extra_toml: &'a str,
    /// Files written next to cordon.toml, mode 0600.
    pub files: &'a [(&'a str, &'a str)],
    /// The upstream every host name reaches; the recording upstream when `None`.
    pub upstream: Option<Upstream>,
}

/// Starts an upstream for the given test PKI: its address and the request heads it received.
pub type Upstream =
    fn(&cordon_testkit::TestPki) -> (std::net::SocketAddr, cordon_testkit::Received);

impl Default for Setup<'_> {
    fn default() -> Self {
        Self {
            hosts: &[],
            policy: POLICY,
            sandbox_extra: "",
            extra_toml: "",
            files: &[],
            upstream: None,
        }
    }
}

impl World {
    /// A world whose sandboxes take /30s from `10.<second_octet>.<pid>.0/<pool_len>`, with
    /// `extra` added to `[sandbox]`; the proxy is started.
    pub fn new(second_octet: u8, pool_len: u8, extra: &str) -> World {
        World::build(
            second_octet,
            pool_len,
            Setup {
                sandbox_extra: extra,
                ..Setup::default()
            },
        )
    }

    /// [`World::new`] with another policy, more upstream host names, more of cordon.toml and
    /// private files next to it.
    pub fn build(second_octet: u8, pool_len: u8, setup: Setup<'_>) -> World {
        let pid = std::process::id();
        let prefix = format!("cordon-test-{pid}");
        let interface_prefix = format!("ct{}x", pid % 100_000);
        let pool = format!("10.{second_octet}.{}.0/{pool_len}", pid % 250);
        let mut hosts = vec!["allowed.test"];
        hosts.extend_from_slice(setup.hosts);
        let pki = test_pki(&hosts);
        let (upstream, received) = match setup.upstream {
            Some(start) => start(&pki),
            None => spawn_recording_upstream(&pki),
        };
        // On the host's disk (not /tmp, which every sandbox covers with its own tmpfs), so the
        // escape suite proves the gateway's state is hidden from sandboxes by the masks.
        let dir = tempfile::Builder::new()
            .prefix(&format!("cordon-test-{pid}-"))
            .tempdir_in("/var/tmp")
            .unwrap();
        std::fs::create_dir_all(dir.path().join("bundle")).unwrap();
        std::fs::write(dir.path().join("bundle/policy.rego"), setup.policy).unwrap();
        std::fs::write(dir.path().join("upstream-ca.pem"), &pki.ca_pem).unwrap();
        for (name, content) in setup.files {
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(dir.path().join(name))
                .unwrap();
            std::io::Write::write_all(&mut file, content.as_bytes()).unwrap();
        }
        let connect_to: String = hosts
            .iter()
            .map(|h| format!("\"{h}:443\" = \"{upstream}\"\n"))
            .collect();
        let ports = Ports {
            explicit: free_port(),
            transparent: free_port(),
            admin: free_port(),
            metrics: free_port(),
            dns: free_port(),
        };
        let agent_port = 7070;
        std::fs::write(
            dir.path().join("cordon.toml"),
            format!(
                "[proxy]\nexplicit_listen = \"0.0.0.0:{}\"\ntransparent_listen = \"0.0.0.0:{}\"\n\
                 admin_listen = \"127.0.0.1:{}\"\nmetrics_listen = \"0.0.0.0:{}\"\nstate_dir = \"state\"\n\
                 [policy]\nbundle = \"bundle\"\n[tls]\nupstream_extra_roots = [\"upstream-ca.pem\"]\n\
                 [upstream.connect_to]\n{connect_to}\
                 [dns]\nlisten = \"0.0.0.0:{}\"\n\
                 [sandbox]\nname_prefix = \"{prefix}\"\ninterface_prefix = \"{interface_prefix}\"\n\
                 address_pool = \"{pool}\"\nagent_port = {agent_port}\nagent = \"{agent}\"\n{static_agent}\
                 images_dir = \"{images}\"\n{}\n{}\n",
                ports.explicit,
                ports.transparent,
                ports.admin,
                ports.metrics,
                ports.dns,
                // 512 MiB unless the test sets its own limit.
                if setup.sandbox_extra.contains("memory_mb") {
                    setup.sandbox_extra.to_string()
                } else {
                    format!("memory_mb = 512\n{}", setup.sandbox_extra)
                },
                setup.extra_toml,
                agent = agents().0.display(),
                static_agent = agents()
                    .1
                    .map(|p| format!("static_agent = \"{}\"\n", p.display()))
                    .unwrap_or_default(),
                images = test_images().display(),
            ),
        )
        .unwrap();
        let mut world = World {
            dir,
            proxy: None,
            prefix,
            interface_prefix,
            sessions: Vec::new(),
            ports,
            agent_port,
            received,
        };
        world.start_proxy();
        world
    }

    pub fn start_proxy(&mut self) {
        let proxy = Command::new(binary("cordon-proxy"))
            .arg("--config")
            .arg(self.config())
            .env("CORDON_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("proxy.log")).unwrap())
            .spawn()
            .unwrap();
        self.proxy = Some(proxy);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.ports.admin)).is_err() {
            let exited = self
                .proxy
                .as_mut()
                .and_then(|p| p.try_wait().ok().flatten());
            assert!(
                Instant::now() < deadline && exited.is_none(),
                "the proxy did not start ({exited:?}): {}",
                std::fs::read_to_string(self.dir.path().join("proxy.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop_proxy(&mut self) {
        if let Some(mut proxy) = self.proxy.take() {
            let _ = proxy.kill();
            let _ = proxy.wait();
        }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("cordon.toml")
    }

    /// `cordon-controller <args> --config <this world's cordon.toml>`.
    pub fn controller(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_cordon-controller"))
            .args(args)
            .arg("--config")
            .arg(self.config())
            .output()
            .unwrap()
    }

    /// Starts a sandbox (remembered for cleanup); its address, or the failed output.
    pub fn start(&mut self, session: &str) -> Result<String, Output> {
        self.sessions.push(session.to_string());
        let out = self.controller(&["sandbox", "start", "--session", session]);
        if !out.status.success() {
            return Err(out);
        }
        Ok(text(&out.stdout)
            .split_whitespace()
            .skip_while(|w| *w != "at")
            .nth(1)
            .unwrap()
            .to_string())
    }

    pub fn exec(&self, session: &str, command: &[&str]) -> Output {
        self.exec_with_timeout(session, 180_000, command)
    }

    pub fn exec_with_timeout(&self, session: &str, timeout_ms: u64, command: &[&str]) -> Output {
        let config = self.config();
        let timeout = timeout_ms.to_string();
        let mut args = vec![
            "sandbox",
            "exec",
            "--session",
            session,
            "--timeout-ms",
            &timeout,
            "--config",
            config.to_str().unwrap(),
            "--",
        ];
        args.extend_from_slice(command);
        Command::new(env!("CARGO_BIN_EXE_cordon-controller"))
            .args(&args)
            .output()
            .unwrap()
    }

    pub fn workspace(&self, session: &str) -> PathBuf {
        self.dir
            .path()
            .join("state/controller/workspaces")
            .join(session)
    }

    pub fn netns_exists(&self, session: &str) -> bool {
        Path::new("/var/run/netns")
            .join(format!("{}-{session}", self.prefix))
            .exists()
    }

    /// Host interfaces with this world's prefix.
    pub fn host_interfaces(&self) -> Vec<String> {
        std::fs::read_dir("/sys/class/net")
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&self.interface_prefix))
            .collect()
    }

    /// runsc containers under this world's runsc root.
    pub fn containers(&self) -> Vec<String> {
        let root = format!(
            "--root={}",
            self.dir.path().join("state/controller/runsc").display()
        );
        let out = Command::new("runsc")
            .args([root.as_str(), "list", "-quiet"])
            .output()
            .unwrap();
        text(&out.stdout).lines().map(str::to_string).collect()
    }

    /// The proxy's session registrations.
    pub fn registrations(&self) -> String {
        let out = Command::new("curl")
            .args([
                "-s",
                &format!("http://127.0.0.1:{}/sessions", self.ports.admin),
            ])
            .output()
            .unwrap();
        text(&out.stdout)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for session in &self.sessions {
            let _ = self.controller(&["sandbox", "stop", "--session", session]);
        }
        // Whatever a failed stop left: runsc containers, namespaces, interfaces, the table.
        let root = format!(
            "--root={}",
            self.dir.path().join("state/controller/runsc").display()
        );
        for id in self.containers() {
            let _ = Command::new("runsc")
                .args([root.as_str(), "delete", "--force", &id])
                .status();
        }
        if let Ok(entries) = std::fs::read_dir("/var/run/netns") {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(&format!("{}-", self.prefix)) {
                    let _ = Command::new("ip").args(["netns", "delete", &name]).status();
                }
            }
        }
        for name in self.host_interfaces() {
            let _ = Command::new("ip").args(["link", "delete", &name]).status();
        }
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.prefix])
            .stderr(Stdio::null())
            .status();
        self.stop_proxy();
        // Workspaces stay mounted while their session lives; the directory cannot go until
        // they are unmounted.
        unmount_below(self.dir.path());
    }
}

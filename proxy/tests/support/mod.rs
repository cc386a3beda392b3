//! Shared fixtures for the proxy's integration tests: a test PKI, a fake HTTPS upstream on
//! loopback that echoes each request head, and the `cordon-proxy` binary under a generated
//! config (killed by its own pid on drop).

// Test support is reached only from the test crates that include it.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub mod git;
pub mod http1;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every secret value any test gives the proxy. Nothing the proxy produces (its log, audit
/// log, metrics, refusals, or any response the sandbox receives) may contain one:
/// [`Proxy`]'s drop checks all of it.
pub const TEST_SECRET_VALUES: &[&str] = &[
    GITHUB_TOKEN,
    ROTATED_TOKEN,
    GIT_TOKEN,
    NPM_TOKEN,
    PYPI_TOKEN,
    ANTHROPIC_KEY,
];
pub const GITHUB_TOKEN: &str = "ghp_cordonTestSecretValue0123456789";
pub const ROTATED_TOKEN: &str = "ghp_cordonRotatedValue9876543210";
pub const GIT_TOKEN: &str = "gho_cordonGitTokenValue24680";
pub const NPM_TOKEN: &str = "npm_cordonRegistryTokenValue1357";
pub const PYPI_TOKEN: &str = "pypi-cordonUploadTokenValue8642";
pub const ANTHROPIC_KEY: &str = "sk-ant-api03-cordonTestKeyValue-000";

// Each test binary uses some of these.
#[allow(unused_imports)]
pub use cordon_testkit::{
    Received, TestPki, free_port, read_head, spawn_recording_upstream, spawn_tls_server,
    spawn_upstream, test_pki,
};

pub fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The proxy under test, killed (by its pid) when dropped.
pub struct Proxy {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub explicit: u16,
    pub transparent: u16,
    pub admin: u16,
    pub metrics: u16,
    /// Everything the proxy sent back to a test's curl or admin call.
    produced: Mutex<Vec<String>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.assert_no_secret_leaked();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    /// Starts the proxy with `policy` as its bundle, the upstream CA trusted, `hosts` routed
    /// to `upstream` by `connect_to`, and `extra` appended to the config.
    pub fn start(
        policy: &str,
        upstream: SocketAddr,
        upstream_ca: &str,
        hosts: &[&str],
        extra: &str,
    ) -> Proxy {
        Self::start_with(policy, upstream, upstream_ca, hosts, extra, "")
    }

    /// [`Proxy::start`] with `proxy_extra` lines added to the `[proxy]` section (lines
    /// `policy.KEY = VALUE` go to `[policy]`, `upstream.KEY = VALUE` to `[upstream]`).
    pub fn start_with(
        policy: &str,
        upstream: SocketAddr,
        upstream_ca: &str,
        hosts: &[&str],
        extra: &str,
        proxy_extra: &str,
    ) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("bundle")).unwrap();
        std::fs::write(dir.path().join("bundle/policy.rego"), policy).unwrap();
        Self::launch(
            dir,
            "bundle",
            upstream,
            upstream_ca,
            hosts,
            extra,
            proxy_extra,
            &[],
        )
    }

    /// Starts the proxy on the bundle directory `bundle` (an example's, say), with `env` in
    /// its environment (secret values for `value_env`).
    pub fn start_bundle(
        bundle: &std::path::Path,
        upstream: SocketAddr,
        upstream_ca: &str,
        hosts: &[&str],
        extra: &str,
        env: &[(&str, &str)],
    ) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let bundle = bundle.canonicalize().unwrap();
        Self::launch(
            dir,
            bundle.to_str().unwrap(),
            upstream,
            upstream_ca,
            hosts,
            extra,
            "",
            env,
        )
    }

    /// [`Proxy::start_bundle`] with `proxy_extra` as in [`Proxy::start_with`].
    pub fn start_bundle_with(
        bundle: &std::path::Path,
        upstream: SocketAddr,
        upstream_ca: &str,
        hosts: &[&str],
        proxy_extra: &str,
    ) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let bundle = bundle.canonicalize().unwrap();
        Self::launch(
            dir,
            bundle.to_str().unwrap(),
            upstream,
            upstream_ca,
            hosts,
            "",
            proxy_extra,
            &[],
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn launch(
        dir: tempfile::TempDir,
        bundle: &str,
        upstream: SocketAddr,
        upstream_ca: &str,
        hosts: &[&str],
        extra: &str,
        proxy_extra: &str,
        env: &[(&str, &str)],
    ) -> Proxy {
        // `[policy]` and `[upstream]` keys may ride in `proxy_extra` as `policy.KEY = ...` and
        // `upstream.KEY = ...` lines.
        let section = |prefix: &str| -> String {
            proxy_extra
                .lines()
                .filter_map(|l| l.trim_start().strip_prefix(prefix))
                .map(|l| format!("{l}\n"))
                .collect()
        };
        let (policy_extra, upstream_extra) = (section("policy."), section("upstream."));
        let proxy_extra: Vec<&str> = proxy_extra
            .lines()
            .filter(|l| {
                let l = l.trim_start();
                !l.starts_with("policy.") && !l.starts_with("upstream.")
            })
            .collect();
        let proxy_extra = proxy_extra.join("\n");
        std::fs::write(dir.path().join("upstream-ca.pem"), upstream_ca).unwrap();
        // A port picked free can be taken by another test's process before the proxy binds
        // it: the proxy then fails to start, or (worse) the test would talk to the other
        // process. So the proxy counts as started only once its own process holds all four
        // listeners, and a start that lost a port race is tried again on new ports.
        for attempt in 1..=3 {
            let (explicit, transparent, admin, metrics) =
                (free_port(), free_port(), free_port(), free_port());
            let routes: String = hosts
                .iter()
                .map(|h| format!("\"{h}:443\" = \"{upstream}\"\n"))
                .collect();
            let config = format!(
                "[proxy]\nexplicit_listen = \"127.0.0.1:{explicit}\"\ntransparent_listen = \"0.0.0.0:{transparent}\"\n\
                 admin_listen = \"127.0.0.1:{admin}\"\n\
                 metrics_listen = \"127.0.0.1:{metrics}\"\nstate_dir = \"state\"\n{proxy_extra}\n\
                 [policy]\nbundle = \"{bundle}\"\n{policy_extra}[tls]\nupstream_extra_roots = [\"upstream-ca.pem\"]\n\
                 [upstream]\nconnect_timeout_ms = 2000\n{upstream_extra}[upstream.connect_to]\n{routes}{extra}"
            );
            // Each audit record written at once, so a test reads every record of the requests
            // it made, and the leak check sees them all; tests/audit_log.rs covers buffering.
            let config = if extra.contains("[audit]") {
                config
            } else {
                format!("{config}\n[audit]\nflush_interval_ms = 0\n")
            };
            std::fs::write(dir.path().join("cordon.toml"), config).unwrap();
            let mut child = Command::new(env!("CARGO_BIN_EXE_cordon-proxy"))
                .arg("--config")
                .arg(dir.path().join("cordon.toml"))
                // CORDON_TEST_PROXY_LOG (a CORDON_LOG filter) to see more of a failing test.
                .env(
                    "CORDON_LOG",
                    std::env::var("CORDON_TEST_PROXY_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .envs(env.iter().copied())
                .stdout(Stdio::null())
                // A file, not a pipe nobody reads (a full pipe would stall the proxy).
                .stderr(std::fs::File::create(dir.path().join("proxy.log")).unwrap())
                .spawn()
                .unwrap();
            let ports = [admin, explicit, transparent, metrics];
            let deadline = Instant::now() + Duration::from_secs(20);
            let started = loop {
                if listening(child.id(), &ports) {
                    break true;
                }
                if child.try_wait().unwrap().is_some() {
                    break false;
                }
                assert!(Instant::now() < deadline, "proxy did not start");
                std::thread::sleep(Duration::from_millis(50));
            };
            if started {
                return Proxy {
                    child,
                    dir,
                    explicit,
                    transparent,
                    admin,
                    metrics,
                    produced: Mutex::default(),
                };
            }
            let log = std::fs::read_to_string(dir.path().join("proxy.log")).unwrap_or_default();
            assert!(
                attempt < 3 && log.contains("in use"),
                "the proxy exited at start (attempt {attempt}):\n{log}"
            );
        }
        unreachable!("the loop returns or panics")
    }

    /// The proxy's process id (for signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for the proxy to exit; its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The audit log's records so far, in file order (a line still being written is skipped).
    pub fn audit_records(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.path("state/audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The audit log's request records once there are `n` (the record of a request is written
    /// just after its response), waiting at most five seconds.
    pub fn request_records(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let records: Vec<_> = self
                .audit_records()
                .into_iter()
                .filter(|r| r["kind"] == "request")
                .collect();
            if records.len() >= n || Instant::now() > deadline {
                return records;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn ca(&self) -> PathBuf {
        let out = Command::new(env!("CARGO_BIN_EXE_cordon-proxy"))
            .args(["ca", "print", "--config"])
            .arg(self.path("cordon.toml"))
            .output()
            .unwrap();
        assert!(out.status.success());
        let path = self.path("cordon-ca.pem");
        std::fs::write(&path, out.stdout).unwrap();
        path
    }

    pub fn curl(&self, args: &[&str]) -> Output {
        let out = Command::new("curl")
            .args(["-s", "-i", "--max-time", "10", "--proxy"])
            .arg(format!("http://127.0.0.1:{}", self.explicit))
            .arg("--cacert")
            .arg(self.ca())
            .args(args)
            .output()
            .expect("curl is installed by scripts/install-deps.sh");
        self.record(&out.stdout);
        self.record(&out.stderr);
        out
    }

    /// Keeps what the proxy answered, for the leak check.
    pub fn record(&self, bytes: &[u8]) {
        self.produced
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(bytes).into_owned());
    }

    /// No secret value in anything the proxy produced: its log, its audit log, its metrics,
    /// or any answer a test received through it. Runs when every [`Proxy`] is dropped.
    pub fn assert_no_secret_leaked(&self) {
        let mut produced = vec![
            ("proxy log", read_lossy(&self.path("proxy.log"))),
            ("audit log", read_lossy(&self.path("state/audit.log"))),
            ("metrics", self.metrics_text()),
        ];
        for answer in self.produced.lock().unwrap().iter() {
            produced.push(("an answer to the sandbox", answer.clone()));
        }
        for (what, text) in &produced {
            for (i, value) in TEST_SECRET_VALUES.iter().enumerate() {
                assert!(
                    !text.contains(value),
                    "TEST_SECRET_VALUES[{i}] leaked into {what}"
                );
            }
        }
    }

    /// The Prometheus text the metrics endpoint serves now.
    pub fn metrics_text(&self) -> String {
        let out = Command::new("curl")
            .arg("-s")
            .arg(format!("http://127.0.0.1:{}/metrics", self.metrics))
            .output()
            .unwrap();
        text(&out)
    }

    pub fn admin(&self, method: &str, path: &str, body: Option<&str>) -> String {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-X", method])
            .arg(format!("http://127.0.0.1:{}{path}", self.admin));
        if let Some(body) = body {
            cmd.args(["-d", body]);
        }
        let out = cmd.output().unwrap();
        self.record(&out.stdout);
        String::from_utf8(out.stdout).unwrap()
    }
}

fn read_lossy(path: &std::path::Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// An HTTPS/1.1 upstream that accepts one WebSocket-style upgrade per connection (101), then
/// echoes every byte it receives. It does not frame; the proxy must not care.
pub fn spawn_upgrade_echo(pki: &TestPki) -> SocketAddr {
    spawn_tls_server(pki, b"http/1.1", |mut tls| async move {
        let Some(head) = read_head(&mut tls).await else {
            return;
        };
        let upgrade = String::from_utf8_lossy(&head)
            .to_ascii_lowercase()
            .contains("upgrade: websocket");
        if !upgrade {
            let _ = tls
                .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                .await;
            return;
        }
        let _ = tls
            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
            .await;
        let mut buf = [0u8; 4096];
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tls.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    })
}

/// An HTTPS upstream that speaks only HTTP/2 (ALPN `h2`) and answers every request with
/// `h2 <method> <path>` as its body, so a test can see which protocol reached it.
pub fn spawn_h2_upstream(pki: &TestPki) -> SocketAddr {
    spawn_tls_server(pki, b"h2", |tls| async move {
        let Ok(mut connection) = h2::server::handshake(tls).await else {
            return;
        };
        while let Some(Ok((request, mut respond))) = connection.accept().await {
            let body = format!("h2 {} {}", request.method(), request.uri().path());
            let response = http::Response::builder()
                .status(200)
                .header("content-length", body.len())
                .body(())
                .unwrap();
            if let Ok(mut stream) = respond.send_response(response, false) {
                let _ = stream.send_data(bytes::Bytes::from(body), true);
            }
        }
    })
}

/// Whether the process `pid` itself listens on every TCP port in `ports` (read from /proc:
/// nothing connects, so no connection shows up in the proxy's audit log).
fn listening(pid: u32, ports: &[u16]) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let sockets: std::collections::HashSet<String> = fds
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|link| {
            let link = link.to_str()?;
            Some(
                link.strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_string(),
            )
        })
        .collect();
    let mut held = std::collections::HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if *state == "0A" && sockets.contains(*inode) {
                held.extend(port);
            }
        }
    }
    ports.iter().all(|p| held.contains(p))
}

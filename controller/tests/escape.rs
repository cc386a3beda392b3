//! The escape suite: two real gVisor sandboxes behind the real proxy, and from inside one of
//! them every way out we know of. Each must fail; one allowed HTTPS request must succeed.
//! The results are written into docs/SECURITY.md.
//!
//! Root tier: needs root, runsc, nftables and iproute2 (scripts/install-deps.sh installs them).
//! Every resource it creates is named `cordon-test-<pid>...` and removed on drop, also when the
//! test fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cordon_testkit::{free_port, spawn_upstream, test_pki};

const POLICY: &str = r#"package cordon.egress
import rego.v1

default decision := {"allowed": false, "reason": "only allowed.test may be reached"}

decision := {"allowed": true, "reason": "allowed.test"} if input.destination.host == "allowed.test"
"#;

/// The built binaries, next to this test's own (`target/<profile>/deps/..`).
fn binary(name: &str) -> PathBuf {
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

/// Everything the suite started; dropped last, it removes all of it.
struct World {
    dir: tempfile::TempDir,
    proxy: Child,
    prefix: String,
    interface_prefix: String,
    sessions: Vec<&'static str>,
}

impl World {
    fn config(&self) -> PathBuf {
        self.dir.path().join("cordon.toml")
    }

    fn controller(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_cordon-controller"))
            .args(args)
            .arg("--config")
            .arg(self.config())
            .output()
            .unwrap()
    }

    fn exec(&self, session: &str, command: &[&str]) -> Output {
        let mut args = vec![
            "sandbox",
            "exec",
            "--session",
            session,
            "--timeout-ms",
            "60000",
        ];
        args.push("--config");
        let config = self.config();
        let config = config.to_str().unwrap();
        args.push(config);
        args.push("--");
        args.extend_from_slice(command);
        Command::new(env!("CARGO_BIN_EXE_cordon-controller"))
            .args(&args)
            .output()
            .unwrap()
    }

    fn workspace(&self, session: &str) -> PathBuf {
        self.dir
            .path()
            .join("state/controller/workspaces")
            .join(session)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for session in &self.sessions {
            let _ = self.controller(&["sandbox", "stop", "--session", session]);
        }
        // Whatever a failed stop left: runsc containers, namespaces, interfaces, the table.
        let runsc_root = self.dir.path().join("state/controller/runsc");
        let listed = Command::new("runsc")
            .arg(format!("--root={}", runsc_root.display()))
            .args(["list", "-quiet"])
            .output();
        if let Ok(out) = listed {
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let root = format!("--root={}", runsc_root.display());
                let _ = Command::new("runsc")
                    .args([&root, "delete", "--force", id])
                    .status();
            }
        }
        if let Ok(entries) = std::fs::read_dir("/var/run/netns") {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(&format!("{}-", self.prefix)) {
                    let _ = Command::new("ip").args(["netns", "delete", &name]).status();
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir("/sys/class/net") {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(&self.interface_prefix) {
                    let _ = Command::new("ip").args(["link", "delete", &name]).status();
                }
            }
        }
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.prefix])
            .stderr(Stdio::null())
            .status();
        let _ = self.proxy.kill();
        let _ = self.proxy.wait();
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn nothing_leaves_a_sandbox_but_allowed_requests_through_the_proxy() {
    let pid = std::process::id();
    let prefix = format!("cordon-test-{pid}");
    let interface_prefix = format!("ct{}", pid % 100_000);
    let pool = format!("10.233.{}.0/24", pid % 250);

    // The "internet": one HTTPS host on loopback, a TCP service and a resolver on the host.
    let pki = test_pki(&["allowed.test"]);
    let upstream = spawn_upstream(&pki);
    let service = TcpListener::bind("0.0.0.0:0").unwrap();
    let service_port = service.local_addr().unwrap().port();
    let service_hits = Arc::new(AtomicUsize::new(0));
    {
        let hits = service_hits.clone();
        std::thread::spawn(move || {
            for mut stream in service.incoming().flatten() {
                hits.fetch_add(1, Ordering::SeqCst);
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\n\r\nhost-service-reached");
            }
        });
    }
    let resolver = UdpSocket::bind("0.0.0.0:0").unwrap();
    let resolver_port = resolver.local_addr().unwrap().port();
    let resolver_hits = Arc::new(AtomicUsize::new(0));
    {
        let hits = resolver_hits.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while resolver.recv_from(&mut buf).is_ok() {
                hits.fetch_add(1, Ordering::SeqCst);
            }
        });
    }

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("bundle")).unwrap();
    std::fs::write(dir.path().join("bundle/policy.rego"), POLICY).unwrap();
    std::fs::write(dir.path().join("upstream-ca.pem"), &pki.ca_pem).unwrap();
    let (explicit, transparent, admin, metrics, dns) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let agent_port = 7070;
    std::fs::write(
        dir.path().join("cordon.toml"),
        format!(
            "[proxy]\nexplicit_listen = \"0.0.0.0:{explicit}\"\ntransparent_listen = \"0.0.0.0:{transparent}\"\n\
             admin_listen = \"127.0.0.1:{admin}\"\nmetrics_listen = \"0.0.0.0:{metrics}\"\nstate_dir = \"state\"\n\
             [policy]\nbundle = \"bundle\"\n[tls]\nupstream_extra_roots = [\"upstream-ca.pem\"]\n\
             [upstream.connect_to]\n\"allowed.test:443\" = \"{upstream}\"\n\
             [dns]\nlisten = \"0.0.0.0:{dns}\"\n\
             [sandbox]\nname_prefix = \"{prefix}\"\ninterface_prefix = \"{interface_prefix}\"\n\
             address_pool = \"{pool}\"\nagent_port = {agent_port}\nagent = \"{agent}\"\n\
             memory_mb = 512\n",
            agent = binary("cordon-sandbox-agent").display()
        ),
    )
    .unwrap();
    let proxy = Command::new(binary("cordon-proxy"))
        .arg("--config")
        .arg(dir.path().join("cordon.toml"))
        .env("CORDON_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("proxy.log")).unwrap())
        .spawn()
        .unwrap();
    let mut world = World {
        dir,
        proxy,
        prefix,
        interface_prefix,
        sessions: Vec::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", admin)).is_err() {
        assert!(Instant::now() < deadline, "the proxy did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Two sandboxes: A attempts, B is the neighbour.
    let mut addresses = Vec::new();
    for session in ["a", "b"] {
        world.sessions.push(session);
        let out = world.controller(&["sandbox", "start", "--session", session]);
        assert!(
            out.status.success(),
            "start {session}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        let line = text(&out.stdout);
        let address = line
            .split_whitespace()
            .skip_while(|w| *w != "at")
            .nth(1)
            .unwrap()
            .to_string();
        addresses.push(address);
    }
    let (a_addr, b_addr) = (addresses[0].clone(), addresses[1].clone());
    let host_addr = {
        let octets: Vec<u8> = a_addr.split('.').map(|o| o.parse().unwrap()).collect();
        format!(
            "{}.{}.{}.{}",
            octets[0],
            octets[1],
            octets[2],
            octets[3] - 1
        )
    };

    // A listens, recording every connection, for B to try.
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/escape_probe.py"),
        world.workspace("a").join("escape_probe.py"),
    )
    .unwrap();
    let listener = "import socket\n\
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
        s.bind(('0.0.0.0', 8000)); s.listen(8)\n\
        open('/workspace/listener.ready', 'w').close()\n\
        while True:\n    c, peer = s.accept(); open('/workspace/listener.log', 'a').write(str(peer) + '\\n'); c.close()\n";
    std::fs::write(world.workspace("a").join("listener.py"), listener).unwrap();
    let out = world.exec(
        "a",
        &[
            "sh",
            "-c",
            "nohup python3 /workspace/listener.py >/dev/null 2>&1 &",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !world.workspace("a").join("listener.ready").exists() {
        assert!(
            Instant::now() < deadline,
            "the listener in sandbox a did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let probe_config = serde_json::json!({
        "host_addr": host_addr,
        "other_sandbox": b_addr,
        "host_service_port": service_port,
        "admin_port": admin,
        "metrics_port": metrics,
        "explicit_port": explicit,
        "agent_port": agent_port,
        "fake_resolver_port": resolver_port,
    })
    .to_string();
    let out = world.exec(
        "a",
        &["python3", "/workspace/escape_probe.py", &probe_config],
    );
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "the probe failed: {stdout}{}",
        text(&out.stderr)
    );
    let mut rows: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();

    // B tries A's listener.
    let out = world.exec(
        "b",
        &[
            "python3",
            "-c",
            &format!(
                "import socket\ntry:\n    s = socket.create_connection(('{a_addr}', 8000), 5); s.sendall(b'hi'); print(repr(s.recv(100)))\nexcept Exception as e:\n    print(type(e).__name__ + ': ' + str(e))"
            ),
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let listener_log =
        std::fs::read_to_string(world.workspace("a").join("listener.log")).unwrap_or_default();
    rows.push(serde_json::json!({
        "attempt": "a listener in sandbox a, from sandbox b",
        "escaped": !listener_log.is_empty(),
        "observed": format!("b saw: {}; a's listener accepted {} connection(s)",
            text(&out.stdout).trim(), listener_log.lines().count()),
    }));

    // What the host saw.
    rows.push(serde_json::json!({
        "attempt": "(host side) the TCP service received connections",
        "escaped": service_hits.load(Ordering::SeqCst) > 0,
        "observed": format!("{} connection(s)", service_hits.load(Ordering::SeqCst)),
    }));
    rows.push(serde_json::json!({
        "attempt": "(host side) the fake resolver received queries",
        "escaped": resolver_hits.load(Ordering::SeqCst) > 0,
        "observed": format!("{} packet(s)", resolver_hits.load(Ordering::SeqCst)),
    }));
    rows.push(serde_json::json!({
        "attempt": "(host side) /usr/cordon-escape-probe exists on the host",
        "escaped": Path::new("/usr/cordon-escape-probe").exists(),
        "observed": if Path::new("/usr/cordon-escape-probe").exists() { "it does" } else { "it does not" },
    }));
    let audit =
        std::fs::read_to_string(world.dir.path().join("state/audit.log")).unwrap_or_default();
    rows.push(serde_json::json!({
        "attempt": "(audit) the data-carrying lookup is in the audit log",
        "escaped": false,
        "ok": audit.contains("c2VjcmV0LWRhdGE.exfil.example"),
        "allowed": true,
        "observed": if audit.contains("c2VjcmV0LWRhdGE.exfil.example") { "recorded as kind dns" } else { "missing" },
    }));

    write_security_table(&rows);
    let mut failures = Vec::new();
    for row in &rows {
        let allowed = row["allowed"].as_bool().unwrap_or(false);
        if allowed && !row["ok"].as_bool().unwrap_or(false) {
            failures.push(format!("expected to work: {row}"));
        }
        if row["escaped"].as_bool().unwrap_or(false) {
            failures.push(format!("ESCAPED: {row}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\nproxy log:\n{}",
        failures.join("\n"),
        std::fs::read_to_string(world.dir.path().join("proxy.log")).unwrap_or_default()
    );
    assert!(rows.len() >= 19, "{rows:?}");
}

/// Replaces the generated table in docs/SECURITY.md (between its markers).
fn write_security_table(rows: &[serde_json::Value]) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/SECURITY.md");
    let Ok(doc) = std::fs::read_to_string(&path) else {
        return;
    };
    let (begin, end) = ("<!-- escape-suite:begin -->", "<!-- escape-suite:end -->");
    let (Some(i), Some(j)) = (doc.find(begin), doc.find(end)) else {
        return;
    };
    let mut table = String::from("\n| attempt | expected | observed |\n|---|---|---|\n");
    for row in rows {
        let allowed = row["allowed"].as_bool().unwrap_or(false);
        let expected = if allowed { "works" } else { "fails" };
        let observed = row["observed"].as_str().unwrap_or("").replace('|', "\\|");
        let verdict = match (allowed, row["ok"].as_bool(), row["escaped"].as_bool()) {
            (true, Some(true), _) => "worked",
            (true, _, _) => "DID NOT WORK",
            (false, _, Some(true)) => "ESCAPED",
            _ => "failed",
        };
        table.push_str(&format!(
            "| {} | {expected} | {verdict}: {observed} |\n",
            row["attempt"].as_str().unwrap_or("")
        ));
    }
    let updated = format!("{}{begin}{table}{}", &doc[..i], &doc[j..]);
    if updated != doc {
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(updated.as_bytes()).unwrap();
    }
}

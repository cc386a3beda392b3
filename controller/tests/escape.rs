//! The escape suite: two real gVisor sandboxes behind the real proxy, and from inside one of
//! them every way out we know of. Each must fail; one allowed HTTPS request must succeed.
//! The results table is written beside the test binaries (`CARGO_TARGET_TMPDIR`), and into
//! docs/SECURITY.md when `CORDON_UPDATE_DOCS=1` is set: a test run leaves the checkout as it
//! found it.
//!
//! Root tier: needs root, runsc, nftables and iproute2 (scripts/install-deps.sh installs them).
//! Every resource it creates is named `cordon-test-<pid>...` and removed on drop, also when the
//! test fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

mod support;

use support::{World, text};

#[test]
fn nothing_leaves_a_sandbox_but_allowed_requests_through_the_proxy() {
    // The "internet" (World has one HTTPS host, allowed.test), a TCP service and a resolver
    // on the host.
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

    let mut world = World::new(233, 24, "");
    let ports = world.ports;

    // Two sandboxes: A attempts, B is the neighbour.
    let mut addresses = Vec::new();
    for session in ["a", "b"] {
        match world.start(session) {
            Ok(address) => addresses.push(address),
            Err(out) => panic!(
                "start {session}: {}{}",
                text(&out.stdout),
                text(&out.stderr)
            ),
        }
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

    std::fs::write(world.workspace("b").join("notes.txt"), "b's work").unwrap();
    // The image has its own /etc/shadow and /root: the probe must not read the host's.
    let host_hashes: std::collections::HashMap<String, String> = ["/etc/shadow", "/root/.bashrc"]
        .iter()
        .filter_map(|p| {
            let bytes = std::fs::read(p).ok()?;
            Some((
                p.to_string(),
                hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)),
            ))
        })
        .collect();
    let probe_config = serde_json::json!({
        "host_addr": host_addr,
        "other_sandbox": b_addr,
        "host_service_port": service_port,
        "admin_port": ports.admin,
        "metrics_port": ports.metrics,
        "explicit_port": ports.explicit,
        "agent_port": world.agent_port,
        "fake_resolver_port": resolver_port,
        "ca_key": world.dir.path().join("state/ca-key.pem"),
        "controller_db": world.dir.path().join("state/controller/state.db"),
        "other_workspace": world.workspace("b"),
        "host_hashes": host_hashes,
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

    // Below gVisor: as if a sandbox got past it, the host kernel in sandbox a's namespace sends
    // with b's source address. The nftables source guard must drop it (its counter shows it).
    let netns_a = format!("--net=/var/run/netns/{}-a", world.prefix);
    // A DNS query from b's address (raw, so nothing checks the source before the guard):
    // without the guard it would be redirected to the stub and answered to b.
    let spoof = format!(
        "import socket, struct\n\
         src, dst = '{b_addr}', '{host_addr}'\n\
         payload = b'\\x42\\x42\\x01\\x00\\x00\\x01' + bytes(6) + b'\\x07example\\x00\\x00\\x01\\x00\\x01'\n\
         udp = struct.pack('>HHHH', 40000, 53, 8 + len(payload), 0) + payload\n\
         ip = struct.pack('>BBHHHBBH4s4s', 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(dst))\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)\n\
         s.sendto(ip + udp, (dst, 0)); print('sent')"
    );
    let out = std::process::Command::new("nsenter")
        .args([netns_a.as_str(), "python3", "-c", &spoof])
        .output()
        .unwrap();
    let chain = std::process::Command::new("nft")
        .args(["list", "chain", "inet", &world.prefix, "sandbox_guard"])
        .output()
        .unwrap();
    let dropped: u64 = text(&chain.stdout)
        .lines()
        .find(|l| l.contains("@sources"))
        .and_then(|l| l.split("packets ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let seen = text(&out.stdout).trim().to_string();
    rows.push(serde_json::json!({
        "attempt": "(below gVisor) a packet from sandbox a's namespace with b's source address",
        "escaped": dropped == 0,
        "observed": format!("{seen}; the source guard dropped {dropped} packet(s)"),
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

/// Writes the table to `escape-suite.md` in `CARGO_TARGET_TMPDIR`, and with
/// `CORDON_UPDATE_DOCS=1` in place of the generated table in docs/SECURITY.md (between its
/// markers).
fn write_security_table(rows: &[serde_json::Value]) {
    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/SECURITY.md");
    let Ok(doc) = std::fs::read_to_string(&doc_path) else {
        return;
    };
    let path = if std::env::var_os("CORDON_UPDATE_DOCS").is_some_and(|v| v == "1") {
        doc_path
    } else {
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("escape-suite.md")
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
    if updated != doc || !path.exists() {
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(updated.as_bytes()).unwrap();
    }
}

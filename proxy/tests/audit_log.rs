//! The audit log's buffering as a user configures it: records are batched for at most
//! `[audit] flush_interval_ms`, and stopping the proxy (SIGINT, SIGTERM) writes what is still
//! buffered before it exits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::{Proxy, spawn_upstream, test_pki, text};

const POLICY: &str = r#"package cordon.egress
import rego.v1

default decision := {"allowed": false, "reason": "default deny"}

decision := {"allowed": true, "reason": "listed"} if input.destination.host == "allowed.test"
"#;

/// The audit records for `path`, in file order.
fn records_for(proxy: &Proxy, path: &str) -> Vec<serde_json::Value> {
    proxy
        .audit_records()
        .into_iter()
        .filter(|r| r["path"] == path)
        .collect()
}

fn get(proxy: &Proxy, path: &str) {
    let out = proxy.curl(&[&format!("https://allowed.test{path}")]);
    assert!(text(&out).contains("HTTP/1.1 200"), "{}", text(&out));
}

#[test]
fn records_are_written_within_the_default_interval() {
    let pki = test_pki(&["allowed.test"]);
    let upstream = spawn_upstream(&pki);
    // An [audit] section without flush_interval_ms: the default (20 ms) applies.
    let proxy = Proxy::start(
        POLICY,
        upstream,
        &pki.ca_pem,
        &["allowed.test"],
        "[audit]\npath = \"state/audit.log\"\n",
    );
    for n in 0..5 {
        get(&proxy, &format!("/batched/{n}"));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found: usize = (0..5)
            .map(|n| records_for(&proxy, &format!("/batched/{n}")).len())
            .sum();
        if found == 5 {
            break;
        }
        assert!(Instant::now() < deadline, "{found} of 5 records written");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Whole lines, in request order.
    let audit = std::fs::read_to_string(proxy.path("state/audit.log")).unwrap();
    let paths: Vec<String> = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|r| r["path"].as_str().map(str::to_string))
        .filter(|p| p.starts_with("/batched/"))
        .collect();
    assert_eq!(
        paths,
        (0..5).map(|n| format!("/batched/{n}")).collect::<Vec<_>>()
    );
}

/// With a long interval the record is still buffered after the response; `signal` stops the
/// proxy, and the record is in the file once it has exited.
fn stop_writes_buffered_records(signal: &str) {
    let pki = test_pki(&["allowed.test"]);
    let upstream = spawn_upstream(&pki);
    let mut proxy = Proxy::start(
        POLICY,
        upstream,
        &pki.ca_pem,
        &["allowed.test"],
        "[audit]\nflush_interval_ms = 10000\n",
    );
    let path = format!("/stopped-by-{signal}");
    get(&proxy, &path);
    assert!(
        records_for(&proxy, &path).is_empty(),
        "the record waits for the interval"
    );
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &proxy.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = proxy
        .wait_exit(Duration::from_secs(20))
        .expect("the proxy exits after the signal");
    assert!(exit.success(), "{exit:?}");
    let records = records_for(&proxy, &path);
    assert_eq!(records.len(), 1, "written at shutdown");
    assert_eq!(records[0]["decision"], "allow");
}

#[test]
fn sigint_writes_buffered_records() {
    stop_writes_buffered_records("INT");
}

#[test]
fn sigterm_writes_buffered_records() {
    stop_writes_buffered_records("TERM");
}

#[test]
fn an_overlong_interval_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("bundle")).unwrap();
    std::fs::write(dir.path().join("bundle/policy.rego"), POLICY).unwrap();
    std::fs::write(
        dir.path().join("cordon.toml"),
        "[policy]\nbundle = \"bundle\"\n[audit]\nflush_interval_ms = 60000\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cordon-proxy"))
        .arg("--config")
        .arg(dir.path().join("cordon.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("audit.flush_interval_ms: 60000 is longer than the 10000 ms allowed"),
        "{stderr}"
    );
}

/// A tmpfs of `size` mounted at a `cordon-test-` directory, unmounted and removed on drop.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = std::path::PathBuf::from(format!(
            "/var/tmp/cordon-test-{}-audit-disk",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let disk = SmallDisk(dir);
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "cordon-test"])
            .arg(&disk.0)
            .status()
            .unwrap();
        assert!(status.success(), "mount needs root");
        disk
    }

    /// Fills the disk up with a file of its own; returns it.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let block = vec![b'x'; 4096];
        while file.write_all(&block).is_ok() {}
        let _ = file.write_all(b"x");
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// The audit log's disk fills up: the proxy keeps serving, says on standard error how many
/// records it lost, leaves no half record in the file, and records again once there is room.
#[test]
fn a_full_disk_loses_whole_records_only_and_recovers() {
    let disk = SmallDisk::mount("64k");
    let pki = test_pki(&["allowed.test"]);
    let upstream = spawn_upstream(&pki);
    let audit = disk.0.join("audit.log");
    let proxy = Proxy::start(
        POLICY,
        upstream,
        &pki.ca_pem,
        &["allowed.test"],
        &format!(
            "[audit]\npath = \"{}\"\nflush_interval_ms = 0\n",
            audit.display()
        ),
    );
    get(&proxy, "/before");
    // Its record is written as the request ends, which can trail the answer: on the disk
    // before it fills, or the test would fill the disk under it (seen once under load).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(&audit)
        .unwrap_or_default()
        .contains("\"path\":\"/before\"")
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let filler = disk.fill();
    for n in 0..20 {
        get(&proxy, &format!("/while-full/{n}"));
    }
    // The records are written as requests end, which can trail the answers a little (more so
    // on a loaded machine): the loss is said once the writer has met the full disk.
    let said = "cannot write the audit log; these records are lost";
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut log = String::new();
    while !log.contains(said) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        log = std::fs::read_to_string(proxy.path("proxy.log")).unwrap();
    }
    assert!(log.contains(said), "{log}");
    std::fs::remove_file(filler).unwrap();
    get(&proxy, "/after");
    // Its record is written as the request ends, which can trail the answer a little.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(&audit)
        .unwrap_or_default()
        .contains("\"path\":\"/after\"")
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(text.ends_with('\n'), "a half record at the end");
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let paths: Vec<&str> = records.iter().filter_map(|r| r["path"].as_str()).collect();
    assert!(
        paths.contains(&"/before") && paths.contains(&"/after"),
        "{paths:?}"
    );
}

//! The disk under the controller's database fills up, root tier (it mounts a small tmpfs):
//! `cordon-controller serve` answers CMA's webhook deliveries 503 "the state disk is full"
//! (so CMA redelivers) and acknowledges nothing it did not record, says so once in its log and
//! in its metrics, keeps the sessions already recorded, and once space returns takes the
//! redeliveries without a restart, every record whole.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cordon_cma_sim::webhook::SigningKey;
use cordon_controller::store::{SessionState, Store};

const SECRET: &str = "whsec_Y29yZG9uLXN0YXRlLWRpc2stdGVzdC1zaWduaW5nLWtleQ==";

/// A tmpfs of `size` mounted at `<temp dir>/cordon-test-<pid>-state-disk`; unmounted (and
/// its directory removed) on drop, whether or not the test passed.
struct SmallDisk {
    point: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        assert!(
            rustix::process::geteuid().is_root(),
            "root tier: mounting the test's tmpfs needs root"
        );
        let dir = tempfile::tempdir().unwrap();
        let point = dir
            .path()
            .join(format!("cordon-test-{}-state-disk", std::process::id()));
        std::fs::create_dir(&point).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("cordon-test")
            .arg(&point)
            .status()
            .unwrap();
        assert!(status.success(), "mount -t tmpfs {}", point.display());
        SmallDisk { point, _dir: dir }
    }

    /// Fills the disk with a file of its own (the tmpfs has no blocks reserved for root, so
    /// nothing is left for anyone); returns it.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.point.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let block = vec![b'x'; 4096];
        while file.write_all(&block).is_ok() {}
        while file.write_all(b"x").is_ok() {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazily: a controller that outlived a failed test must not keep the mount.
        let _ = Command::new("umount").arg("-l").arg(&self.point).status();
        let _ = std::fs::remove_dir(&self.point);
    }
}

/// `cordon-controller serve` (webhooks only) with its state on `state_dir`; killed on drop.
struct Serve {
    child: Child,
    listen: u16,
    admin: u16,
    log: PathBuf,
}

impl Serve {
    fn start(dir: &Path, state_dir: &Path) -> Serve {
        std::fs::create_dir_all(dir.join("bundle")).unwrap();
        std::fs::write(
            dir.join("bundle/policy.rego"),
            "package cordon.egress\nimport rego.v1\ndefault decision := false\n",
        )
        .unwrap();
        let (listen, admin) = (cordon_testkit::free_port(), cordon_testkit::free_port());
        std::fs::write(
            dir.join("cordon.toml"),
            format!(
                "[proxy]\nexplicit_listen = \"127.0.0.1:0\"\nstate_dir = \"{}\"\n\
                 [policy]\nbundle = \"bundle\"\n\
                 [controller]\nlisten = \"127.0.0.1:{listen}\"\n\
                 admin_listen = \"127.0.0.1:{admin}\"\n",
                state_dir.display()
            ),
        )
        .unwrap();
        let log = dir.join("controller.log");
        let child = Command::new(env!("CARGO_BIN_EXE_cordon-controller"))
            .args(["serve", "--config"])
            .arg(dir.join("cordon.toml"))
            .env("CORDON_WEBHOOK_SECRET", SECRET)
            .env("CORDON_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let serve = Serve {
            child,
            listen,
            admin,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in [listen, admin] {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "serve did not start:\n{}",
                    serve.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        serve
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Delivers event `id` of `kind` for session `session`, signed as CMA signs: the status,
    /// the `retry-after` header if any, and the body.
    fn deliver(&self, id: &str, kind: &str, session: &str) -> (u16, Option<String>, String) {
        let body = format!(
            r#"{{"type":"event","id":"{id}","created_at":"2026-11-27T00:00:00Z","data":{{"type":"{kind}","id":"{session}","organization_id":"org","workspace_id":"ws"}}}}"#
        );
        let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
        let signature = SigningKey::parse(SECRET)
            .unwrap()
            .sign(id, timestamp, body.as_bytes());
        let out = Command::new("curl")
            .args(["-sS", "-i", "-X", "POST", "--data-binary", &body])
            .args(["-H", "content-type: application/json"])
            .args(["-H", &format!("webhook-id: {id}")])
            .args(["-H", &format!("webhook-timestamp: {timestamp}")])
            .args(["-H", &format!("webhook-signature: {signature}")])
            .arg(format!("http://127.0.0.1:{}/webhooks", self.listen))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
        let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no answer: {text}"));
        let retry_after = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("retry-after")
                .then(|| value.trim().to_string())
        });
        (status, retry_after, body.to_string())
    }

    fn admin(&self, path: &str) -> String {
        let out = Command::new("curl")
            .args(["-sS", &format!("http://127.0.0.1:{}{path}", self.admin)])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The value of the metric sample `name` (with its labels).
    fn metric(&self, name: &str) -> String {
        let text = self.admin("/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ').map(str::to_string))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const FULL: &str = "cordon_controller_store_disk_full";
const DISK_FULL_ERRORS: &str = "cordon_controller_store_write_errors_total{kind=\"disk_full\"}";

#[test]
fn a_full_state_disk_refuses_deliveries_keeps_sessions_and_recovers_without_a_restart() {
    let disk = SmallDisk::mount("2m");
    let dir = tempfile::tempdir().unwrap();
    let state = disk.point.join("state");
    let serve = Serve::start(dir.path(), &state);
    let db = state.join("controller/state.db");

    // A session the controller is serving: its sandbox record and its work item.
    {
        let store = Store::open(&db).unwrap();
        store.claim("sesn_live", 8, "tok_live", false).unwrap();
        store.set_running("sesn_live", "sandbox").unwrap();
        store
            .begin_work("work_live", "sesn_live", "{\"id\":\"work_live\"}")
            .unwrap();
    }
    let (status, _, body) = serve.deliver("evt_before", "session.status_run_started", "sesn_live");
    assert_eq!((status, body.as_str()), (200, r#"{"status":"accepted"}"#));
    assert_eq!(serve.metric(FULL), "0");

    let filler = disk.fill();
    let refused = [
        ("evt_full_0", "session.status_idled"),
        ("evt_full_1", "session.status_run_started"),
        ("evt_full_2", "session.status_idled"),
        ("evt_full_3", "session.status_terminated"),
    ];
    for (id, kind) in refused {
        let (status, retry_after, body) = serve.deliver(id, kind, "sesn_live");
        assert_eq!(status, 503, "{id}: {body}\n{}", serve.log());
        assert!(body.contains("the state disk is full"), "{body}");
        assert!(retry_after.is_some(), "a 503 says when to retry");
    }
    // A redelivery of what was recorded before is still acknowledged: it is on disk.
    let (status, _, body) = serve.deliver("evt_before", "session.status_run_started", "sesn_live");
    assert_eq!((status, body.as_str()), (200, r#"{"status":"duplicate"}"#));
    // A write through the store says the same (what `cordon-controller sandbox start` prints).
    let error = Store::open(&db)
        .unwrap()
        .claim("sesn_new", 8, "tok_new", false)
        .unwrap_err();
    assert!(error.is_disk_full(), "{error:?}");
    assert!(
        error.to_string().contains("the state disk is full"),
        "{error}"
    );
    // Reported: once in the log however many writes were refused, and in the metrics.
    let log = serve.log();
    assert_eq!(
        log.matches("the state disk is full: the controller's database refuses writes")
            .count(),
        1,
        "{log}"
    );
    assert_eq!(serve.metric(FULL), "1");
    assert_eq!(serve.metric(DISK_FULL_ERRORS), refused.len().to_string());
    // What was recorded is still read: the served session is listed.
    let sessions = serve.admin("/sessions");
    assert!(sessions.contains("work_live"), "{sessions}");

    std::fs::remove_file(filler).unwrap();
    // CMA redelivers; the same controller records each, whole.
    for (id, kind) in refused {
        let (status, _, body) = serve.deliver(id, kind, "sesn_live");
        assert_eq!(
            (status, body.as_str()),
            (200, r#"{"status":"accepted"}"#),
            "{id}\n{}",
            serve.log()
        );
    }
    assert_eq!(serve.metric(FULL), "0");
    assert!(
        serve.log().contains(
            "the state disk has room again: the controller's database takes writes again"
        ),
        "{}",
        serve.log()
    );
    drop(serve);

    let store = Store::open(&db).unwrap();
    let check: String = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let mut recorded: Vec<String> = store
        .webhooks(100)
        .unwrap()
        .into_iter()
        .map(|w| w.id)
        .collect();
    recorded.sort();
    assert_eq!(
        recorded,
        [
            "evt_before",
            "evt_full_0",
            "evt_full_1",
            "evt_full_2",
            "evt_full_3"
        ],
        "each delivery recorded once"
    );
    let live = store.get("sesn_live").unwrap().unwrap();
    assert_eq!(
        (live.state, live.token.as_str()),
        (SessionState::Running, "tok_live")
    );
    assert!(
        store.get("sesn_new").unwrap().is_none(),
        "the refused claim left nothing"
    );
    let open: Vec<String> = store
        .open_work()
        .unwrap()
        .into_iter()
        .map(|w| w.id)
        .collect();
    assert_eq!(open, ["work_live"]);
    // The terminated event's effect was recorded with it, on its redelivery.
    assert!(
        store
            .workspace("sesn_live")
            .unwrap()
            .is_some_and(|w| w.ended_at.is_some())
    );
}

//! `cordon-controller serve` receives CMA webhooks signed by the reference Standard Webhooks
//! library (the `standardwebhooks` PyPI package, installed by `make deps` into the venv at
//! `$CORDON_VENV`, default `~/.cache/cordon/venv`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const SECRET: &str = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

fn python() -> PathBuf {
    let venv = std::env::var_os("CORDON_VENV").map_or_else(
        || PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/cordon/venv"),
        PathBuf::from,
    );
    let python = venv.join("bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run `make deps` (scripts/install-deps.sh creates the venv)",
        python.display()
    );
    python
}

/// Headers for `body` as event `id`, signed by the reference library `age` seconds ago.
fn signed(id: &str, body: &str, age: i64) -> Vec<String> {
    let script = format!(
        "import datetime, sys\nfrom standardwebhooks.webhooks import Webhook\n\
         ts = datetime.datetime.now(tz=datetime.timezone.utc) - datetime.timedelta(seconds={age})\n\
         print(Webhook('{SECRET}').sign('{id}', ts, sys.stdin.read()))\nprint(int(ts.timestamp()))"
    );
    let mut cmd = Command::new(python());
    cmd.args(["-c", &script]);
    let text = stdout_with_input(cmd, body);
    let mut lines = text.lines();
    let signature = lines.next().unwrap().to_string();
    let timestamp = lines.next().unwrap().to_string();
    vec![
        format!("webhook-id: {id}"),
        format!("webhook-timestamp: {timestamp}"),
        format!("webhook-signature: {signature}"),
    ]
}

/// Runs `cmd` with `input` on its standard input; its standard output.
fn stdout_with_input(mut cmd: Command, input: &str) -> String {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
}

struct Server(Child, u16, tempfile::TempDir);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve() -> Server {
    serve_with(Some(SECRET))
}

/// `serve` with `secret` in its environment (none: the variable unset).
fn serve_with(secret: Option<&str>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("bundle")).unwrap();
    std::fs::write(
        dir.path().join("bundle/policy.rego"),
        "package cordon.egress\nimport rego.v1\ndefault decision := false\n",
    )
    .unwrap();
    let (port, admin) = (cordon_testkit::free_port(), cordon_testkit::free_port());
    std::fs::write(
        dir.path().join("cordon.toml"),
        format!(
            "[proxy]\nexplicit_listen = \"127.0.0.1:0\"\nstate_dir = \"state\"\n[policy]\nbundle = \"bundle\"\n\
             [controller]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
             max_body_bytes = 4096\n"
        ),
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_cordon-controller"));
    command
        .args(["serve", "--config"])
        .arg(dir.path().join("cordon.toml"))
        .env_remove("CORDON_WEBHOOK_SECRET");
    if let Some(secret) = secret {
        command.env("CORDON_WEBHOOK_SECRET", secret);
    }
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        cordon_testkit::wait_for_port(port, Duration::from_secs(20)),
        "serve did not start"
    );
    Server(child, port, dir)
}

/// POSTs `body` with `headers`; (status, body).
fn post(server: &Server, headers: &[String], body: &str) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "-w",
        "\n%{http_code}",
        "-X",
        "POST",
        "--data-binary",
        "@-",
    ])
    .arg(format!("http://127.0.0.1:{}/webhooks", server.1));
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = stdout_with_input(cmd, body);
    let (text, code) = out.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), text.to_string())
}

fn event(id: &str, kind: &str) -> String {
    format!(
        r#"{{"type":"event","id":"{id}","created_at":"2026-11-27T00:00:00Z","data":{{"type":"{kind}","id":"sesn_1","organization_id":"org","workspace_id":"ws"}}}}"#
    )
}

#[test]
fn deliveries_signed_by_the_reference_library_are_verified_and_deduplicated() {
    let server = serve();
    let body = event("evt_1", "session.status_run_started");
    let headers = signed("evt_1", &body, 0);
    assert_eq!(
        post(&server, &headers, &body),
        (200, r#"{"status":"accepted"}"#.into())
    );
    // CMA retries and duplicates: the same event is acknowledged, not recorded twice.
    let again = signed("evt_1", &body, 0);
    assert_eq!(
        post(&server, &again, &body),
        (200, r#"{"status":"duplicate"}"#.into())
    );

    // Refusals, each saying why.
    let tampered = body.replace("sesn_1", "sesn_2");
    let (status, text) = post(&server, &headers, &tampered);
    assert_eq!(status, 401);
    assert!(text.contains("no v1 signature"), "{text}");
    let old = event("evt_2", "session.status_idled");
    let (status, text) = post(&server, &signed("evt_2", &old, 400), &old);
    assert_eq!(status, 401);
    assert!(text.contains("at most 300 s"), "{text}");
    let (status, text) = post(&server, &[], &body);
    assert_eq!(status, 401);
    assert!(text.contains("missing header webhook-id"), "{text}");
    let not_event = r#"{"hello":"world"}"#;
    let (status, text) = post(&server, &signed("evt_3", not_event, 0), not_event);
    assert_eq!(status, 400);
    assert!(text.contains("not a CMA event"), "{text}");
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(8192));
    let (status, _) = post(&server, &signed("evt_4", &big, 0), &big);
    assert_eq!(status, 413);

    // Recorded once, with its type and session.
    let store =
        cordon_controller::store::Store::open(&server.2.path().join("state/controller/state.db"))
            .unwrap();
    let recorded = store.webhooks(10).unwrap();
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0].kind, "session.status_run_started");
    assert_eq!(recorded[0].session_id.as_deref(), Some("sesn_1"));
}

#[test]
fn without_a_cma_environment_no_secret_is_needed_and_webhooks_are_refused() {
    let server = serve_with(None);
    let body = event("evt_nosecret", "session.status_run_started");
    let (status, text) = post(&server, &signed("evt_nosecret", &body, 0), &body);
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("no webhook secret is set"), "{text}");
}

#[test]
fn a_cma_environment_without_a_secret_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("cordon.toml"),
        "[proxy]\nstate_dir = \"state\"\n[controller]\nenvironment_id = \"env_1\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cordon-controller"))
        .args(["serve", "--config"])
        .arg(dir.path().join("cordon.toml"))
        .env_remove("CORDON_WEBHOOK_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the webhook secret is not set"), "{stderr}");
}

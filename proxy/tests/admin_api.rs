//! The admin API's views for the controller's dashboard: `POST /evaluate` decides a request a
//! session could send exactly as the proxy would (its registration, the live policy, the
//! credential bindings) without sending anything, writing an audit record or counting it;
//! `GET /policy` shows the serving bundle's files with their digests; `GET /secrets` the
//! store's names and bindings, never a value. Every `Proxy` drop also checks that no secret
//! value reached anything the proxy produced (support::TEST_SECRET_VALUES).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};
use support::{GITHUB_TOKEN, Proxy, test_pki};

const POLICY: &str = r#"package cordon.egress
import rego.v1

default decision := {"allowed": false, "reason": "default deny"}

method := input.attributes.request.http.method

decision := {"allowed": false, "reason": "closed.test is closed at connect"} if {
	input.connection.stage == "connect"
	input.destination.host == "closed.test"
} else := {"allowed": true, "reason": "connect"} if {
	input.connection.stage == "connect"
} else := {
	"allowed": true,
	"reason": "team platform may read",
	"inject": [{"secret": "github", "header": "authorization"}],
} if {
	input.destination.host == "api.example.test"
	input.session.labels.team == "platform"
	method == "GET"
} else := {
	"allowed": false,
	"reason": sprintf("session %s may not %s", [input.session.id, method]),
	"http_status": 405,
} if {
	input.destination.host == "api.example.test"
	method != "GET"
} else := {"allowed": true, "reason": "anything goes here"} if {
	input.destination.host in {"127.0.0.1", "unrouted.test"}
}
"#;

const HOST: &str = "api.example.test";

/// A value the tests send in a header: it must never come back or reach the log.
const HEADER_VALUE: &str = "Bearer sandbox-own-value-5f3a9c";

/// An upstream that only counts the connections it accepts.
fn counting_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            counted.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (address, count)
}

fn private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The proxy with `POLICY`, `api.example.test` routed to `upstream`, and a store holding
/// `github` (Bearer, bound to api.example.test, its value in a file).
fn start(upstream: SocketAddr, secrets: &Path) -> Proxy {
    private(&secrets.join("github-token"), GITHUB_TOKEN);
    let store = secrets.join("secrets.toml");
    private(
        &store,
        "[secrets.github]\nvalue_file = \"github-token\"\nhosts = [\"api.example.test\"]\n\
         format = \"bearer\"\nplaceholder_prefix = \"ghp_\"\n",
    );
    let pki = test_pki(&[HOST]);
    Proxy::start(
        POLICY,
        upstream,
        &pki.ca_pem,
        &[HOST],
        &format!("[credentials]\nstore = \"{}\"\n", store.display()),
    )
}

fn register(proxy: &Proxy, id: &str, source: &str, labels: Value) {
    let body = json!({"source": source, "labels": labels}).to_string();
    let answer = proxy.admin("PUT", &format!("/sessions/{id}"), Some(&body));
    assert!(answer.contains(&format!("\"id\":\"{id}\"")), "{answer}");
}

/// An admin call's status and body.
fn call(proxy: &Proxy, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-s", "-w", "\n%{http_code}", "-X", method])
        .arg(format!("http://127.0.0.1:{}{path}", proxy.admin));
    if let Some(body) = body {
        cmd.args(["--data-binary", body]);
    }
    let out = cmd.output().unwrap();
    proxy.record(&out.stdout);
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.parse().unwrap(), body.to_string())
}

fn evaluate(proxy: &Proxy, request: Value) -> Value {
    let (status, body) = call(proxy, "POST", "/evaluate", Some(&request.to_string()));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The `check` of each `not_checked` entry.
fn checks(not_checked: &Value) -> Vec<&str> {
    not_checked
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["check"].as_str().unwrap())
        .collect()
}

/// The lines of the request and policy metrics, to compare before and after.
fn request_metrics(proxy: &Proxy) -> Vec<String> {
    proxy
        .metrics_text()
        .lines()
        .filter(|l| {
            l.starts_with("cordon_proxy_requests_total")
                || l.starts_with("cordon_proxy_policy_eval_seconds_count")
                || l.starts_with("cordon_proxy_credentials_total")
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn evaluates_allow_and_deny_with_the_policys_reason_and_sends_nothing() {
    let (upstream, connections) = counting_upstream();
    let secrets = tempfile::tempdir().unwrap();
    let proxy = start(upstream, secrets.path());
    register(&proxy, "sesn_a", "127.0.0.1", json!({"team": "platform"}));
    let metrics_before = request_metrics(&proxy);
    let generation: Value = serde_json::from_str(&proxy.admin("GET", "/readyz", None)).unwrap();

    let allowed = evaluate(
        &proxy,
        json!({"session": "sesn_a", "method": "GET", "url": "https://api.example.test/v1/x?q=1",
               "headers": {"authorization": HEADER_VALUE, "accept": "application/json"}}),
    );
    assert_eq!(allowed["decision"], "allow", "{allowed}");
    assert_eq!(allowed["stage"], "request");
    assert_eq!(allowed["reason_class"], "policy");
    assert_eq!(allowed["reason"], "team platform may read");
    assert_eq!(allowed["credentials"], json!(["github->authorization"]));
    assert_eq!(
        allowed["policy_generation"],
        generation["policy_generation"]
    );
    assert!(allowed.get("status").is_none(), "{allowed}");
    assert!(allowed.get("would_deny").is_none(), "{allowed}");
    // A sandbox's connection: transparent (the proxy's default here), SNI from the URL.
    assert_eq!(allowed["connection"]["mode"], "transparent");
    assert_eq!(allowed["connection"]["sni"], HOST);
    assert_eq!(allowed["connection"]["source"], "127.0.0.1");
    // The host is routed by `connect_to` (no lookup, no guard): the upstream goes unchecked,
    // and the address a transparent sandbox would dial (no DNS stub answered for the name).
    assert_eq!(
        checks(&allowed["not_checked"]),
        ["upstream", "original_destination"]
    );

    let denied = evaluate(
        &proxy,
        json!({"session": "sesn_a", "method": "POST", "url": "https://api.example.test/v1/x",
               "headers": {"content-type": "application/json"}, "body": "{\"a\": 1}",
               "mode": "explicit"}),
    );
    assert_eq!(denied["decision"], "deny", "{denied}");
    assert_eq!(denied["reason_class"], "policy");
    assert_eq!(denied["reason"], "session sesn_a may not POST");
    assert_eq!(denied["status"], 405);
    assert_eq!(denied["credentials"], json!([]));
    assert_eq!(
        denied["connection"]["connect_target"],
        "api.example.test:443"
    );
    assert_eq!(checks(&denied["not_checked"]), ["upstream"]);

    // Nothing was sent, recorded or counted.
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(connections.load(Ordering::SeqCst), 0);
    let requests: Vec<Value> = proxy
        .audit_records()
        .into_iter()
        .filter(|r| r["kind"] == "request")
        .collect();
    assert!(requests.is_empty(), "{requests:?}");
    assert_eq!(request_metrics(&proxy), metrics_before);
    let sessions = proxy.admin("GET", "/sessions", None);
    assert!(
        sessions.contains("\"egress\":{\"allowed\":0,\"denied\":0}"),
        "{sessions}"
    );
    let log = std::fs::read_to_string(proxy.path("proxy.log")).unwrap_or_default();
    assert!(!log.contains("sandbox-own-value"), "{log}");
}

#[test]
fn the_policy_sees_the_registrations_labels_and_report_mode() {
    let (upstream, _) = counting_upstream();
    let secrets = tempfile::tempdir().unwrap();
    let proxy = start(upstream, secrets.path());
    let get = json!({"session": "sesn_b", "method": "GET", "url": "https://api.example.test/"});

    register(&proxy, "sesn_b", "127.0.0.2", json!({"team": "data"}));
    let denied = evaluate(&proxy, get.clone());
    assert_eq!(denied["decision"], "deny", "{denied}");
    assert_eq!(denied["reason"], "default deny");
    assert_eq!(denied["status"], 403);

    // The same id re-registered with the label the policy wants.
    register(&proxy, "sesn_b", "127.0.0.2", json!({"team": "platform"}));
    let allowed = evaluate(&proxy, get);
    assert_eq!(allowed["decision"], "allow", "{allowed}");
    assert_eq!(allowed["connection"]["source"], "127.0.0.2");

    // A session in report mode: the denial goes through, granting no credential.
    register(
        &proxy,
        "sesn_r",
        "127.0.0.3",
        json!({"policy_mode": "report"}),
    );
    let reported = evaluate(
        &proxy,
        json!({"session": "sesn_r", "method": "DELETE", "url": "https://api.example.test/x"}),
    );
    assert_eq!(reported["decision"], "allow", "{reported}");
    assert_eq!(reported["would_deny"], true);
    assert_eq!(reported["reason"], "session sesn_r may not DELETE");
    assert_eq!(reported["credentials"], json!([]));
}

#[test]
fn applies_the_checks_around_the_policy_that_need_no_network() {
    let (upstream, connections) = counting_upstream();
    let secrets = tempfile::tempdir().unwrap();
    let proxy = start(upstream, secrets.path());
    register(&proxy, "sesn_c", "127.0.0.1", json!({"team": "platform"}));

    // The SSRF guard on an IP literal.
    let literal = evaluate(
        &proxy,
        json!({"session": "sesn_c", "method": "GET", "url": "http://127.0.0.1:9/"}),
    );
    assert_eq!(literal["decision"], "deny", "{literal}");
    assert_eq!(literal["reason_class"], "ssrf");
    assert_eq!(literal["status"], 403);
    assert!(
        literal["reason"].as_str().unwrap().contains("loopback"),
        "{literal}"
    );

    // A name is not resolved: allowed by the policy, and the guard is named as not checked.
    let name = evaluate(
        &proxy,
        json!({"session": "sesn_c", "method": "GET", "url": "https://unrouted.test/"}),
    );
    assert_eq!(name["decision"], "allow", "{name}");
    let ssrf = name["not_checked"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "ssrf")
        .expect("the SSRF guard on a name is not checked");
    assert!(
        ssrf["reason"].as_str().unwrap().contains("unrouted.test"),
        "{ssrf}"
    );

    // Host pinning: a Host header naming another host than the connection's server name.
    let fronted = evaluate(
        &proxy,
        json!({"session": "sesn_c", "method": "GET", "url": "https://unrouted.test/",
               "headers": {"host": HOST}}),
    );
    assert_eq!(fronted["reason_class"], "fronting", "{fronted}");
    assert_eq!(fronted["status"], 421);

    // Connection-level refusals: the connect stage (a TLS client is cut off, so no status;
    // a plaintext one is told), and TLS to an IP literal, which carries no SNI.
    let closed = evaluate(
        &proxy,
        json!({"session": "sesn_c", "method": "GET", "url": "https://closed.test/"}),
    );
    assert_eq!(closed["decision"], "deny", "{closed}");
    assert_eq!(closed["stage"], "connect");
    assert_eq!(closed["reason"], "closed.test is closed at connect");
    assert!(closed.get("status").is_none(), "{closed}");
    let plain = evaluate(
        &proxy,
        json!({"session": "sesn_c", "method": "GET", "url": "http://closed.test/",
               "mode": "explicit"}),
    );
    assert_eq!(plain["stage"], "connect", "{plain}");
    assert_eq!(plain["reason"], "closed.test is closed at connect");
    assert_eq!(plain["status"], 403);
    let no_sni = evaluate(
        &proxy,
        json!({"session": "sesn_c", "method": "GET", "url": "https://192.0.2.7/"}),
    );
    assert_eq!(no_sni["reason_class"], "no_sni", "{no_sni}");
    assert_eq!(no_sni["stage"], "connect");

    // The session's placeholder in a header toward a host outside the secret's binding.
    let minted = proxy.admin(
        "POST",
        "/sessions/sesn_c/placeholders",
        Some(r#"{"secrets": ["github"]}"#),
    );
    let minted: Value = serde_json::from_str(&minted).unwrap();
    let placeholder = minted["placeholders"]["github"].as_str().unwrap();
    let leaked = evaluate(
        &proxy,
        json!({"session": "sesn_c", "method": "GET", "url": "https://unrouted.test/",
               "headers": {"x-leak": placeholder}}),
    );
    assert_eq!(leaked["decision"], "deny", "{leaked}");
    assert_eq!(leaked["reason_class"], "exfiltration");
    // In its own header toward the bound host, it would be swapped.
    let swapped = evaluate(
        &proxy,
        json!({"session": "sesn_c", "method": "GET", "url": "https://api.example.test/",
               "headers": {"authorization": format!("Bearer {placeholder}")}}),
    );
    assert_eq!(swapped["decision"], "allow", "{swapped}");
    assert_eq!(swapped["placeholders"], json!(["github->authorization"]));
    assert_eq!(connections.load(Ordering::SeqCst), 0);
}

#[test]
fn refuses_bad_input_with_its_status_and_what_was_expected() {
    let (upstream, _) = counting_upstream();
    let secrets = tempfile::tempdir().unwrap();
    let proxy = start(upstream, secrets.path());
    register(&proxy, "sesn_d", "127.0.0.1", json!({}));
    // Under a name that is not this machine's (DNS rebinding in a browser on the host), the
    // admin API answers nothing: not a reload, not a registration.
    for (method, path) in [
        ("POST", "/reload"),
        ("PUT", "/sessions/sesn_x"),
        ("GET", "/secrets"),
    ] {
        let out = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", method])
            .args([
                "-H",
                "host: rebound.example.test",
                "--data-binary",
                r#"{"source": "10.0.0.9"}"#,
            ])
            .arg(format!("http://127.0.0.1:{}{path}", proxy.admin))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "421",
            "{method} {path}"
        );
    }
    let ok = |extra: Value| {
        let mut request =
            json!({"session": "sesn_d", "method": "GET", "url": "https://api.example.test/"});
        for (k, v) in extra.as_object().unwrap() {
            request[k] = v.clone();
        }
        request.to_string()
    };
    let big = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        big.path(),
        ok(json!({"body": "x".repeat(70 * 1024)})).as_bytes(),
    )
    .unwrap();
    let big = format!("@{}", big.path().display());
    for (body, status, needle) in [
        (
            ok(json!({"session": "nobody"})),
            404,
            "no session \"nobody\"",
        ),
        ("{\"session\": ".to_string(), 400, "not JSON"),
        (ok(json!({"url": "api.example.test/x"})), 400, "url is not"),
        (ok(json!({"method": "GE T"})), 400, "not an HTTP method"),
        (
            ok(json!({"headers": ["a"]})),
            400,
            "field \"headers\" must be an object",
        ),
        (
            ok(json!({"headers": {"authorization": format!("{HEADER_VALUE}\r\nx-injected: 1")}})),
            400,
            "header \"authorization\": the value is not a valid HTTP field value",
        ),
        (
            ok(json!({"colour": "blue"})),
            400,
            "unknown field \"colour\"",
        ),
        (big, 400, "larger than 64 KiB"),
    ] {
        let (got, answer) = call(&proxy, "POST", "/evaluate", Some(&body));
        assert_eq!(got, status, "{answer}");
        assert!(!answer.contains("sandbox-own-value"), "{answer}");
        let error: Value = serde_json::from_str(&answer).unwrap();
        let error = error["error"].as_str().unwrap();
        assert!(error.contains(needle), "{needle}: {error}");
        if status == 400 {
            assert!(
                error.contains("expected {\"session\""),
                "the shape: {error}"
            );
        }
    }
    let (got, _) = call(&proxy, "GET", "/evaluate", None);
    assert_eq!(got, 405);
    let log = std::fs::read_to_string(proxy.path("proxy.log")).unwrap_or_default();
    assert!(!log.contains("sandbox-own-value"), "{log}");
}

/// `sha256sum`'s digest of `path`.
fn sha256sum(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn lists_the_serving_bundle_and_the_secrets_without_their_values() {
    let (upstream, _) = counting_upstream();
    let secrets = tempfile::tempdir().unwrap();
    let proxy = start(upstream, secrets.path());
    // A data file that names the secret, loaded by a reload.
    std::fs::write(
        proxy.path("bundle/data.json"),
        r#"{"names": {"api": {"secret": "github"}}}"#,
    )
    .unwrap();
    let reloaded = proxy.admin("POST", "/reload", None);
    assert!(reloaded.contains("policy_generation"), "{reloaded}");

    let (status, body) = call(&proxy, "GET", "/policy", None);
    assert_eq!(status, 200, "{body}");
    let policy: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(policy["query"], "data.cordon.egress.decision");
    assert_eq!(policy["modules"], 1);
    assert!(
        policy["bundle"].as_str().unwrap().ends_with("bundle"),
        "{policy}"
    );
    assert!(
        policy["content_hash"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    let loaded_at = policy["loaded_at"].as_str().unwrap();
    let loaded =
        time::OffsetDateTime::parse(loaded_at, &time::format_description::well_known::Rfc3339)
            .unwrap();
    assert_eq!(loaded.offset(), time::UtcOffset::UTC, "{loaded_at}");
    let files = policy["files"].as_array().unwrap();
    let listed: Vec<(&str, &str)> = files
        .iter()
        .map(|f| (f["path"].as_str().unwrap(), f["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(listed, [("data.json", "data"), ("policy.rego", "module")]);
    for file in files {
        let on_disk = proxy.path(&format!("bundle/{}", file["path"].as_str().unwrap()));
        assert_eq!(file["sha256"], sha256sum(&on_disk), "{file}");
        assert_eq!(
            file["bytes"],
            std::fs::metadata(&on_disk).unwrap().len(),
            "{file}"
        );
    }

    let (status, body) = call(&proxy, "GET", "/secrets", None);
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains(GITHUB_TOKEN), "a value leaked into /secrets");
    assert!(!body.contains("github-token"), "{body}");
    let listed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        listed,
        json!({"secrets": [{
            "name": "github",
            "placeholder_prefix": "ghp_",
            "bindings": [{
                "hosts": ["api.example.test"],
                "methods": [],
                "path_prefixes": [],
                "allow_plaintext": false,
                "allow_upgrade": false,
                "headers": ["authorization"],
                "format": "bearer",
            }],
            "policy_files": ["data.json", "policy.rego"],
        }]})
    );
}

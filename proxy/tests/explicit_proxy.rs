//! The gateway as a user runs it: the `cordon-proxy` binary with a config file, curl as the
//! client (`--proxy`, `--cacert`), and a fake HTTPS upstream on 127.0.0.1 behind a test CA.
//! Host names reach the fake upstream through `[upstream] connect_to`; nothing leaves loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Read;
use std::process::Command;

use support::{Proxy, spawn_h2_upstream, spawn_upstream, test_pki, text};

const POLICY: &str = r#"package cordon.egress
import rego.v1

default decision := {"allowed": false, "reason": "default deny"}

decision := {"allowed": true, "reason": "connect"} if input.connection.stage == "connect"

decision := {
	"allowed": true,
	"reason": "listed",
	"headers": {"x-cordon-test": "set-by-policy"},
	"request_headers_to_remove": ["x-remove-me"],
	"response_headers_to_add": {"x-cordon-seen": "yes"},
} if {
	input.connection.stage == "request"
	input.destination.host in {"allowed.test", "badcert.test", "127.0.0.2"}
	input.attributes.request.http.method == "GET"
}

decision := {"allowed": false, "reason": "posting is not allowed here", "http_status": 451} if {
	input.connection.stage == "request"
	input.attributes.request.http.method == "POST"
}
"#;

#[test]
fn explicit_proxy_end_to_end() {
    let pki = test_pki(&["allowed.test"]);
    let upstream = spawn_upstream(&pki);
    let proxy = Proxy::start(
        POLICY,
        upstream,
        &pki.ca_pem,
        &["allowed.test", "badcert.test"],
        "",
    );
    let registered = proxy.admin(
        "PUT",
        "/sessions/sesn_test",
        Some(r#"{"source": "127.0.0.1"}"#),
    );
    assert!(registered.contains("sesn_test"), "{registered}");

    // Allowed: intercepted, decided, forwarded with the decision's header changes.
    let out = proxy.curl(&[
        "-H",
        "X-Remove-Me: secret-ish",
        "https://allowed.test/ok?q=1",
    ]);
    let body = text(&out);
    assert!(body.contains("HTTP/2 200"), "{body}");
    assert!(body.contains("x-cordon-test: set-by-policy"), "{body}");
    assert!(body.contains("x-cordon-seen: yes"), "{body}");
    assert!(!body.to_ascii_lowercase().contains("x-remove-me"), "{body}");

    // HTTP/1.1 downstream works the same.
    let out = proxy.curl(&["--http1.1", "https://allowed.test/h1"]);
    assert!(text(&out).contains("HTTP/1.1 200"), "{}", text(&out));

    // Denied by policy: the policy's status, a JSON reason and the cordon-error header.
    let out = proxy.curl(&["-X", "POST", "https://allowed.test/upload"]);
    let body = text(&out);
    assert!(body.contains("HTTP/2 451"), "{body}");
    assert!(body.contains("cordon-error: policy"), "{body}");
    assert!(body.contains("posting is not allowed here"), "{body}");
    assert!(body.contains("\"decision_id\""), "{body}");

    // Domain fronting: a Host that is not the TLS server name.
    let out = proxy.curl(&[
        "--http1.1",
        "-H",
        "Host: elsewhere.test",
        "https://allowed.test/",
    ]);
    let body = text(&out);
    assert!(body.contains("421"), "{body}");
    assert!(body.contains("cordon-error: fronting"), "{body}");

    // A plain-HTTP proxy connection may carry requests for several hosts (no CONNECT pins
    // it): curl reuses one connection for both URLs, and neither is taken for fronting.
    let out = proxy.curl(&["http://allowed.test/one", "http://badcert.test/two"]);
    let body = text(&out);
    assert_eq!(body.matches("HTTP/1.1").count(), 2, "{body}");
    assert!(!body.contains("421"), "{body}");

    // SSRF guard: an allowed request to a loopback literal is refused.
    let out = proxy.curl(&["http://127.0.0.2:9/"]);
    let body = text(&out);
    assert!(body.contains("403"), "{body}");
    assert!(body.contains("cordon-error: ssrf"), "{body}");

    // An upstream whose certificate does not name the host: 502, never a silent pass.
    let out = proxy.curl(&["https://badcert.test/"]);
    let body = text(&out);
    assert!(body.contains("502"), "{body}");
    assert!(body.contains("cordon-error: upstream"), "{body}");

    // Unregistered sources are session "unknown" (this policy lets them through; the point is
    // the audit record names the session).
    assert!(
        proxy
            .admin("DELETE", "/sessions/sesn_test", None)
            .contains("sesn_test")
    );

    // Metrics.
    let metrics = proxy.metrics_text();
    for needle in [
        "cordon_proxy_requests_total{decision=\"allow\",protocol=\"http2\"}",
        "cordon_proxy_requests_total{decision=\"deny\"",
        "cordon_proxy_certs_minted_total",
        "cordon_proxy_connections_total{mode=\"explicit\",outcome=\"intercepted\"}",
        "cordon_policy_generation_info",
        "cordon_build_info",
        "cordon_proxy_policy_eval_seconds_count",
        "cordon_proxy_upstream_duration_seconds_count",
        "cordon_proxy_tls_handshake_seconds_count",
        "cordon_proxy_cert_cache_hits_total",
        "cordon_proxy_bytes_total{direction=\"downstream\"}",
        "cordon_proxy_active_connections",
    ] {
        assert!(metrics.contains(needle), "missing {needle}:\n{metrics}");
    }

    // The audit log: a record per request, with the reason, without query strings.
    let mut audit = String::new();
    std::fs::File::open(proxy.path("state/audit.log"))
        .unwrap()
        .read_to_string(&mut audit)
        .unwrap();
    let records: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        records
            .iter()
            .any(|r| r["decision"] == "allow" && r["session"] == "sesn_test" && r["path"] == "/ok")
    );
    assert!(
        records
            .iter()
            .any(|r| r["reason"] == "posting is not allowed here" && r["status"] == 451)
    );
    assert!(records.iter().any(|r| r["reason_class"] == "ssrf"));
    // Requests name the connection that carried them.
    assert!(
        records
            .iter()
            .filter(|r| r["kind"] == "request")
            .all(|r| r["connection_id"].is_string())
    );
    assert!(!audit.contains("q=1"), "query strings must not be logged");
    assert!(
        !audit.contains("secret-ish"),
        "header values must not be logged"
    );
    let log = std::fs::read_to_string(proxy.path("proxy.log")).unwrap();
    assert!(
        log.contains("badcert.test/"),
        "the upstream failure is logged: {log}"
    );
    assert!(
        !log.contains("query-secret"),
        "query strings must not reach the proxy log: {log}"
    );
}

#[test]
fn bad_config_lists_every_error_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cordon.toml");
    std::fs::write(
        &path,
        "[proxy]\nexplicit_listen = \"nope\"\n[tls]\nno_sni = \"maybe\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cordon-proxy"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in ["proxy.explicit_listen", "tls.no_sni", "policy.bundle"] {
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
}

fn metric_value(proxy: &Proxy, prefix: &str) -> f64 {
    proxy
        .metrics_text()
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn reload_swaps_good_policies_and_keeps_the_last_good_one() {
    let pki = test_pki(&["allowed.test"]);
    let upstream = spawn_upstream(&pki);
    let proxy = Proxy::start(POLICY, upstream, &pki.ca_pem, &["allowed.test"], "");
    let status = |proxy: &Proxy| {
        let out = proxy.curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "https://allowed.test/x",
        ]);
        let body = text(&out);
        body.rsplit('\n').next().unwrap_or("").to_string()
    };
    assert_eq!(status(&proxy), "200");

    // A broken bundle: the reload is refused with the reason, the old generation serves on.
    std::fs::write(
        proxy.path("bundle/policy.rego"),
        "package cordon.egress\ndecision := {\n",
    )
    .unwrap();
    let answer = proxy.admin("POST", "/reload", None);
    assert!(answer.contains("reload refused"), "{answer}");
    assert!(answer.contains("policy.rego:"), "{answer}");
    assert_eq!(status(&proxy), "200");
    assert_eq!(
        metric_value(&proxy, "cordon_policy_reloads_total{outcome=\"failure\"}"),
        1.0
    );

    // A good bundle via SIGHUP: every later request is decided by it.
    std::fs::write(
        proxy.path("bundle/policy.rego"),
        "package cordon.egress\nimport rego.v1\ndecision := {\"allowed\": false, \"reason\": \"locked down\"}\n",
    )
    .unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &proxy.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while metric_value(&proxy, "cordon_policy_reloads_total{outcome=\"success\"}") < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not reload"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // The connect stage is denied now too, so curl sees the connection refused (no HTTP code).
    assert_ne!(status(&proxy), "200");
}

#[test]
fn speaks_http2_to_upstreams_that_offer_it() {
    let pki = test_pki(&["allowed.test"]);
    let upstream = spawn_h2_upstream(&pki);
    let proxy = Proxy::start(POLICY, upstream, &pki.ca_pem, &["allowed.test"], "");
    // HTTP/1.1 from the sandbox to an upstream that speaks only HTTP/2: the HTTP/1.1-only
    // offer is refused, the request is retried offering h2, and the host is remembered, so
    // the second request offers h2 from the start.
    for attempt in ["first", "second"] {
        let out = proxy.curl(&[
            "--http1.1",
            &format!("https://allowed.test/via-h2/{attempt}"),
        ]);
        let body = text(&out);
        assert!(body.contains("HTTP/1.1 200"), "{body}");
        assert!(
            body.ends_with(&format!("h2 GET /via-h2/{attempt}")),
            "{body}"
        );
    }
    let log = std::fs::read_to_string(proxy.path("proxy.log")).unwrap();
    assert_eq!(
        log.matches("NoApplicationProtocol").count(),
        1,
        "one refused handshake, then h2 first: {log}"
    );
    // HTTP/2 on both legs.
    let out = proxy.curl(&["--http2", "https://allowed.test/h2-both"]);
    let body = text(&out);
    assert!(body.contains("HTTP/2 200"), "{body}");
    assert!(body.ends_with("h2 GET /h2-both"), "{body}");
}

const PASSTHROUGH_POLICY: &str = r#"package cordon.egress
import rego.v1

default decision := {"allowed": false, "reason": "default deny"}

decision := {"allowed": true, "mitm": false, "reason": "pinned client: pass through"} if {
	input.connection.stage == "connect"
	input.destination.host == "pinned.test"
}
"#;

#[test]
fn mitm_false_splices_tls_uninspected() {
    let pki = test_pki(&["pinned.test"]);
    let upstream = spawn_upstream(&pki);
    let proxy = Proxy::start(
        PASSTHROUGH_POLICY,
        upstream,
        &pki.ca_pem,
        &["pinned.test"],
        "",
    );
    let upstream_ca = proxy.path("upstream-ca.pem");
    // The client verifies the upstream's own certificate: nothing was intercepted.
    let out = Command::new("curl")
        .args(["-s", "-i", "--max-time", "10", "--proxy"])
        .arg(format!("http://127.0.0.1:{}", proxy.explicit))
        .arg("--cacert")
        .arg(&upstream_ca)
        .arg("https://pinned.test/spliced")
        .output()
        .unwrap();
    let body = text(&out);
    let audit = std::fs::read_to_string(proxy.path("state/audit.log")).unwrap_or_default();
    let log = std::fs::read_to_string(proxy.path("proxy.log")).unwrap_or_default();
    assert!(
        body.contains("GET /spliced"),
        "{body}\naudit: {audit}\nlog: {log}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let audit = std::fs::read_to_string(proxy.path("state/audit.log")).unwrap_or_default();
        if audit.contains("spliced to") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no splice audit record: {audit}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_busy_listen_address_fails_at_once_with_exit_69() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.rego"), POLICY).unwrap();
    let path = dir.path().join("cordon.toml");
    std::fs::write(
        &path,
        format!("[proxy]\nexplicit_listen = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:0\"\nstate_dir = \"state\"\n[policy]\nbundle = \"p.rego\"\n"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cordon-proxy"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("proxy.explicit_listen"), "{stderr}");
}

#[test]
fn a_plain_http_connection_denied_at_connect_is_told_why() {
    let pki = test_pki(&["allowed.test"]);
    let upstream = spawn_upstream(&pki);
    let proxy = Proxy::start(
        r#"package cordon.egress
import rego.v1

default decision := {"allowed": false, "reason": "nothing is allowed here"}
"#,
        upstream,
        &pki.ca_pem,
        &["allowed.test"],
        "",
    );
    let body = text(&proxy.curl(&["http://denied.test/page"]));
    assert!(body.starts_with("HTTP/1.1 403 Forbidden"), "{body}");
    assert!(body.contains("cordon-error: policy"), "{body}");
    assert!(body.contains("nothing is allowed here"), "{body}");
    let audit = std::fs::read_to_string(proxy.path("state/audit.log")).unwrap();
    let id = body
        .split("\"decision_id\":\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    assert!(
        audit.contains(&format!("\"decision_id\":\"{id}\"")),
        "{audit}"
    );
}

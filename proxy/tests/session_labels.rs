//! What a registration's identity and labels do at the proxy: report-only rollout
//! (`[policy] mode = "report"`, or a session's `policy_mode = "report"` label: what the policy
//! denies goes through, recorded as `would_deny` and counted; the SSRF guard still refuses;
//! sessions without the label stay enforced), and the context headers of a custom tool's
//! requests, which only the proxy sets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{Proxy, spawn_upstream, test_pki, text};

const POLICY: &str = r#"package cordon.egress
import rego.v1

default decision := {"allowed": false, "reason": "default deny"}

decision := {"allowed": true, "reason": "listed"} if input.destination.host == "allowed.test"
"#;

const HOSTS: [&str; 2] = ["allowed.test", "blocked.test"];

/// Whether the upstream answered (not only the CONNECT).
fn reached(out: &std::process::Output) -> bool {
    let t = text(out);
    t.contains("HTTP/2 200") || t.contains("HTTP/1.1 200 OK")
}

/// The audit records for `host` of `kind`, once there are any (a record is written as its
/// request ends, which can be a moment after the client has the whole answer).
fn records(proxy: &Proxy, host: &str, kind: &str) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let found: Vec<serde_json::Value> = proxy
            .audit_records()
            .into_iter()
            .filter(|r| r["host"] == host && r["kind"] == kind)
            .collect();
        if !found.is_empty() || std::time::Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn report_mode_lets_denials_through_and_records_them() {
    let pki = test_pki(&HOSTS);
    let upstream = spawn_upstream(&pki);
    let proxy = Proxy::start_with(
        POLICY,
        upstream,
        &pki.ca_pem,
        &HOSTS,
        "",
        "policy.mode = \"report\"",
    );
    let out = proxy.curl(&["https://blocked.test/reported"]);
    assert!(reached(&out), "{}", text(&out));
    let request = records(&proxy, "blocked.test", "request");
    assert_eq!(request.len(), 1, "{request:?}");
    assert_eq!(request[0]["decision"], "allow");
    assert_eq!(request[0]["would_deny"], true);
    assert_eq!(request[0]["reason"], "default deny");
    let connection = records(&proxy, "blocked.test", "connection");
    assert_eq!(connection.len(), 1, "{connection:?}");
    assert_eq!(connection[0]["would_deny"], true);
    assert_eq!(connection[0]["decision"], "allow");

    // What the policy allows is recorded as before, without the flag.
    let out = proxy.curl(&["https://allowed.test/fine"]);
    assert!(reached(&out), "{}", text(&out));
    let allowed = records(&proxy, "allowed.test", "request");
    assert!(allowed[0].get("would_deny").is_none(), "{allowed:?}");

    // The SSRF guard is not the policy: it still refuses (after the policy's denial was
    // reported), and the record is the refusal's.
    let out = proxy.curl(&["https://localhost:1/internal"]);
    assert!(text(&out).contains("cordon-error: ssrf"), "{}", text(&out));
    let ssrf = records(&proxy, "localhost", "request");
    assert_eq!(ssrf[0]["reason_class"], "ssrf", "{ssrf:?}");
    assert!(ssrf[0].get("would_deny").is_none(), "{ssrf:?}");

    let metrics = proxy.metrics_text();
    assert!(
        metrics.contains("cordon_proxy_would_deny_total{stage=\"request\"} 2")
            && metrics.contains("cordon_proxy_would_deny_total{stage=\"connect\"} 2"),
        "{metrics}"
    );
}

#[test]
fn a_session_label_opts_one_session_into_report_mode() {
    let pki = test_pki(&HOSTS);
    let upstream = spawn_upstream(&pki);
    let proxy = Proxy::start(POLICY, upstream, &pki.ca_pem, &HOSTS, "");
    // Enforced: curl's source (127.0.0.1) is no session's yet.
    let out = proxy.curl(&["https://blocked.test/enforced"]);
    assert!(!reached(&out), "{}", text(&out));
    assert_eq!(
        records(&proxy, "blocked.test", "connection")[0]["decision"],
        "deny"
    );

    proxy.admin(
        "PUT",
        "/sessions/sesn_trial",
        Some(r#"{"source": "127.0.0.1", "labels": {"policy_mode": "report"}}"#),
    );
    let out = proxy.curl(&["https://blocked.test/trial"]);
    assert!(reached(&out), "{}", text(&out));
    let trial: Vec<serde_json::Value> = records(&proxy, "blocked.test", "request")
        .into_iter()
        .filter(|r| r["path"] == "/trial")
        .collect();
    assert_eq!(trial[0]["session"], "sesn_trial");
    assert_eq!(trial[0]["would_deny"], true);
    assert_eq!(trial[0]["labels"]["policy_mode"], "report");

    // Another label value is no opt-in.
    proxy.admin(
        "PUT",
        "/sessions/sesn_trial",
        Some(r#"{"source": "127.0.0.1", "labels": {"policy_mode": "enforce"}}"#),
    );
    let out = proxy.curl(&["https://blocked.test/enforced-again"]);
    assert!(!reached(&out), "{}", text(&out));
}

#[test]
fn an_unknown_mode_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cordon.toml");
    std::fs::write(
        &config,
        "[proxy]\nexplicit_listen = \"127.0.0.1:0\"\n[policy]\nmode = \"audit\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cordon-proxy"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("policy.mode = \"audit\": expected \"enforce\" or \"report\""),
        "{out:?}"
    );
}

/// A custom tool's context headers (`x-cordon-*`) come from the proxy only: a session's own are
/// dropped, and a tool identity's are set from its registration, whatever the client sent.
#[test]
fn tool_context_headers_cannot_be_forged() {
    let pki = test_pki(&HOSTS);
    let upstream = spawn_upstream(&pki);
    let proxy = Proxy::start(POLICY, upstream, &pki.ca_pem, &HOSTS, "");
    proxy.admin(
        "PUT",
        "/sessions/sesn_plain",
        Some(r#"{"source": "127.0.0.1"}"#),
    );
    let forged = [
        "-H",
        "x-cordon-session: sesn_victim",
        "-H",
        "x-cordon-tool: lookup",
    ];
    let out = proxy.curl(&[&forged[..], &["https://allowed.test/echo"]].concat());
    assert!(reached(&out), "{}", text(&out));
    // The upstream echoes the head it received.
    assert!(!text(&out).contains("sesn_victim"), "{}", text(&out));
    assert!(!text(&out).contains("x-cordon-tool"), "{}", text(&out));

    proxy.admin("DELETE", "/sessions/sesn_plain", None);
    proxy.admin(
        "PUT",
        "/sessions/tool:lookup",
        Some(
            r#"{"source": "127.0.0.1", "agent_id": "agent_1", "labels": {"session": "sesn_real", "tool": "lookup", "tool_use_id": "tu_1"}}"#,
        ),
    );
    let out = proxy.curl(&[&forged[..], &["https://allowed.test/echo"]].concat());
    let echoed = text(&out);
    assert!(
        echoed.contains("x-cordon-session: sesn_real")
            && echoed.contains("x-cordon-tool-use-id: tu_1")
            && echoed.contains("x-cordon-agent-id: agent_1"),
        "{echoed}"
    );
    assert!(!echoed.contains("sesn_victim"), "{echoed}");
}

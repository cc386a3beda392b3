//! Upstreams that fail mid-answer: one that resets after half a body, one that ends a chunked
//! body early, one that never answers. The sandbox gets a clear status or a cut connection
//! (never a body passed off as whole), each request is audited, and the proxy's open
//! connections fall back to zero.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use support::{Proxy, TestPki, read_head, spawn_tls_server, test_pki, text};
use tokio::io::AsyncWriteExt;

const POLICY: &str = r#"package cordon.egress
import rego.v1

default decision := {"allowed": true, "reason": "all"}
"#;

/// Answers by path: `/reset` half a declared body then closes; `/truncated` one chunk of a
/// chunked body then closes; `/silent` nothing, ever; anything else `ok`.
fn spawn_faulty(pki: &TestPki) -> std::net::SocketAddr {
    spawn_tls_server(pki, b"http/1.1", |mut tls| async move {
        let Some(head) = read_head(&mut tls).await else {
            return;
        };
        let head = String::from_utf8_lossy(&head).into_owned();
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        match path.as_str() {
            "/reset" => {
                let _ = tls
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nonly half")
                    .await;
                let _ = tls.flush().await;
                // Dropped without close_notify: a reset as far as the proxy can tell.
            }
            "/truncated" => {
                let _ = tls
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n400\r\npart",
                    )
                    .await;
                let _ = tls.flush().await;
            }
            "/silent" => {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            _ => {
                let _ = tls
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            }
        }
    })
}

fn gauge(proxy: &Proxy, name: &str) -> Option<i64> {
    proxy
        .metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn failing_upstreams_get_a_clear_answer_and_leave_nothing_open() {
    let pki = test_pki(&["faulty.test"]);
    let upstream = spawn_faulty(&pki);
    let proxy = Proxy::start_with(
        POLICY,
        upstream,
        &pki.ca_pem,
        &["faulty.test"],
        "",
        "upstream.read_timeout_ms = 1500",
    );
    // curl's exit status says whether it saw the body end cleanly: 18 is a partial transfer,
    // 56 a failure receiving, 92 an HTTP/2 stream error; 0 would mean a cut body passed as
    // whole.
    for path in ["/reset", "/truncated"] {
        let out = proxy.curl(&["--http1.1", &format!("https://faulty.test{path}")]);
        assert_ne!(out.status.code(), Some(0), "{path}: {}", text(&out));
        let out = proxy.curl(&[&format!("https://faulty.test{path}")]);
        assert_ne!(out.status.code(), Some(0), "{path} over h2: {}", text(&out));
    }
    let started = Instant::now();
    let out = proxy.curl(&["https://faulty.test/silent"]);
    assert!(text(&out).contains(" 504"), "{}", text(&out));
    assert!(
        text(&out).contains("cordon-error: upstream_timeout"),
        "{}",
        text(&out)
    );
    assert!(started.elapsed() < Duration::from_secs(8));

    // The proxy still serves, and every one of those requests is in the audit log.
    let out = proxy.curl(&["https://faulty.test/fine"]);
    assert!(text(&out).contains("200"), "{}", text(&out));
    // Records are written as requests end, which can trail the answers a little.
    let paths = ["/reset", "/truncated", "/silent", "/fine"];
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut records = proxy.audit_records();
    while !paths
        .iter()
        .all(|p| records.iter().any(|r| r["path"] == *p))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
        records = proxy.audit_records();
    }
    for path in paths {
        assert!(
            records.iter().any(|r| r["path"] == path),
            "no record for {path}: {records:?}"
        );
    }
    let silent = records.iter().find(|r| r["path"] == "/silent").unwrap();
    assert_eq!(silent["reason_class"], "upstream_timeout", "{silent}");

    let deadline = Instant::now() + Duration::from_secs(10);
    while gauge(&proxy, "cordon_proxy_active_connections") != Some(0) {
        assert!(
            Instant::now() < deadline,
            "connections stay open: {:?}",
            gauge(&proxy, "cordon_proxy_active_connections")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

//! Bad input never takes the proxy down or leaks a connection: each gets a clear refusal or a
//! close, an audit record and a metric, and the proxy keeps serving.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{Proxy, spawn_upstream, test_pki, text};

const POLICY: &str = r#"package cordon.egress
import rego.v1

default decision := {"allowed": false, "reason": "default deny"}

decision := {"allowed": true, "reason": "inspectable"} if {
	input.connection.stage == "connect"
	input.connection.transport in {"tls", "http"}
}

decision := {"allowed": true, "reason": "listed"} if {
	input.connection.stage == "request"
	input.destination.host == "allowed.test"
}
"#;

fn connect(proxy: &Proxy) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", proxy.explicit)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Reads until the proxy closes (or the timeout); returns what it sent.
fn read_to_close(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn wait_for_audit(proxy: &Proxy, class: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(r) = proxy
            .audit_records()
            .into_iter()
            .find(|r| r["reason_class"] == class)
        {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no audit record of class {class}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bad_input_is_refused_audited_and_survived() {
    let pki = test_pki(&["allowed.test"]);
    let upstream = spawn_upstream(&pki);
    let proxy = Proxy::start_with(
        POLICY,
        upstream,
        &pki.ca_pem,
        &["allowed.test"],
        "",
        "handshake_timeout_ms = 700",
    );
    proxy.admin(
        "PUT",
        "/sessions/sesn_bad",
        Some(r#"{"source": "127.0.0.1"}"#),
    );

    // An invalid CONNECT target: 400 and a close.
    let mut s = connect(&proxy);
    s.write_all(b"CONNECT no-port-here HTTP/1.1\r\n\r\n")
        .unwrap();
    let answer = read_to_close(&mut s);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        wait_for_audit(&proxy, "bad_request")["reason"]
            .as_str()
            .unwrap()
            .contains("no-port-here")
    );

    // Not HTTP at all.
    let mut s = connect(&proxy);
    s.write_all(b"\x00\x01\x02garbage\r\n\r\n").unwrap();
    let _ = read_to_close(&mut s);

    // Garbage inside a tunnel: raw TCP, which this policy does not allow at connect stage.
    let mut s = connect(&proxy);
    s.write_all(b"CONNECT allowed.test:443 HTTP/1.1\r\n\r\nSSH-2.0-OpenSSH_9.2\r\n")
        .unwrap();
    let answer = read_to_close(&mut s);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let record = wait_for_audit(&proxy, "policy");
    assert_eq!(record["decision"], "deny");

    // A malformed ClientHello.
    let mut s = connect(&proxy);
    s.write_all(
        b"CONNECT allowed.test:443 HTTP/1.1\r\n\r\n\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00",
    )
    .unwrap();
    let _ = read_to_close(&mut s);
    wait_for_audit(&proxy, "bad_client_hello");

    // A slow client: nothing after CONNECT, cut off by the handshake timeout.
    let mut s = connect(&proxy);
    s.write_all(b"CONNECT allowed.test:443 HTTP/1.1\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    let _ = read_to_close(&mut s);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "slow client was not cut off"
    );
    wait_for_audit(&proxy, "timeout");

    // A TLS client without SNI (curl sends none for an IP address).
    let out = proxy.curl(&["https://127.0.0.2/"]);
    assert!(!out.status.success());
    wait_for_audit(&proxy, "no_sni");

    // Oversized request headers inside an intercepted connection: refused, not served.
    let header_file = proxy.path("big-header.txt");
    std::fs::write(&header_file, format!("X-Big: {}\n", "a".repeat(100 * 1024))).unwrap();
    let header_arg = format!("@{}", header_file.display());
    let out = proxy.curl(&["--http1.1", "-H", &header_arg, "https://allowed.test/big"]);
    let body = text(&out);
    let shown = &body[..body.len().min(300)];
    assert!(
        body.contains("HTTP/1.1 431"),
        "oversized headers were not refused: {shown}"
    );
    assert!(body.contains("cordon-error: bad_request"), "{shown}");

    // Still serving, and no connection leaked.
    let out = proxy.curl(&["https://allowed.test/after"]);
    assert!(text(&out).contains("HTTP/2 200"), "{}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = proxy.metrics_text();
        if metrics
            .lines()
            .any(|l| l == "cordon_proxy_active_connections 0")
        {
            assert!(metrics.contains("outcome=\"denied\""), "{metrics}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "connections still open:\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

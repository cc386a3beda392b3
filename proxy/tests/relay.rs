//! The HTTP/1.1 relay (`proxy/src/relay.rs`) as clients see it: one kept upstream connection
//! per client connection and pooled across them, a kept connection the upstream closed
//! replaced without the client noticing, the upstream's framing carried over faithfully, and requests the relay does not
//! take (other methods, `Expect`, upgrades) served on the same client connection by Pingora's proxy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use support::{Proxy, TestPki, read_head, spawn_tls_server, test_pki, text};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const POLICY: &str = r#"package cordon.egress
import rego.v1

default decision := {"allowed": false, "reason": "default deny"}

decision := {"allowed": true, "reason": "connect"} if input.connection.stage == "connect"

decision := {"allowed": true, "reason": "listed", "headers": {"x-cordon-test": "set-by-policy"}} if {
	input.connection.stage == "request"
	input.destination.host == "allowed.test"
	not startswith(input.attributes.request.http.path, "/forbidden")
}
"#;

/// What the fake upstream saw: connections accepted and request heads (with any body).
#[derive(Clone, Default)]
struct Seen {
    connections: Arc<AtomicUsize>,
    requests: Arc<std::sync::Mutex<Vec<String>>>,
}

/// An HTTPS upstream whose answer depends on the path:
/// - `/close-after`: answers, then closes the connection (as an idle timeout would);
/// - `/until-close`: a body framed only by closing the connection;
/// - `/empty`: 204 No Content;
/// - `/stray`: answers, then 50 ms later sends a second, unasked-for response;
/// - anything else: the request (head and body) echoed with a content-length.
fn spawn_upstream(pki: &TestPki) -> (SocketAddr, Seen) {
    let seen = Seen::default();
    let log = seen.clone();
    let address = spawn_tls_server(pki, b"http/1.1", move |mut tls| {
        let log = log.clone();
        log.connections.fetch_add(1, Ordering::SeqCst);
        async move {
            while let Some(mut request) = read_head(&mut tls).await {
                let text = String::from_utf8_lossy(&request).to_lowercase();
                let length: usize = text
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                let head_len = request.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                while request.len() < head_len + length {
                    let mut buf = [0u8; 4096];
                    let n = tls.read(&mut buf).await.unwrap();
                    request.extend_from_slice(&buf[..n]);
                }
                let request = String::from_utf8_lossy(&request).into_owned();
                log.requests.lock().unwrap().push(request.clone());
                let path = request.split(' ').nth(1).unwrap_or("/").to_string();
                if path == "/stray" {
                    if tls.write_all(ok(&request).as_bytes()).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    let stray = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstray";
                    let _ = tls.write_all(stray.as_bytes()).await;
                    continue;
                }
                let (response, close) = match path.as_str() {
                    "/close-after" => (ok(&request), true),
                    "/until-close" => (
                        "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nframed by the close"
                            .to_string(),
                        true,
                    ),
                    "/empty" => ("HTTP/1.1 204 No Content\r\n\r\n".to_string(), false),
                    _ => (ok(&request), false),
                };
                if tls.write_all(response.as_bytes()).await.is_err() {
                    return;
                }
                if close {
                    let _ = tls.shutdown().await;
                    return;
                }
            }
        }
    });
    (address, seen)
}

fn ok(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// The proxy on `POLICY` in front of a fresh [`spawn_upstream`] for `allowed.test`.
fn started() -> (Proxy, Seen) {
    let pki = test_pki(&["allowed.test"]);
    let (upstream, seen) = spawn_upstream(&pki);
    let proxy = Proxy::start(POLICY, upstream, &pki.ca_pem, &["allowed.test"], "");
    (proxy, seen)
}

/// The status of each response in `out` (a body without a trailing newline runs into the
/// next status line), not counting the CONNECT's.
fn statuses(out: &str) -> Vec<String> {
    out.split("HTTP/1.1 ")
        .skip(1)
        .filter(|rest| !rest.starts_with("200 Connection Established"))
        .filter_map(|rest| rest.get(..3))
        .filter(|code| code.bytes().all(|b| b.is_ascii_digit()))
        .map(str::to_string)
        .collect()
}

#[test]
fn keeps_one_upstream_connection_per_client_connection() {
    let (proxy, seen) = started();
    let urls: Vec<String> = (0..5)
        .map(|n| format!("https://allowed.test/r{n}"))
        .collect();
    let mut args = vec!["--http1.1", "-H", "Connection: keep-alive"];
    args.extend(urls.iter().map(String::as_str));
    let out = text(&proxy.curl(&args));
    assert_eq!(statuses(&out), vec!["200"; 5], "{out}");
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1, "{out}");
    let requests = seen.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 5);
    for (n, request) in requests.iter().enumerate() {
        let lower = request.to_lowercase();
        assert!(
            lower.starts_with(&format!("get /r{n} http/1.1\r\n")),
            "{request}"
        );
        // The decision's header is applied; the client's hop-by-hop header is not forwarded.
        assert!(lower.contains("x-cordon-test: set-by-policy"), "{request}");
        assert!(!lower.contains("connection:"), "{request}");
    }
    let requests = proxy.request_records(5);
    assert_eq!(requests.len(), 5);
    assert!(
        requests
            .iter()
            .all(|r| r["decision"] == "allow" && r["status"] == 200)
    );
}

#[test]
fn reuses_upstream_connections_across_client_connections() {
    let (proxy, seen) = started();
    // A client that opens a connection per request (curl run per command, as agents do): the
    // upstream connection outlives each client connection in the shared pool.
    for n in 0..3 {
        let out = text(&proxy.curl(&["--http1.1", &format!("https://allowed.test/c{n}")]));
        assert_eq!(statuses(&out), vec!["200"], "{out}");
    }
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
}

#[test]
fn an_idle_client_hands_its_upstream_connection_to_the_pool_and_gets_it_back() {
    let (proxy, seen) = started();
    // A second apart on one client connection: the kept upstream connection goes to the pool
    // after half a second idle, and the next request takes it from there.
    let out = text(&proxy.curl(&[
        "--http1.1",
        "--rate",
        "1/s",
        "https://allowed.test/first",
        "https://allowed.test/second",
    ]));
    assert_eq!(statuses(&out), vec!["200", "200"], "{out}");
    assert!(out.contains("GET /second HTTP/1.1"), "{out}");
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
}

#[test]
fn replaces_a_kept_connection_the_upstream_closed() {
    let (proxy, seen) = started();
    let out = text(&proxy.curl(&[
        "--http1.1",
        "https://allowed.test/close-after",
        "https://allowed.test/after",
    ]));
    assert_eq!(statuses(&out), vec!["200", "200"], "{out}");
    assert!(out.contains("GET /after HTTP/1.1"), "{out}");
    assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
}

#[test]
fn does_not_reuse_a_connection_the_upstream_sent_more_on() {
    let (proxy, seen) = started();
    // Bytes the upstream sends after a complete response must not become the next request's
    // response: the kept connection is checked before reuse and replaced. `--rate` spaces the
    // two requests (on one client connection) so the stray response arrives in between.
    let out = text(&proxy.curl(&[
        "--http1.1",
        "--rate",
        "4/s",
        "https://allowed.test/stray",
        "https://allowed.test/after",
    ]));
    assert_eq!(statuses(&out), vec!["200", "200"], "{out}");
    assert!(out.contains("GET /after HTTP/1.1"), "{out}");
    assert!(!out.contains("stray\n") && !out.ends_with("stray"), "{out}");
    assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
}

#[test]
fn carries_the_upstreams_framing_over() {
    let (proxy, _seen) = started();
    // A body framed by the upstream's close reaches the client whole, chunked, and the client
    // connection survives it; a 204 and a HEAD carry no body.
    let out = text(&proxy.curl(&[
        "--http1.1",
        "https://allowed.test/until-close",
        "https://allowed.test/empty",
        "https://allowed.test/next",
    ]));
    assert_eq!(statuses(&out), vec!["200", "204", "200"], "{out}");
    assert!(out.contains("framed by the close"), "{out}");
    assert!(
        out.to_lowercase().contains("transfer-encoding: chunked"),
        "{out}"
    );
    assert!(out.contains("GET /next HTTP/1.1"), "{out}");
    let out = text(&proxy.curl(&["--http1.1", "-I", "https://allowed.test/head"]));
    assert_eq!(statuses(&out), vec!["200"], "{out}");
    assert!(out.to_lowercase().contains("content-length: "), "{out}");
}

#[test]
fn serves_what_it_does_not_relay_on_the_same_connection() {
    let (proxy, seen) = started();
    // A refusal, a request with a method the relay leaves alone (Pingora's proxy), then a plain
    // GET again (the relay), all on one client connection. `--next` resets curl's options, so each transfer names the
    // proxy and CA again.
    let via = format!("http://127.0.0.1:{}", proxy.explicit);
    let ca = proxy.ca();
    let ca = ca.to_str().unwrap();
    let again = [
        "--next",
        "-s",
        "-i",
        "--http1.1",
        "--proxy",
        &via,
        "--cacert",
        ca,
    ];
    let mut args = vec!["--http1.1", "https://allowed.test/forbidden"];
    args.extend(again);
    args.extend([
        "-X",
        "PROPFIND",
        "-d",
        "a body",
        "https://allowed.test/post",
    ]);
    args.extend(again);
    args.push("https://allowed.test/get");
    let out = text(&proxy.curl(&args));
    assert_eq!(statuses(&out), vec!["403", "200", "200"], "{out}");
    assert!(out.contains("PROPFIND /post HTTP/1.1"), "{out}");
    assert!(
        out.ends_with("a body") || out.contains("a bodyHTTP/1.1"),
        "{out}"
    );
    assert!(out.contains("GET /get HTTP/1.1"), "{out}");
    let requests = seen.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 2, "the refused request never reached it");
    let connections = proxy
        .request_records(3)
        .iter()
        .map(|r| r["connection_id"].clone())
        .collect::<Vec<_>>();
    assert_eq!(connections.len(), 3);
    assert!(
        connections.iter().all(|c| *c == connections[0]),
        "{connections:?}"
    );
}

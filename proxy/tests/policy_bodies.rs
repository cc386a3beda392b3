//! Request bodies read for the policy (issue 20): a bundle whose `.manifest` asks for bodies
//! (`metadata.cordon.request_body`) on `allowed.test` is decided on the JSON-RPC calls in each
//! body, and what it allows reaches the upstream byte for byte, through the relay
//! (`Content-Length` bodies up to `max_bytes`) and through Pingora's proxy (chunked, HTTP/2). Bodies over
//! the limit are refused or decided on a prefix as the manifest says; a gzip bomb is a body
//! error, not a crash; requests to a host the manifest does not name are not read at all.
//!
//! The client speaks raw bytes through a CONNECT tunnel (as in `relay_bodies.rs`), so each test
//! controls the framing exactly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rustls::pki_types::pem::PemObject;
use support::http1::{take_body, take_head};
use support::{Proxy, TestPki, spawn_tls_server, test_pki};
use tokio::io::AsyncWriteExt;

/// MCP-style rules (as examples/policies/mcp-tools): `tools/list` and the `get_issue` tool
/// are allowed on `allowed.test`, any other tool is denied by name, a batch only when every
/// call in it is allowed; a body the policy saw only in part is allowed when it starts as
/// the test's large bodies do. `plain.test` is allowed when the policy saw no body.
const POLICY: &str = r#"package cordon.egress
import rego.v1

default decision := {"allowed": false, "reason": "default deny"}

decision := {"allowed": true, "reason": "connect"} if input.connection.stage == "connect"

decision := {"allowed": true, "reason": "no body seen"} if {
	input.connection.stage == "request"
	input.destination.host == "plain.test"
	not input.attributes.request.http.body
	not input.truncated_body
}

decision := body_decision if {
	input.connection.stage == "request"
	input.destination.host == "allowed.test"
}

body_decision := {"allowed": true, "reason": "prefix"} if {
	input.truncated_body
	startswith(input.attributes.request.http.body, "PREFIX")
} else := {"allowed": false, "reason": sprintf("body error %s", [input.cordon.body_error.kind])} if {
	input.cordon.body_error
} else := {"allowed": false, "reason": "not a JSON-RPC request"} if {
	not input.cordon.jsonrpc
} else := {"allowed": false, "reason": concat("; ", sort(denials))} if {
	count(denials) > 0
} else := {"allowed": true, "reason": "MCP calls allowed"}

messages := [input.cordon.jsonrpc] if {
	is_object(input.cordon.jsonrpc)
} else := input.cordon.jsonrpc

denials contains sprintf("MCP tool %q is not allowed", [m.params.name]) if {
	some m in messages
	m.method == "tools/call"
	not m.params.name in {"get_issue"}
}

denials contains sprintf("MCP method %q is not allowed", [m.method]) if {
	some m in messages
	not m.method in {"tools/list", "tools/call"}
}
"#;

const LIST: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
const CALL_ALLOWED: &str = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"get_issue","arguments":{"n":1}}}"#;
const CALL_DENIED: &str =
    r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"delete_repo"}}"#;

/// A bundle directory with [`POLICY`] and a manifest asking for bodies on `allowed.test`.
fn bundle(max_bytes: usize, over_limit: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy.rego"), POLICY).unwrap();
    std::fs::write(
        dir.path().join(".manifest"),
        format!(
            r#"{{"revision": "bodies", "metadata": {{"cordon": {{"request_body": {{
                "max_bytes": {max_bytes}, "over_limit": "{over_limit}", "hosts": ["allowed.test"]}}}}}}}}"#
        ),
    )
    .unwrap();
    dir
}

/// What the upstream got: each complete request's head (lower-cased) and decoded body.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Requests>>);

/// Each request's head and body.
type Requests = Vec<(String, Vec<u8>)>;

impl Seen {
    fn all(&self) -> Requests {
        self.0.lock().unwrap().clone()
    }
}

/// An upstream that reads each request whole and answers `<n> bytes`.
fn spawn_upstream(pki: &TestPki) -> (SocketAddr, Seen) {
    let seen = Seen::default();
    let log = seen.clone();
    let address = spawn_tls_server(pki, b"http/1.1", move |mut tls| {
        let log = log.clone();
        async move {
            let mut buf = Vec::new();
            while let Some(head) = take_head(&mut tls, &mut buf).await {
                let Some(body) = take_body(&mut tls, &mut buf, &head).await else {
                    return;
                };
                let answer = format!("{} bytes", body.len());
                log.0.lock().unwrap().push((head, body));
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{answer}",
                    answer.len()
                );
                if tls.write_all(response.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    });
    (address, seen)
}

fn client_config(proxy: &Proxy, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let ca = std::fs::read(proxy.ca()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

/// A TLS connection to `host` through the proxy's CONNECT listener.
async fn tunnel(
    proxy: &Proxy,
    host: &str,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", proxy.explicit))
        .await
        .unwrap();
    tcp.write_all(format!("CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let head = take_head(&mut tcp, &mut buf).await.unwrap();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    tokio_rustls::TlsConnector::from(client_config(proxy, alpn))
        .connect(host.to_string().try_into().unwrap(), tcp)
        .await
        .unwrap()
}

/// Sends `request` on a fresh tunnel to `host` and reads the status and body of the answer.
async fn exchange(proxy: &Proxy, host: &str, request: &[u8]) -> (u16, String) {
    let mut tls = tunnel(proxy, host, b"http/1.1").await;
    tls.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let mut head = take_head(&mut tls, &mut buf).await.unwrap();
    // Interim answers (`100 Continue` to an `Expect`) come before the final one.
    while head.as_bytes()[9] == b'1' {
        head = take_head(&mut tls, &mut buf).await.unwrap();
    }
    let status = head[9..12].parse().unwrap();
    let body = take_body(&mut tls, &mut buf, &head)
        .await
        .unwrap_or_default();
    let body = String::from_utf8_lossy(&body).into_owned();
    proxy.record(body.as_bytes());
    (status, body)
}

fn post(host: &str, extra: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST /mcp HTTP/1.1\r\nHost: {host}\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

fn post_chunked(host: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut request = format!(
        "POST /mcp HTTP/1.1\r\nHost: {host}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for part in parts {
        request.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        request.extend_from_slice(part);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    request
}

/// A body that starts `PREFIX` and goes on with every byte value, to `len` bytes.
fn prefixed_body(len: usize) -> Vec<u8> {
    b"PREFIX"
        .iter()
        .copied()
        .chain((0..=255u8).cycle())
        .take(len)
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn started(max_bytes: usize, over_limit: &str) -> (Proxy, Seen, tempfile::TempDir) {
    started_with(max_bytes, over_limit, "")
}

/// [`started`] with `proxy_extra` (`policy.mode = ...`, `upstream.read_timeout_ms = ...`).
fn started_with(
    max_bytes: usize,
    over_limit: &str,
    proxy_extra: &str,
) -> (Proxy, Seen, tempfile::TempDir) {
    let pki = test_pki(&["allowed.test", "plain.test"]);
    let (upstream, seen) = spawn_upstream(&pki);
    let bundle = bundle(max_bytes, over_limit);
    let proxy = Proxy::start_bundle_with(
        bundle.path(),
        upstream,
        &pki.ca_pem,
        &["allowed.test", "plain.test"],
        proxy_extra,
    );
    (proxy, seen, bundle)
}

fn record_for<'a>(records: &'a [serde_json::Value], host: &str, n: usize) -> &'a serde_json::Value {
    records
        .iter()
        .filter(|r| r["host"] == host)
        .nth(n)
        .unwrap_or_else(|| panic!("no record {n} for {host}: {records:#?}"))
}

#[test]
fn decides_json_rpc_calls_from_the_body_and_forwards_it_unchanged() {
    let (proxy, seen, _bundle) = started(64 * 1024, "deny");
    runtime().block_on(async {
        // The relay's path: one small Content-Length body each.
        let (status, _) = exchange(
            &proxy,
            "allowed.test",
            &post("allowed.test", "", LIST.as_bytes()),
        )
        .await;
        assert_eq!(status, 200);
        let (status, _) = exchange(
            &proxy,
            "allowed.test",
            &post("allowed.test", "", CALL_ALLOWED.as_bytes()),
        )
        .await;
        assert_eq!(status, 200);
        let (status, body) = exchange(
            &proxy,
            "allowed.test",
            &post("allowed.test", "", CALL_DENIED.as_bytes()),
        )
        .await;
        assert_eq!(status, 403);
        assert!(body.contains("delete_repo"), "{body}");
        let batch = format!("[{LIST},{CALL_ALLOWED},{CALL_DENIED}]");
        let (status, body) = exchange(
            &proxy,
            "allowed.test",
            &post("allowed.test", "", batch.as_bytes()),
        )
        .await;
        assert_eq!(status, 403, "a batch with one denied call is denied whole");
        assert!(body.contains("delete_repo"), "{body}");
        let (status, body) = exchange(
            &proxy,
            "allowed.test",
            &post("allowed.test", "", b"{\"jsonrpc\": oops"),
        )
        .await;
        assert_eq!(status, 403);
        assert!(body.contains("invalid_json"), "{body}");
        // Pingora's path: chunked, the call split across chunks.
        let (head, tail) = CALL_ALLOWED.as_bytes().split_at(20);
        let (status, _) = exchange(
            &proxy,
            "allowed.test",
            &post_chunked("allowed.test", &[head, tail]),
        )
        .await;
        assert_eq!(status, 200);
        // A host the manifest does not name: the body is not read for the policy.
        let (status, _) = exchange(
            &proxy,
            "plain.test",
            &post("plain.test", "", CALL_DENIED.as_bytes()),
        )
        .await;
        assert_eq!(status, 200);
    });
    let bodies: Vec<Vec<u8>> = seen.all().into_iter().map(|(_, body)| body).collect();
    assert_eq!(
        bodies,
        vec![
            LIST.as_bytes().to_vec(),
            CALL_ALLOWED.as_bytes().to_vec(),
            CALL_ALLOWED.as_bytes().to_vec(),
            CALL_DENIED.as_bytes().to_vec(),
        ],
        "exactly the allowed bodies reach the upstream, byte for byte"
    );
    let records = proxy.request_records(7);
    let list = record_for(&records, "allowed.test", 0);
    assert_eq!(list["body_read"], LIST.len(), "{list}");
    assert_eq!(list["bytes_up"], LIST.len(), "{list}");
    assert!(list.get("body_truncated").is_none(), "{list}");
    let denied = record_for(&records, "allowed.test", 2);
    assert_eq!(denied["decision"], "deny");
    assert!(
        denied["reason"].as_str().unwrap().contains("delete_repo"),
        "{denied}"
    );
    let chunked = record_for(&records, "allowed.test", 5);
    assert_eq!(chunked["decision"], "allow", "{chunked}");
    assert_eq!(chunked["body_read"], CALL_ALLOWED.len(), "{chunked}");
    assert_eq!(chunked["bytes_up"], CALL_ALLOWED.len(), "{chunked}");
    let plain = record_for(&records, "plain.test", 0);
    assert!(plain.get("body_read").is_none(), "{plain}");
    assert_eq!(plain["bytes_up"], CALL_DENIED.len(), "{plain}");
}

#[test]
fn refuses_bodies_over_the_limit_and_gzip_bombs_and_keeps_serving() {
    let (proxy, seen, _bundle) = started(16 * 1024, "deny");
    let big = prefixed_body(32 * 1024);
    // Ten MiB of zeros in a few KiB of gzip: decodes past the default 1 MiB decoded limit.
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gzip.write_all(&vec![0u8; 10 * 1024 * 1024]).unwrap();
    let bomb = gzip.finish().unwrap();
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(LIST.as_bytes()).unwrap();
    let list_gzip = gzip.finish().unwrap();
    assert!(bomb.len() < 16 * 1024, "{}", bomb.len());
    runtime().block_on(async {
        let (status, body) =
            exchange(&proxy, "allowed.test", &post("allowed.test", "", &big)).await;
        assert_eq!(status, 413);
        assert!(body.contains("16384"), "{body}");
        // Chunked: no length up front, refused once the limit is passed.
        let (status, _) = exchange(
            &proxy,
            "allowed.test",
            &post_chunked("allowed.test", &[&big[..600], &big[600..]]),
        )
        .await;
        assert_eq!(status, 413);
        let (status, body) = exchange(
            &proxy,
            "allowed.test",
            &post("allowed.test", "content-encoding: gzip\r\n", &bomb),
        )
        .await;
        assert_eq!(status, 403);
        assert!(body.contains("decoded_too_large"), "{body}");
        // The proxy keeps serving, and a compressed call the policy reads decoded is forwarded
        // compressed, as sent.
        let (status, _) = exchange(
            &proxy,
            "allowed.test",
            &post("allowed.test", "content-encoding: gzip\r\n", &list_gzip),
        )
        .await;
        assert_eq!(status, 200, "the proxy keeps serving");
    });
    let bodies: Vec<Vec<u8>> = seen.all().into_iter().map(|(_, body)| body).collect();
    assert!(
        bodies == vec![list_gzip],
        "the body arrives as the client sent it"
    );
    let records = proxy.request_records(4);
    // The relay's refusal is the first record; Pingora's (chunked) may come after later ones.
    let refused = record_for(&records, "allowed.test", 0);
    assert_eq!(refused["reason_class"], "body_too_large", "{refused}");
    assert_eq!(refused["status"], 413, "{refused}");
    let reason = refused["reason"].as_str().unwrap();
    assert!(
        reason.contains("metadata.cordon.request_body.max_bytes"),
        "{reason}"
    );
    let bomb = records
        .iter()
        .find(|r| r["reason"].as_str().unwrap().contains("decoded_too_large"))
        .unwrap_or_else(|| panic!("{records:#?}"));
    assert_eq!(bomb["decision"], "deny", "{bomb}");
    assert_eq!(
        records.iter().filter(|r| r["status"] == 413).count(),
        2,
        "{records:#?}"
    );
}

#[test]
fn truncate_decides_on_a_prefix_and_forwards_the_whole_body() {
    let (proxy, seen, _bundle) = started(1024, "truncate");
    // Through the relay (64 KiB at most), Pingora with a length over 64 KiB, and chunked.
    let relayed = prefixed_body(4096);
    let large = prefixed_body(200 * 1024 + 7);
    let chunked = prefixed_body(150 * 1024);
    runtime().block_on(async {
        let (status, body) =
            exchange(&proxy, "allowed.test", &post("allowed.test", "", &relayed)).await;
        assert_eq!((status, body.as_str()), (200, "4096 bytes"));
        let (status, body) =
            exchange(&proxy, "allowed.test", &post("allowed.test", "", &large)).await;
        assert_eq!(status, 200, "{body}");
        let parts: Vec<&[u8]> = chunked.chunks(10_000).collect();
        let (status, body) = exchange(
            &proxy,
            "allowed.test",
            &post_chunked("allowed.test", &parts),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        // A prefix that is not one the policy allows is denied as truncated JSON would be.
        let (status, _) = exchange(
            &proxy,
            "allowed.test",
            &post("allowed.test", "", &vec![b'x'; 2048]),
        )
        .await;
        assert_eq!(status, 403);
    });
    let bodies: Vec<Vec<u8>> = seen.all().into_iter().map(|(_, body)| body).collect();
    assert_eq!(bodies.len(), 3);
    assert!(
        bodies[0] == relayed,
        "the relayed body arrives byte for byte"
    );
    assert!(bodies[1] == large, "the large body arrives byte for byte");
    assert!(
        bodies[2] == chunked,
        "the chunked body arrives byte for byte"
    );
    // Pingora's path writes its record after the response: the order may vary.
    let records = proxy.request_records(4);
    let allowed: Vec<_> = records.iter().filter(|r| r["reason"] == "prefix").collect();
    assert_eq!(allowed.len(), 3, "{records:#?}");
    for record in &allowed {
        assert_eq!(record["body_truncated"], true, "{record}");
    }
    let mut sent: Vec<_> = allowed
        .iter()
        .map(|r| r["bytes_up"].as_u64().unwrap())
        .collect();
    sent.sort_unstable();
    let mut expected = [relayed.len(), large.len(), chunked.len()].map(|n| n as u64);
    expected.sort_unstable();
    assert_eq!(sent, expected);
}

#[test]
fn decides_http2_request_bodies() {
    let (proxy, seen, _bundle) = started(64 * 1024, "deny");
    runtime().block_on(async {
        let tls = tunnel(&proxy, "allowed.test", b"h2").await;
        let (mut client, connection) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(connection);
        for (call, expected) in [(CALL_ALLOWED, 200), (CALL_DENIED, 403)] {
            let request = http::Request::builder()
                .method("POST")
                .uri("https://allowed.test/mcp")
                .header("content-type", "application/json")
                .body(())
                .unwrap();
            let (response, mut stream) = client.send_request(request, false).unwrap();
            // In two DATA frames.
            let (head, tail) = call.as_bytes().split_at(10);
            stream
                .send_data(bytes::Bytes::copy_from_slice(head), false)
                .unwrap();
            stream
                .send_data(bytes::Bytes::copy_from_slice(tail), true)
                .unwrap();
            let response = response.await.unwrap();
            assert_eq!(response.status(), expected, "{call}");
            let mut body = response.into_body();
            while let Some(chunk) = body.data().await {
                proxy.record(&chunk.unwrap());
            }
        }
    });
    let bodies: Vec<Vec<u8>> = seen.all().into_iter().map(|(_, body)| body).collect();
    assert_eq!(bodies, vec![CALL_ALLOWED.as_bytes().to_vec()]);
    let records = proxy.request_records(2);
    // Records of one HTTP/2 connection's streams may be written in either order.
    let allowed = records
        .iter()
        .find(|r| r["decision"] == "allow")
        .unwrap_or_else(|| panic!("{records:#?}"));
    assert_eq!(allowed["protocol"], "http2", "{allowed}");
    assert_eq!(allowed["body_read"], CALL_ALLOWED.len(), "{allowed}");
}

/// A client that offers both HTTP/2 and HTTP/1.1 to a host whose bodies the policy reads is
/// given HTTP/1.1, where the relay reads a body whole up to `max_bytes` however it is framed
/// (HTTP/2 bodies go through Pingora's path, which holds 64 KiB); to a host whose bodies are
/// not read it keeps HTTP/2. A client that offers only HTTP/2 keeps it.
#[test]
fn clients_that_offer_http1_get_it_where_bodies_are_read() {
    async fn negotiated(proxy: &Proxy, host: &str, offered: &[&[u8]]) -> Vec<u8> {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", proxy.explicit))
            .await
            .unwrap();
        tcp.write_all(
            format!("CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        take_head(&mut tcp, &mut buf).await.unwrap();
        let mut config = (*client_config(proxy, b"h2")).clone();
        config.alpn_protocols = offered.iter().map(|p| p.to_vec()).collect();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(host.to_string().try_into().unwrap(), tcp)
            .await
            .unwrap();
        tls.get_ref().1.alpn_protocol().unwrap_or_default().to_vec()
    }
    let both: &[&[u8]] = &[b"h2", b"http/1.1"];
    let (long, _seen, _bundle) = started(1024 * 1024, "deny");
    let (short, _seen_short, _bundle_short) = started(64 * 1024, "deny");
    runtime().block_on(async {
        assert_eq!(negotiated(&long, "allowed.test", both).await, b"http/1.1");
        assert_eq!(negotiated(&long, "allowed.test", &[b"h2"]).await, b"h2");
        assert_eq!(negotiated(&long, "plain.test", both).await, b"h2");
        assert_eq!(negotiated(&short, "allowed.test", both).await, b"http/1.1");
        assert_eq!(negotiated(&short, "plain.test", both).await, b"h2");
    });
}

#[test]
fn report_mode_forwards_denied_bodies_and_expect_continue_is_answered() {
    let (proxy, seen, _bundle) = started_with(64 * 1024, "deny", "policy.mode = \"report\"");
    runtime().block_on(async {
        let (status, _) = exchange(
            &proxy,
            "allowed.test",
            &post("allowed.test", "", CALL_DENIED.as_bytes()),
        )
        .await;
        assert_eq!(status, 200, "report mode lets the denied call through");
        // A client that waits for `100 Continue` before it sends the body gets it from the
        // proxy, which must read the body before the decision.
        let mut tls = tunnel(&proxy, "allowed.test", b"http/1.1").await;
        let request = post("allowed.test", "expect: 100-continue\r\n", LIST.as_bytes());
        let head_len = request.len() - LIST.len();
        tls.write_all(&request[..head_len]).await.unwrap();
        let mut buf = Vec::new();
        let interim = take_head(&mut tls, &mut buf).await.unwrap();
        assert!(interim.starts_with("http/1.1 100"), "{interim}");
        tls.write_all(LIST.as_bytes()).await.unwrap();
        let head = take_head(&mut tls, &mut buf).await.unwrap();
        assert!(head.starts_with("http/1.1 200"), "{head}");
    });
    let seen = seen.all();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].1, CALL_DENIED.as_bytes());
    assert_eq!(seen[1].1, LIST.as_bytes());
    assert!(!seen[1].0.contains("expect:"), "{}", seen[1].0);
    let records = proxy.request_records(2);
    let reported = record_for(&records, "allowed.test", 0);
    assert_eq!(reported["would_deny"], true, "{reported}");
    assert_eq!(reported["body_read"], CALL_DENIED.len(), "{reported}");
}

/// An upstream that cannot be reached after the proxy gave the go-ahead (`100 Continue`, the
/// body read for the policy): the client still gets a final answer, a 502, not a closed
/// connection.
#[test]
fn a_failure_after_the_go_ahead_still_gets_a_final_answer() {
    let pki = test_pki(&["allowed.test", "plain.test"]);
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let bundle = bundle(64 * 1024, "deny");
    let proxy = Proxy::start_bundle_with(
        bundle.path(),
        dead,
        &pki.ca_pem,
        &["allowed.test", "plain.test"],
        "",
    );
    runtime().block_on(async {
        let mut tls = tunnel(&proxy, "allowed.test", b"http/1.1").await;
        let request = post("allowed.test", "expect: 100-continue\r\n", LIST.as_bytes());
        tls.write_all(&request[..request.len() - LIST.len()])
            .await
            .unwrap();
        let mut buf = Vec::new();
        let interim = take_head(&mut tls, &mut buf).await.unwrap();
        assert!(interim.starts_with("http/1.1 100"), "{interim}");
        tls.write_all(LIST.as_bytes()).await.unwrap();
        let head = take_head(&mut tls, &mut buf).await.unwrap();
        assert!(head.starts_with("http/1.1 502"), "{head}");
    });
    let records = proxy.request_records(1);
    assert_eq!(record_for(&records, "allowed.test", 0)["status"], 502);
}

#[test]
fn a_client_that_stalls_mid_body_is_refused_and_the_proxy_keeps_serving() {
    let (proxy, seen, _bundle) = started_with(64 * 1024, "deny", "upstream.read_timeout_ms = 300");
    runtime().block_on(async {
        let mut tls = tunnel(&proxy, "allowed.test", b"http/1.1").await;
        let request = post("allowed.test", "", LIST.as_bytes());
        // All but the last ten bytes of the body, then nothing.
        tls.write_all(&request[..request.len() - 10]).await.unwrap();
        let mut buf = Vec::new();
        let head = take_head(&mut tls, &mut buf).await.unwrap();
        assert!(head.starts_with("http/1.1 408"), "{head}");
        let (status, _) = exchange(
            &proxy,
            "allowed.test",
            &post("allowed.test", "", LIST.as_bytes()),
        )
        .await;
        assert_eq!(status, 200);
    });
    assert_eq!(
        seen.all().len(),
        1,
        "the stalled body never reached the upstream"
    );
    let records = proxy.request_records(2);
    let stalled = record_for(&records, "allowed.test", 0);
    assert_eq!(stalled["status"], 408, "{stalled}");
    assert_eq!(stalled["reason_class"], "bad_request", "{stalled}");
    assert_eq!(stalled["body_read"], LIST.len() - 10, "{stalled}");
}

/// examples/policies/mcp-tools as shipped: its manifest asks for bodies on `mcp.example.com`.
#[test]
fn the_mcp_tools_example_decides_each_call() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let pki = test_pki(&["mcp.example.com"]);
    let (upstream, seen) = spawn_upstream(&pki);
    let proxy = Proxy::start_bundle(
        &examples.join("policies/mcp-tools"),
        upstream,
        &pki.ca_pem,
        &["mcp.example.com"],
        "",
        &[],
    );
    proxy.admin(
        "PUT",
        "/sessions/sesn_mcp",
        Some("{\"source\": \"127.0.0.1\"}"),
    );
    let host = "mcp.example.com";
    let search =
        r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"search_issues"}}"#;
    runtime().block_on(async {
        for (body, status, reason) in [
            (LIST.to_string(), 200, ""),
            (search.to_string(), 200, ""),
            (CALL_DENIED.to_string(), 403, "delete_repo"),
            (
                format!("[{LIST},{search},{CALL_DENIED}]"),
                403,
                "delete_repo",
            ),
            (
                "not json".to_string(),
                403,
                "the MCP request body could not be read",
            ),
        ] {
            let (got, answer) = exchange(&proxy, host, &post(host, "", body.as_bytes())).await;
            assert_eq!(got, status, "{body}: {answer}");
            assert!(answer.contains(reason), "{body}: {answer}");
        }
    });
    let bodies: Vec<Vec<u8>> = seen.all().into_iter().map(|(_, body)| body).collect();
    assert_eq!(
        bodies,
        vec![LIST.as_bytes().to_vec(), search.as_bytes().to_vec()]
    );
}

/// A `max_bytes` above 64 KiB: an HTTP/1.1 body within it, with a `Content-Length` or
/// chunked, sent at once or after the proxy's `100 Continue`, is read whole (the relay carries
/// it from memory), so a tool name after 300 KiB of arguments decides; a longer one is refused
/// under `over_limit = "deny"`, a declared length before a byte is read (and before the
/// go-ahead the client waits for).
#[test]
fn http1_bodies_are_decided_whole_up_to_max_bytes() {
    let (proxy, seen, _bundle) = started(1024 * 1024, "deny");
    let call = |name: &str| {
        format!(
            r#"{{"jsonrpc":"2.0","id":1,"params":{{"arguments":{{"pad":"{}"}},"name":"{name}"}},"method":"tools/call"}}"#,
            "x".repeat(300 * 1024)
        )
    };
    let (allowed, denied) = (call("get_issue"), call("delete_repo"));
    let allowed_len = allowed.len();
    let chunked = |body: &[u8]| {
        let parts: Vec<&[u8]> = body.chunks(7000).collect();
        post_chunked("allowed.test", &parts)
    };
    let expecting = |body: &[u8]| post("allowed.test", "expect: 100-continue\r\n", body);
    let declared_only = |length: usize, extra: &str| {
        format!(
            "POST /mcp HTTP/1.1\r\nHost: allowed.test\r\ncontent-type: application/json\r\n{extra}content-length: {length}\r\n\r\n"
        )
        .into_bytes()
    };
    runtime().block_on(async {
        for (request, status, says) in [
            (post("allowed.test", "", allowed.as_bytes()), 200, "bytes"),
            (
                post("allowed.test", "", denied.as_bytes()),
                403,
                "delete_repo",
            ),
            (chunked(allowed.as_bytes()), 200, "bytes"),
            (chunked(denied.as_bytes()), 403, "delete_repo"),
            (expecting(allowed.as_bytes()), 200, "bytes"),
            // Refused from its head: the body is never sent (a client writing it meanwhile
            // would race the connection's close).
            (declared_only(1024 * 1024 + 1, ""), 413, "1048576"),
            (
                declared_only(1024 * 1024 + 1, "expect: 100-continue\r\n"),
                413,
                "1048576",
            ),
            // Chunks past max_bytes under `deny`.
            (chunked(&prefixed_body(1024 * 1024 + 1)), 413, "1048576"),
        ] {
            let (got, body) = exchange(&proxy, "allowed.test", &request).await;
            assert_eq!(got, status, "{body}");
            assert!(body.contains(says), "{says:?} in {body}");
        }
    });
    let bodies: Vec<Vec<u8>> = seen.all().into_iter().map(|(_, body)| body).collect();
    assert!(
        bodies == vec![allowed.clone().into_bytes(); 3],
        "the allowed body arrives byte for byte, each time, and nothing else"
    );
    let records = proxy.audit_records();
    for n in [0, 2, 4] {
        let record = record_for(&records, "allowed.test", n);
        assert_eq!(record["decision"], "allow", "{record}");
        assert_eq!(record["protocol"], "http1", "{record}");
        assert_eq!(record["body_read"], allowed_len, "read whole: {record}");
        assert!(record.get("body_truncated").is_none(), "{record}");
    }
}

/// A chunked body whose chunks arrive apart from their CRLFs (the proxy's reads end between
/// a chunk's data and its CRLF): the upstream gets the whole body once, as one request, both
/// when the policy read all of it and when it read a prefix and the rest streamed after.
#[test]
fn chunked_bodies_that_arrive_in_pieces_reach_the_upstream_whole() {
    for (max_bytes, over_limit) in [(64 * 1024, "deny"), (1024, "truncate")] {
        let (proxy, seen, _bundle) = started(max_bytes, over_limit);
        let body = if over_limit == "deny" {
            CALL_ALLOWED.as_bytes().to_vec()
        } else {
            prefixed_body(5000)
        };
        runtime().block_on(async {
            let mut tls = tunnel(&proxy, "allowed.test", b"http/1.1").await;
            tls.write_all(
                b"POST /mcp HTTP/1.1\r\nHost: allowed.test\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
            )
            .await
            .unwrap();
            for part in body.chunks(700) {
                tls.write_all(format!("{:x}\r\n", part.len()).as_bytes())
                    .await
                    .unwrap();
                tls.write_all(part).await.unwrap();
                tls.flush().await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(30)).await;
                tls.write_all(b"\r\n").await.unwrap();
                tls.flush().await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(30)).await;
            }
            tls.write_all(b"0\r\n").await.unwrap();
            tls.flush().await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
            tls.write_all(b"\r\n").await.unwrap();
            let mut buf = Vec::new();
            let head = take_head(&mut tls, &mut buf).await.unwrap();
            assert!(head.starts_with("http/1.1 200"), "{over_limit}: {head}");
        });
        let received = seen.all();
        assert_eq!(received.len(), 1, "{over_limit}: one request upstream");
        assert!(
            received[0].1 == body,
            "{over_limit}: the body arrives whole ({} of {} bytes)",
            received[0].1.len(),
            body.len()
        );
    }
}

/// Bodies with a length just over Pingora's 64 KiB buffer: the proxy stops reading before a
/// read that could both end the body and overflow the buffer, so each is decided on a prefix
/// and forwarded whole, never refused for want of a copy.
#[test]
fn truncate_forwards_lengths_just_over_the_buffer_whole() {
    let (proxy, seen, _bundle) = started(64 * 1024, "truncate");
    let bodies: Vec<Vec<u8>> = [65 * 1024, 66 * 1024, 70 * 1024, 100 * 1024, 129 * 1024]
        .into_iter()
        .map(prefixed_body)
        .collect();
    runtime().block_on(async {
        for body in &bodies {
            let (status, answer) =
                exchange(&proxy, "allowed.test", &post("allowed.test", "", body)).await;
            assert_eq!(status, 200, "{} bytes: {answer}", body.len());
        }
    });
    let received: Vec<Vec<u8>> = seen.all().into_iter().map(|(_, body)| body).collect();
    assert_eq!(received.len(), bodies.len());
    for (got, sent) in received.iter().zip(&bodies) {
        assert!(
            got == sent,
            "a {}-byte body arrives byte for byte",
            sent.len()
        );
    }
}

/// Reading the body changes nothing about credentials: a placeholder in the header of a call
/// the policy allows on its body is swapped for the real value upstream.
#[test]
fn placeholders_are_still_swapped_on_requests_decided_on_their_body() {
    use std::os::unix::fs::PermissionsExt;
    let pki = test_pki(&["allowed.test"]);
    let (upstream, seen) = spawn_upstream(&pki);
    let bundle = bundle(64 * 1024, "deny");
    let secrets = tempfile::tempdir().unwrap();
    let private = |name: &str, text: &str| {
        let path = secrets.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    };
    private("github-token", support::GITHUB_TOKEN);
    let store = private(
        "secrets.toml",
        "[secrets.github]\nvalue_file = \"github-token\"\nhosts = [\"allowed.test\"]\n\
         format = \"bearer\"\nplaceholder_prefix = \"ghp_\"\n",
    );
    let proxy = Proxy::start_bundle(
        bundle.path(),
        upstream,
        &pki.ca_pem,
        &["allowed.test"],
        &format!("[credentials]\nstore = \"{}\"\n", store.display()),
        &[],
    );
    proxy.admin(
        "PUT",
        "/sessions/sesn_body",
        Some("{\"source\": \"127.0.0.1\"}"),
    );
    let answer = proxy.admin(
        "POST",
        "/sessions/sesn_body/placeholders",
        Some("{\"secrets\": [\"github\"]}"),
    );
    let value: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let placeholder = value["placeholders"]["github"]
        .as_str()
        .unwrap()
        .to_string();
    let header = format!("authorization: Bearer {placeholder}\r\n");
    runtime().block_on(async {
        let (status, _) = exchange(
            &proxy,
            "allowed.test",
            &post("allowed.test", &header, LIST.as_bytes()),
        )
        .await;
        assert_eq!(status, 200);
        let (status, _) = exchange(
            &proxy,
            "allowed.test",
            &post("allowed.test", &header, CALL_DENIED.as_bytes()),
        )
        .await;
        assert_eq!(status, 403);
    });
    let seen = seen.all();
    assert_eq!(seen.len(), 1, "the denied call never reaches the upstream");
    let (head, body) = &seen[0];
    let token = support::GITHUB_TOKEN.to_lowercase();
    assert!(
        head.contains(&format!("authorization: bearer {token}")),
        "{head}"
    );
    assert_eq!(body, LIST.as_bytes());
}

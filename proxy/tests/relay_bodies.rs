//! Request bodies through the HTTP/1.1 relay (`proxy/src/relay.rs`): what the client sends
//! reaches the upstream byte for byte (with a `Content-Length`, empty, chunked, large enough to
//! take many reads), a request pipelined after a body stays a request of its own, a placeholder
//! in the header is still swapped, a client that stops mid-body gets the upstream connection
//! dropped rather than reused, and a POST that may have reached the upstream is never sent
//! twice.
//!
//! The client here speaks raw bytes through a CONNECT tunnel, so the tests control exactly what
//! is written and when (curl would frame and retry on its own).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use support::http1::{take_body, take_head};
use support::{GITHUB_TOKEN, Proxy, TestPki, spawn_tls_server, test_pki};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

const POLICY: &str = r#"package cordon.egress
import rego.v1

default decision := {"allowed": false, "reason": "default deny"}

decision := {"allowed": true, "reason": "connect"} if input.connection.stage == "connect"

decision := {"allowed": true, "reason": "listed"} if {
	input.connection.stage == "request"
	input.destination.host == "allowed.test"
}
"#;

/// What the upstream got: each complete request (its connection, head and decoded body), and
/// each connection that closed in the middle of a body.
#[derive(Clone, Default)]
struct Seen {
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<Received>>>,
    cut: Arc<Mutex<Vec<usize>>>,
}

#[derive(Clone, Debug)]
struct Received {
    connection: usize,
    head: String,
    body: Vec<u8>,
}

impl Seen {
    fn requests(&self) -> Vec<Received> {
        self.requests.lock().unwrap().clone()
    }
}

/// An upstream that reads each request whole (a `Content-Length` or chunked body, decoded) and
/// answers `<n> bytes` with the body's length, except for `/drop`: that request is read whole
/// and then the connection is closed unanswered, as an upstream closing an idle connection at
/// the same moment the request arrives would.
fn spawn_upstream(pki: &TestPki) -> (SocketAddr, Seen) {
    let seen = Seen::default();
    let log = seen.clone();
    let address = spawn_tls_server(pki, b"http/1.1", move |mut tls| {
        let log = log.clone();
        let connection = log.connections.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut buf = Vec::new();
            loop {
                let Some(head) = take_head(&mut tls, &mut buf).await else {
                    return;
                };
                let Some(body) = take_body(&mut tls, &mut buf, &head).await else {
                    log.cut.lock().unwrap().push(connection);
                    return;
                };
                let drop = head.starts_with("post /drop ");
                let answer = format!("{} bytes", body.len());
                log.requests.lock().unwrap().push(Received {
                    connection,
                    head,
                    body,
                });
                if drop {
                    let _ = tls.shutdown().await;
                    return;
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{answer}",
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

/// A TLS connection to `allowed.test` through the proxy's CONNECT listener, trusting its CA.
async fn tunnel(proxy: &Proxy) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", proxy.explicit))
        .await
        .unwrap();
    tcp.write_all(b"CONNECT allowed.test:443 HTTP/1.1\r\nHost: allowed.test:443\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let head = take_head(&mut tcp, &mut buf).await.unwrap();
    assert!(head.starts_with("http/1.1 200"), "{head}");
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
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("allowed.test".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

/// Reads one response (status and `Content-Length` body); `None` if the connection closes
/// before a whole one arrives.
async fn response<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Option<(u16, String)> {
    let head = take_head(stream, buf).await?;
    let status = head.get(9..12)?.parse().ok()?;
    let body = take_body(stream, buf, &head).await?;
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

fn post(path: &str, extra: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: allowed.test\r\n{extra}content-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// Bytes no text-minded parser should find meaningful: every byte value, a CRLF CRLF and what
/// looks like a request line, repeated to `len`.
fn awkward_body(len: usize) -> Vec<u8> {
    let pattern: Vec<u8> = (0..=255u8)
        .chain(*b"\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: allowed.test\r\n\r\n0\r\n\r\n")
        .collect();
    pattern.iter().copied().cycle().take(len).collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn started(extra: &str) -> (Proxy, Seen) {
    let pki = test_pki(&["allowed.test"]);
    let (upstream, seen) = spawn_upstream(&pki);
    let proxy = Proxy::start(POLICY, upstream, &pki.ca_pem, &["allowed.test"], extra);
    (proxy, seen)
}

#[test]
fn post_bodies_arrive_byte_exact() {
    let (proxy, seen) = started("");
    let small = awkward_body(4096);
    // The largest body the relay carries: several TLS records and reads on both legs.
    let max = awkward_body(64 * 1024);
    // Larger and chunked bodies are Pingora's (relay/head.rs): as exact on that path.
    let large = awkward_body(3 * 1024 * 1024 + 17);
    let chunked_parts = [awkward_body(10), awkward_body(70_000), awkward_body(1)];
    runtime().block_on(async {
        let mut tls = tunnel(&proxy).await;
        let mut buf = Vec::new();
        let mut send = async |bytes: Vec<u8>| {
            tls.write_all(&bytes).await.unwrap();
            let answer = response(&mut tls, &mut buf).await.unwrap();
            proxy.record(answer.1.as_bytes());
            answer
        };
        assert_eq!(
            send(post("/small", "", &small)).await,
            (200, "4096 bytes".into())
        );
        assert_eq!(send(post("/empty", "", b"")).await, (200, "0 bytes".into()));
        let bare = b"POST /bare HTTP/1.1\r\nHost: allowed.test\r\n\r\n".to_vec();
        assert_eq!(send(bare).await, (200, "0 bytes".into()));
        assert_eq!(
            send(post("/max", "", &max)).await,
            (200, "65536 bytes".into())
        );
        let expected = format!("{} bytes", large.len());
        assert_eq!(send(post("/large", "", &large)).await, (200, expected));
        let mut chunked =
            b"PUT /chunked HTTP/1.1\r\nHost: allowed.test\r\ntransfer-encoding: chunked\r\n\r\n"
                .to_vec();
        for part in &chunked_parts {
            chunked.extend(format!("{:x}\r\n", part.len()).bytes());
            chunked.extend(part);
            chunked.extend(b"\r\n");
        }
        chunked.extend(b"0\r\n\r\n");
        assert_eq!(send(chunked).await, (200, "70011 bytes".into()));
    });
    let requests = seen.requests();
    let paths: Vec<&str> = requests
        .iter()
        .map(|r| r.head.split(' ').nth(1).unwrap())
        .collect();
    assert_eq!(
        paths,
        ["/small", "/empty", "/bare", "/max", "/large", "/chunked"]
    );
    assert_eq!(requests[0].body, small);
    assert!(requests[1].body.is_empty() && requests[2].body.is_empty());
    assert!(requests[3].body == max, "the 64 KiB body differs");
    assert!(requests[4].body == large, "the large body differs");
    assert_eq!(requests[5].body, chunked_parts.concat());
    // The client's framing goes upstream as it came, and nothing else is taken for a request.
    assert!(requests[0].head.contains("content-length: 4096\r\n"));
    assert!(requests[5].head.contains("transfer-encoding: chunked\r\n"));
    assert!(!requests[5].head.contains("content-length"));
    assert!(
        requests[..4].iter().all(|r| r.connection == 0),
        "the relay keeps one upstream connection"
    );
    // Audit: the body bytes are counted alike on both paths.
    let records = proxy.request_records(6);
    let up: Vec<u64> = records
        .iter()
        .map(|r| r["bytes_up"].as_u64().unwrap())
        .collect();
    assert_eq!(up, [4096, 0, 0, 65_536, large.len() as u64, 70_011]);
}

#[test]
fn a_request_pipelined_after_a_body_is_a_request_of_its_own() {
    let (proxy, seen) = started("");
    let body = awkward_body(1000);
    runtime().block_on(async {
        let mut tls = tunnel(&proxy).await;
        // One write: the body, then the next request, with nothing between them.
        let mut bytes = post("/first", "", &body);
        bytes.extend(b"GET /second HTTP/1.1\r\nHost: allowed.test\r\n\r\n");
        tls.write_all(&bytes).await.unwrap();
        let mut buf = Vec::new();
        assert_eq!(
            response(&mut tls, &mut buf).await,
            Some((200, "1000 bytes".into()))
        );
        assert_eq!(
            response(&mut tls, &mut buf).await,
            Some((200, "0 bytes".into()))
        );
    });
    let requests = seen.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert!(requests[0].head.starts_with("post /first "));
    assert_eq!(requests[0].body, body);
    assert!(requests[1].head.starts_with("get /second "));
    assert!(requests[1].body.is_empty());
}

#[test]
fn a_placeholder_in_the_header_of_a_post_is_swapped() {
    let secrets = tempfile::tempdir().unwrap();
    let value = secrets.path().join("github-token");
    private(&value, GITHUB_TOKEN);
    let store = secrets.path().join("secrets.toml");
    private(
        &store,
        "[secrets.github]\nvalue_file = \"github-token\"\nhosts = [\"allowed.test\"]\n\
         format = \"bearer\"\nplaceholder_prefix = \"ghp_\"\n",
    );
    let (proxy, seen) = started(&format!("[credentials]\nstore = \"{}\"\n", store.display()));
    proxy.admin(
        "PUT",
        "/sessions/sesn_a",
        Some("{\"source\": \"127.0.0.1\"}"),
    );
    let answer = proxy.admin(
        "POST",
        "/sessions/sesn_a/placeholders",
        Some("{\"secrets\": [\"github\"]}"),
    );
    let minted: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let placeholder = minted["placeholders"]["github"]
        .as_str()
        .unwrap()
        .to_string();
    let body = br#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    runtime().block_on(async {
        let mut tls = tunnel(&proxy).await;
        let auth = format!("authorization: Bearer {placeholder}\r\n");
        tls.write_all(&post("/v1/messages", &auth, body))
            .await
            .unwrap();
        let mut buf = Vec::new();
        let answer = response(&mut tls, &mut buf).await.unwrap();
        proxy.record(answer.1.as_bytes());
        assert_eq!(answer.0, 200);
    });
    let requests = seen.requests();
    assert_eq!(requests.len(), 1);
    let real = format!("authorization: bearer {}\r\n", GITHUB_TOKEN.to_lowercase());
    assert!(requests[0].head.contains(&real), "{}", requests[0].head);
    assert!(!requests[0].head.contains(&placeholder.to_lowercase()));
    assert_eq!(requests[0].body, body);
    let audit = std::fs::read_to_string(proxy.path("state/audit.log")).unwrap();
    assert!(
        audit.contains("\"placeholders\":[\"github->authorization\"]"),
        "{audit}"
    );
}

#[test]
fn a_client_that_stops_mid_body_gets_the_upstream_connection_dropped() {
    let (proxy, seen) = started("");
    runtime().block_on(async {
        // A warm-up request, so the client connection holds an upstream connection.
        let mut tls = tunnel(&proxy).await;
        let mut buf = Vec::new();
        tls.write_all(&post("/warm", "", b"x")).await.unwrap();
        assert_eq!(
            response(&mut tls, &mut buf).await,
            Some((200, "1 bytes".into()))
        );
        // 60,000 bytes announced (a body the relay carries), 1,000 sent, then the client is
        // gone.
        let mut partial = post("/partial", "", &awkward_body(60_000));
        partial.truncate(partial.len() - 59_000);
        tls.write_all(&partial).await.unwrap();
        tls.flush().await.unwrap();
        tls.shutdown().await.unwrap();
        let mut rest = Vec::new();
        let _ = tls.read_to_end(&mut rest).await;
        proxy.record(&rest);
    });
    // The upstream connection that carried the partial body is closed, not kept for the next
    // request, which would otherwise be read as the rest of that body.
    wait_until(|| seen.cut.lock().unwrap().as_slice() == [0]);
    runtime().block_on(async {
        let mut tls = tunnel(&proxy).await;
        let mut buf = Vec::new();
        tls.write_all(&post("/after", "", b"abc")).await.unwrap();
        assert_eq!(
            response(&mut tls, &mut buf).await,
            Some((200, "3 bytes".into()))
        );
    });
    let requests = seen.requests();
    let paths: Vec<(&str, usize)> = requests
        .iter()
        .map(|r| (r.head.split(' ').nth(1).unwrap(), r.connection))
        .collect();
    assert_eq!(paths, [("/warm", 0), ("/after", 1)]);
    let records = proxy.request_records(3);
    let partial = records
        .iter()
        .find(|r| r["path"] == "/partial")
        .unwrap_or_else(|| panic!("{records:?}"));
    assert_eq!(partial["status"], 400, "{partial}");
}

#[test]
fn a_post_that_may_have_reached_the_upstream_is_not_sent_again() {
    let (proxy, seen) = started("");
    runtime().block_on(async {
        let mut tls = tunnel(&proxy).await;
        let mut buf = Vec::new();
        tls.write_all(&post("/warm", "", b"x")).await.unwrap();
        assert_eq!(
            response(&mut tls, &mut buf).await,
            Some((200, "1 bytes".into()))
        );
        // On the kept connection: the upstream reads the POST whole, then closes unanswered.
        // A GET would be resent on a fresh connection; a POST gets a 502.
        tls.write_all(&post("/drop", "", b"charge the card"))
            .await
            .unwrap();
        let answer = response(&mut tls, &mut buf).await.unwrap();
        proxy.record(answer.1.as_bytes());
        assert_eq!(answer.0, 502, "{answer:?}");
    });
    let drops = seen
        .requests()
        .iter()
        .filter(|r| r.head.starts_with("post /drop "))
        .count();
    assert_eq!(drops, 1);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
}

/// Waits for `done` (polled, with a deadline far beyond any wait it stands for).
fn wait_until(done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A kept-alive connection outliving its session: once the session is deregistered, or its
/// address given to another session, the connection carries no more requests under the old
/// identity (and its credentials); a new connection gets the address's current session.
#[test]
fn a_connection_outliving_its_session_carries_no_more_requests() {
    let (proxy, seen) = started("");
    let register = |id: &str| {
        proxy.admin(
            "PUT",
            &format!("/sessions/{id}"),
            Some(r#"{"source": "127.0.0.1"}"#),
        );
    };
    register("sesn_old");
    runtime().block_on(async {
        let mut tls = tunnel(&proxy).await;
        let mut buf = Vec::new();
        tls.write_all(&post("/before", "", b"1")).await.unwrap();
        assert_eq!(response(&mut tls, &mut buf).await.unwrap().0, 200);
        // The address passes to another session while the connection stays open.
        proxy.admin("DELETE", "/sessions/sesn_old", None);
        register("sesn_new");
        tls.write_all(&post("/after", "", b"2")).await.unwrap();
        let (status, body) = response(&mut tls, &mut buf).await.unwrap();
        assert_eq!(status, 403, "{body}");
        assert!(
            body.contains("session_ended") || body.contains("has ended"),
            "{body}"
        );
        // A new connection is the new session's.
        let mut fresh = tunnel(&proxy).await;
        let mut buf = Vec::new();
        fresh.write_all(&post("/fresh", "", b"3")).await.unwrap();
        assert_eq!(response(&mut fresh, &mut buf).await.unwrap().0, 200);
    });
    let paths: Vec<String> = seen
        .requests()
        .iter()
        .map(|r| r.head.split(' ').nth(1).unwrap().to_string())
        .collect();
    assert_eq!(
        paths,
        ["/before", "/fresh"],
        "nothing reached the upstream after the end"
    );
    let records = proxy.request_records(3);
    let after = records
        .iter()
        .find(|r| r["path"] == "/after")
        .unwrap_or_else(|| panic!("{records:#?}"));
    assert_eq!(after["reason_class"], "session_ended", "{after}");
    assert_eq!(after["session"], "sesn_old");
    let fresh = records.iter().find(|r| r["path"] == "/fresh").unwrap();
    assert_eq!(fresh["session"], "sesn_new");
}

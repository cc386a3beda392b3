//! Fixtures shared by Cordon's integration tests: a test PKI (a CA and a leaf, as PEM) and fake
//! HTTPS upstreams on loopback, so no test ever reaches a real host.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod model;

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A free TCP port (bound, then released), never one this process handed out before: the
/// kernel may offer a released port again at once, and two tests running side by side would
/// then configure the same port. (Another process can still take it before it is bound; a
/// caller that starts a server on it should check the server holds it.)
///
/// Probed on the wildcard address, not loopback: the proxy's transparent listener binds
/// `0.0.0.0`, and a port free on loopback can still be the local port of a connection on
/// another address (a busy machine has thousands), which fails that bind.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("0.0.0.0:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Request heads an upstream received, for tests to see what the proxy really sent.
pub type Received = Arc<Mutex<Vec<String>>>;

/// Waits until something accepts connections on `127.0.0.1:port`, at most `within`; whether
/// it did (the caller says what did not start, with its log).
pub fn wait_for_port(port: u16, within: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    true
}

/// A test CA and a leaf for `names`, as PEM.
#[derive(Debug)]
pub struct TestPki {
    pub ca_pem: String,
    pub leaf_pem: String,
    pub leaf_key_pem: String,
}

pub fn test_pki(names: &[&str]) -> TestPki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct names: OpenSSL (curl) takes a leaf whose subject equals its issuer for
    // self-signed; rcgen's default name is the same for both.
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Cordon test upstream CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    leaf_params.distinguished_name.push(
        rcgen::DnType::CommonName,
        names.first().copied().unwrap_or("leaf"),
    );
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    TestPki {
        ca_pem: ca.pem(),
        leaf_pem: leaf.pem(),
        leaf_key_pem: leaf_key.serialize_pem(),
    }
}

/// Serves TLS on a fresh loopback port with `pki`'s leaf and the given ALPN, on a thread of
/// its own; `handle` gets each accepted TLS stream.
pub fn spawn_tls_server<F, Fut>(pki: &TestPki, alpn: &[u8], handle: F) -> SocketAddr
where
    F: Fn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use rustls::pki_types::pem::PemObject;
    let certs =
        vec![rustls::pki_types::CertificateDer::from_pem_slice(pki.leaf_pem.as_bytes()).unwrap()];
    let key =
        rustls::pki_types::PrivateKeyDer::from_pem_slice(pki.leaf_key_pem.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    config.alpn_protocols = vec![alpn.to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let handle = Arc::new(handle);
    spawn_loopback_server(move |tcp| {
        let acceptor = acceptor.clone();
        let handle = handle.clone();
        async move {
            if let Ok(tls) = acceptor.accept(tcp).await {
                handle(tls).await;
            }
        }
    })
}

/// Serves on a fresh loopback port, on a thread of its own with a runtime of its own;
/// `handle` gets each accepted connection, as a task.
pub fn spawn_loopback_server<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(handle(tcp));
            }
        });
    });
    address
}

/// Reads a request head (through the blank line); `None` when the peer closes first.
pub async fn read_head<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    Some(head)
}

/// An HTTPS/1.1 upstream that answers every request with its request head as the body.
pub fn spawn_upstream(pki: &TestPki) -> SocketAddr {
    spawn_recording_upstream(pki).0
}

/// [`spawn_upstream`], also keeping every request head it received.
pub fn spawn_recording_upstream(pki: &TestPki) -> (SocketAddr, Received) {
    let received = Received::default();
    let log = received.clone();
    let address = spawn_tls_server(pki, b"http/1.1", move |mut tls| {
        let log = log.clone();
        async move {
            while let Some(head) = read_head(&mut tls).await {
                let body = String::from_utf8_lossy(&head).into_owned();
                log.lock().unwrap().push(body.clone());
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                if tls.write_all(response.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    });
    (address, received)
}

/// `git http-backend`, set up as a CGI program for one smart-HTTP request: the fake forges of
/// the git tests and benchmarks run it per request and write the request body to its stdin.
/// `header` gives a request header's value ("" when absent); `user` is the authenticated user
/// the forge reports (`REMOTE_USER`).
pub fn git_http_backend(
    root: &std::path::Path,
    method: &str,
    uri: &str,
    header: impl Fn(&str) -> String,
    content_length: usize,
    user: &str,
) -> tokio::process::Command {
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    let mut command = tokio::process::Command::new("git");
    command
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", root)
        .env("REQUEST_METHOD", method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", content_length.to_string())
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("GIT_PROTOCOL", header("git-protocol"))
        .env("REMOTE_USER", user)
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    command
}

/// Where a CGI program's head ends in `out` (a blank line, CRLF or LF): the head's length and
/// where the body starts. `None` while no blank line has come.
pub fn cgi_head_end(out: &[u8]) -> Option<(usize, usize)> {
    let crlf = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4));
    let lf = out
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| (i, i + 2));
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// A CGI head's status (its `Status:` line, 200 without one, 500 if unreadable) and its other
/// headers, in order.
pub fn cgi_head(head: &[u8]) -> (u16, Vec<(String, String)>) {
    let mut status = 200;
    let mut headers = Vec::new();
    for line in String::from_utf8_lossy(head).lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            status = value
                .split_whitespace()
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(500);
        } else {
            headers.push((name.trim().to_string(), value.to_string()));
        }
    }
    (status, headers)
}

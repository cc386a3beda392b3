//! A WebSocket upgrade through the intercepting proxy: the upgrade request is decided by the
//! policy like any request, then bytes flow both ways.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use support::{Proxy, spawn_upgrade_echo, test_pki};

const POLICY: &str = r#"package cordon.egress
import rego.v1

default decision := {"allowed": false, "reason": "default deny"}

decision := {"allowed": true, "reason": "connect"} if input.connection.stage == "connect"

decision := {"allowed": true, "reason": "socket allowed"} if {
	input.connection.stage == "request"
	input.parsed_path == ["socket"]
	input.attributes.request.http.headers.upgrade == "websocket"
}
"#;

/// Opens a CONNECT tunnel and a TLS session (trusting the interception CA) to `host`.
fn tunnel(proxy: &Proxy, host: &str) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    // The admin port answers first; the explicit listener may take a moment longer.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut tcp = loop {
        match TcpStream::connect(("127.0.0.1", proxy.explicit)) {
            Ok(tcp) => break tcp,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("the explicit listener never answered: {e}"),
        }
    };
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        tcp,
        "CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(proxy.ca()).unwrap();
    use rustls::pki_types::pem::PemObject;
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(&pem).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connection = rustls::ClientConnection::new(
        Arc::new(config),
        ServerName::try_from(host.to_string()).unwrap(),
    )
    .unwrap();
    rustls::StreamOwned::new(connection, tcp)
}

fn read_head(stream: &mut impl Read) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

const UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

#[test]
fn websocket_upgrades_are_decided_then_relayed() {
    let pki = test_pki(&["ws.test"]);
    let upstream = spawn_upgrade_echo(&pki);
    let proxy = Proxy::start(POLICY, upstream, &pki.ca_pem, &["ws.test"], "");

    let mut tls = tunnel(&proxy, "ws.test");
    write!(tls, "GET /socket HTTP/1.1\r\nHost: ws.test\r\n{UPGRADE}").unwrap();
    let head = read_head(&mut tls);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    for message in [&b"hello"[..], b"second message", &[0u8, 159, 146, 150]] {
        tls.write_all(message).unwrap();
        let mut echoed = vec![0u8; message.len()];
        tls.read_exact(&mut echoed).unwrap();
        assert_eq!(echoed, message);
    }

    // The same upgrade to a path the policy does not allow is refused before any relaying.
    let mut tls = tunnel(&proxy, "ws.test");
    write!(tls, "GET /other HTTP/1.1\r\nHost: ws.test\r\n{UPGRADE}").unwrap();
    let head = read_head(&mut tls);
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(head.contains("cordon-error: policy"), "{head}");
}

const INJECTING: &str = r#"package cordon.egress
import rego.v1

default decision := {"allowed": false, "reason": "default deny"}

decision := {"allowed": true, "reason": "connect"} if input.connection.stage == "connect"

decision := {"allowed": true, "reason": "socket", "inject": [{"secret": secret, "header": "authorization"}]} if {
	input.connection.stage == "request"
	secret := {"/socket": "ws", "/socket-open": "ws-open"}[input.attributes.request.http.path]
}
"#;

/// An upgraded stream is not scrubbed, so a secret goes on a WebSocket upgrade only when its
/// binding says `allow_upgrade`; otherwise the upgrade is refused (`credential`) before it
/// reaches the upstream.
#[test]
fn secrets_go_on_upgrades_only_where_their_binding_allows() {
    use std::os::unix::fs::PermissionsExt;
    let pki = test_pki(&["ws.test"]);
    let upstream = spawn_upgrade_echo(&pki);
    let secrets = tempfile::tempdir().unwrap();
    let store = secrets.path().join("secrets.toml");
    std::fs::write(
        &store,
        "[secrets.ws]\nvalue_env = \"CORDON_TEST_WS\"\nhosts = [\"ws.test\"]\nformat = \"bearer\"\n\
         [secrets.ws-open]\nvalue_env = \"CORDON_TEST_WS\"\nhosts = [\"ws.test\"]\n\
         format = \"bearer\"\nallow_upgrade = true\n",
    )
    .unwrap();
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(secrets.path().join("policy.rego"), INJECTING).unwrap();
    let proxy = Proxy::start_bundle(
        &secrets.path().join("policy.rego"),
        upstream,
        &pki.ca_pem,
        &["ws.test"],
        &format!("[credentials]\nstore = \"{}\"\n", store.display()),
        &[("CORDON_TEST_WS", "ws-token-for-the-test")],
    );

    let mut tls = tunnel(&proxy, "ws.test");
    write!(tls, "GET /socket HTTP/1.1\r\nHost: ws.test\r\n{UPGRADE}").unwrap();
    let head = read_head(&mut tls);
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(head.contains("cordon-error: credential"), "{head}");

    let mut tls = tunnel(&proxy, "ws.test");
    write!(
        tls,
        "GET /socket-open HTTP/1.1\r\nHost: ws.test\r\n{UPGRADE}"
    )
    .unwrap();
    let head = read_head(&mut tls);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let audit = std::fs::read_to_string(proxy.path("state/audit.log")).unwrap();
    assert!(audit.contains("allow_upgrade"), "{audit}");
}

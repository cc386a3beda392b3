//! The gateway as a user runs it: the `cordon-proxy` binary with a config file, curl as the
//! client (`--proxy`, `--cacert`), and a fake HTTPS upstream on 127.0.0.1 behind a test CA.
//! Host names reach the fake upstream through `[upstream] connect_to`; nothing leaves loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A test CA and a leaf for `names`, as PEM.
struct TestPki {
    ca_pem: String,
    leaf_pem: String,
    leaf_key_pem: String,
}

fn test_pki(names: &[&str]) -> TestPki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    TestPki {
        ca_pem: ca.pem(),
        leaf_pem: leaf.pem(),
        leaf_key_pem: leaf_key.serialize_pem(),
    }
}

/// An HTTPS/1.1 upstream that answers every request with its request head as the body.
fn spawn_upstream(pki: &TestPki) -> SocketAddr {
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
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
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
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    loop {
                        let mut head = Vec::new();
                        let mut buf = [0u8; 4096];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match tls.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        let body = String::from_utf8_lossy(&head).into_owned();
                        let response = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if tls.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
    });
    address
}

/// The proxy under test, killed (by its pid) when dropped.
struct Proxy {
    child: Child,
    dir: tempfile::TempDir,
    explicit: u16,
    admin: u16,
    metrics: u16,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    fn start(upstream: SocketAddr, upstream_ca: &str) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("bundle")).unwrap();
        std::fs::write(dir.path().join("bundle/policy.rego"), POLICY).unwrap();
        std::fs::write(dir.path().join("upstream-ca.pem"), upstream_ca).unwrap();
        let (explicit, admin, metrics) = (free_port(), free_port(), free_port());
        let config = format!(
            "[proxy]\nexplicit_listen = \"127.0.0.1:{explicit}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
             metrics_listen = \"127.0.0.1:{metrics}\"\nstate_dir = \"state\"\n\
             [policy]\nbundle = \"bundle\"\n[tls]\nupstream_extra_roots = [\"upstream-ca.pem\"]\n\
             [upstream]\nconnect_timeout_ms = 2000\n[upstream.connect_to]\n\
             \"allowed.test:443\" = \"{upstream}\"\n\"badcert.test:443\" = \"{upstream}\"\n"
        );
        std::fs::write(dir.path().join("cordon.toml"), config).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_cordon-proxy"))
            .arg("--config")
            .arg(dir.path().join("cordon.toml"))
            .env("CORDON_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let proxy = Proxy {
            child,
            dir,
            explicit,
            admin,
            metrics,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", admin)).is_err() {
            assert!(Instant::now() < deadline, "proxy did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        proxy
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn ca(&self) -> PathBuf {
        let out = Command::new(env!("CARGO_BIN_EXE_cordon-proxy"))
            .args(["ca", "print", "--config"])
            .arg(self.path("cordon.toml"))
            .output()
            .unwrap();
        assert!(out.status.success());
        let path = self.path("cordon-ca.pem");
        std::fs::write(&path, out.stdout).unwrap();
        path
    }

    fn curl(&self, args: &[&str]) -> Output {
        Command::new("curl")
            .args(["-s", "-i", "--max-time", "10", "--proxy"])
            .arg(format!("http://127.0.0.1:{}", self.explicit))
            .arg("--cacert")
            .arg(self.ca())
            .args(args)
            .output()
            .expect("curl is installed by scripts/install-deps.sh")
    }

    fn admin(&self, method: &str, path: &str, body: Option<&str>) -> String {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-X", method])
            .arg(format!("http://127.0.0.1:{}{path}", self.admin));
        if let Some(body) = body {
            cmd.args(["-d", body]);
        }
        String::from_utf8(cmd.output().unwrap().stdout).unwrap()
    }
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn explicit_proxy_end_to_end() {
    let pki = test_pki(&["allowed.test"]);
    let upstream = spawn_upstream(&pki);
    let proxy = Proxy::start(upstream, &pki.ca_pem);
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
    let metrics = Command::new("curl")
        .args(["-s"])
        .arg(format!("http://127.0.0.1:{}/metrics", proxy.metrics))
        .output()
        .unwrap();
    let metrics = text(&metrics);
    for needle in [
        "cordon_proxy_requests_total{decision=\"allow\",protocol=\"http2\"}",
        "cordon_proxy_requests_total{decision=\"deny\"",
        "cordon_proxy_certs_minted_total",
        "cordon_proxy_connections_total{mode=\"explicit\",outcome=\"intercepted\"}",
        "cordon_policy_generation_info",
        "cordon_build_info",
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
    assert!(!audit.contains("q=1"), "query strings must not be logged");
    assert!(
        !audit.contains("secret-ish"),
        "header values must not be logged"
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

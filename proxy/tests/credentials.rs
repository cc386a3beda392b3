//! Credentials through the real proxy: injection bound to destinations, per-session
//! placeholders, and scrubbing of echoed values. Every `Proxy` drop also checks that no secret
//! value reached anything the proxy produced (support::TEST_SECRET_VALUES).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use support::{
    GIT_TOKEN, GITHUB_TOKEN, Proxy, ROTATED_TOKEN, Received, TestPki, spawn_recording_upstream,
    test_pki, text,
};
use tokio::io::AsyncWriteExt;

const POLICY: &str = r#"package cordon.egress
import rego.v1

default decision := {"allowed": false, "reason": "default deny"}

decision := {"allowed": true, "reason": "connect"} if input.connection.stage == "connect"

# The policy asks for the credential everywhere; the store's binding decides where it may go.
decision := {
	"allowed": true,
	"reason": "with credential",
	"inject": [{"secret": "github", "header": "authorization"}],
} if {
	input.connection.stage == "request"
	input.destination.host in {"allowed.test", "unbound.test"}
}

decision := {
	"allowed": true,
	"reason": "unknown credential",
	"inject": [{"secret": "no-such-secret", "header": "x-token"}],
} if {
	input.connection.stage == "request"
	input.destination.host == "unknown-secret.test"
}

# Hosts the sandbox reaches with its own (placeholder) credentials.
decision := {"allowed": true, "reason": "no injection"} if {
	input.connection.stage == "request"
	input.destination.host in {"git.test", "elsewhere.test", "chunky.test"}
}
"#;

const HOSTS: &[&str] = &[
    "allowed.test",
    "unbound.test",
    "unknown-secret.test",
    "git.test",
    "elsewhere.test",
    "chunky.test",
];

fn private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A secret store with `github` (Bearer, allowed.test and chunky.test, GET/POST) and `git`
/// (Basic `x-access-token`, git.test), both from value files.
fn store(dir: &Path) -> std::path::PathBuf {
    private(&dir.join("github-token"), GITHUB_TOKEN);
    private(&dir.join("git-token"), GIT_TOKEN);
    let store = dir.join("secrets.toml");
    private(
        &store,
        "[secrets.github]\nvalue_file = \"github-token\"\nhosts = [\"allowed.test\", \"chunky.test\"]\n\
         format = \"bearer\"\nmethods = [\"GET\", \"POST\"]\nplaceholder_prefix = \"ghp_\"\n\
         [secrets.git]\nvalue_file = \"git-token\"\nhosts = [\"git.test\"]\nformat = \"basic\"\n\
         basic_user = \"x-access-token\"\nheaders = [\"authorization\", \"x-api-token\"]\n",
    );
    store
}

fn start(pki: &TestPki, upstream: SocketAddr, secrets: &Path) -> Proxy {
    Proxy::start(
        POLICY,
        upstream,
        &pki.ca_pem,
        HOSTS,
        &format!(
            "[credentials]\nstore = \"{}\"\nwatch_interval_ms = 100\n",
            store(secrets).display()
        ),
    )
}

fn last_received(received: &Received) -> String {
    received.lock().unwrap().last().cloned().unwrap_or_default()
}

#[test]
fn injects_bound_credentials_and_refuses_the_rest() {
    let pki = test_pki(HOSTS);
    let (upstream, received) = spawn_recording_upstream(&pki);
    let secrets = tempfile::tempdir().unwrap();
    let proxy = start(&pki, upstream, secrets.path());

    // Injected, replacing what the client sent.
    let body = text(&proxy.curl(&[
        "-H",
        "Authorization: Bearer sandbox-guess",
        "https://allowed.test/repos",
    ]));
    assert!(body.contains("HTTP/2 200"), "{body}");
    let sent = last_received(&received);
    assert!(
        sent.contains(&format!("authorization: Bearer {GITHUB_TOKEN}")),
        "{sent}"
    );
    assert!(!sent.contains("sandbox-guess"), "{sent}");
    // The echo comes back with the value replaced (no session registered: `<prefix>redacted`).
    assert!(
        body.contains("authorization: Bearer ghp_redacted"),
        "{body}"
    );

    // Refusals: host outside the binding, method outside it, TRACE, an unknown secret, and a
    // plaintext leg the binding does not allow. None reaches the upstream.
    let before = received.lock().unwrap().len();
    for (args, needle) in [
        (
            vec!["https://unbound.test/"],
            "not bound to host unbound.test",
        ),
        (
            vec!["-X", "DELETE", "https://allowed.test/repos"],
            "not bound to method DELETE",
        ),
        (vec!["-X", "TRACE", "https://allowed.test/"], "TRACE echoes"),
        (
            vec!["https://unknown-secret.test/"],
            "not in the secret store",
        ),
        (vec!["http://allowed.test/"], "over plaintext HTTP"),
    ] {
        let body = text(&proxy.curl(&args));
        assert!(body.contains(" 403"), "{args:?}: {body}");
        assert!(body.contains("cordon-error: credential"), "{body}");
        assert!(body.contains(needle), "{needle}: {body}");
    }
    assert_eq!(received.lock().unwrap().len(), before);

    // Rotation without restart: a new value after the admin reload.
    private(&secrets.path().join("github-token"), ROTATED_TOKEN);
    let answer = proxy.admin("POST", "/reload", None);
    assert!(answer.contains("\"secrets\":2"), "{answer}");
    proxy.curl(&["https://allowed.test/after-rotation"]);
    let sent = last_received(&received);
    assert!(
        sent.contains(&format!("authorization: Bearer {ROTATED_TOKEN}")),
        "{sent}"
    );

    // Rotation with no reload at all: the watcher sees the value file change.
    private(&secrets.path().join("github-token"), GITHUB_TOKEN);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        proxy.curl(&["https://allowed.test/after-watch"]);
        if last_received(&received).contains(&format!("authorization: Bearer {GITHUB_TOKEN}")) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the watcher did not pick up the rotated value file"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    let audit = std::fs::read_to_string(proxy.path("state/audit.log")).unwrap();
    assert!(
        audit.contains("\"credentials\":[\"github->authorization\"]"),
        "{audit}"
    );
    let metrics = proxy.metrics_text();
    assert!(
        metrics.contains("cordon_proxy_credentials_total{action=\"refused\"} 5"),
        "{metrics}"
    );
}

/// Mints the placeholders of `secrets` for `session`; returns them in order.
fn mint(proxy: &Proxy, session: &str, secrets: &[&str]) -> Vec<String> {
    let body = serde_json::json!({ "secrets": secrets }).to_string();
    let answer = proxy.admin(
        "POST",
        &format!("/sessions/{session}/placeholders"),
        Some(&body),
    );
    let value: serde_json::Value = serde_json::from_str(&answer).unwrap();
    secrets
        .iter()
        .map(|s| {
            value["placeholders"][s]
                .as_str()
                .unwrap_or_else(|| panic!("{answer}"))
                .to_string()
        })
        .collect()
}

#[test]
fn placeholders_are_swapped_only_toward_bound_hosts_of_their_session() {
    let pki = test_pki(HOSTS);
    let (upstream, received) = spawn_recording_upstream(&pki);
    let secrets = tempfile::tempdir().unwrap();
    let proxy = start(&pki, upstream, secrets.path());
    for (id, source) in [("sesn_a", "127.0.0.1"), ("sesn_b", "127.0.0.2")] {
        let answer = proxy.admin(
            "PUT",
            &format!("/sessions/{id}"),
            Some(&format!("{{\"source\": \"{source}\"}}")),
        );
        assert!(answer.contains(id), "{answer}");
    }

    // Minting: unknown session, unknown secret and a bad body are refused and say why.
    let answer = proxy.admin(
        "POST",
        "/sessions/sesn_x/placeholders",
        Some("{\"secrets\":[\"git\"]}"),
    );
    assert!(answer.contains("not registered"), "{answer}");
    let answer = proxy.admin(
        "POST",
        "/sessions/sesn_a/placeholders",
        Some("{\"secrets\":[\"git\",\"nope\"]}"),
    );
    assert!(
        answer.contains("\\\"nope\\\" is not in the secret store"),
        "{answer}"
    );
    let answer = proxy.admin("POST", "/sessions/sesn_a/placeholders", Some("[]"));
    assert!(answer.contains("expected {\\\"secrets\\\""), "{answer}");

    let [github, git] = mint(&proxy, "sesn_a", &["github", "git"])
        .try_into()
        .unwrap();
    assert!(github.starts_with("ghp_") && git.starts_with("cordon_ph_"));
    // Idempotent: the same session gets the same placeholders; another gets its own.
    assert_eq!(mint(&proxy, "sesn_a", &["git"]), vec![git.clone()]);
    let [git_b] = mint(&proxy, "sesn_b", &["git"]).try_into().unwrap();
    assert_ne!(git_b, git);

    // Basic authorization, as git sends it: the real value goes upstream, and the echo comes
    // back with the placeholder in its place.
    let body = text(&proxy.curl(&[
        "-u",
        &format!("x-access-token:{git}"),
        "https://git.test/repo.git/info/refs",
    ]));
    assert!(body.contains("HTTP/2 200"), "{body}");
    let sent = last_received(&received);
    let real = STANDARD.encode(format!("x-access-token:{GIT_TOKEN}"));
    assert!(
        sent.contains(&format!("authorization: Basic {real}")),
        "{sent}"
    );
    let shown = STANDARD.encode(format!("x-access-token:{git}"));
    assert!(
        body.contains(&format!("authorization: Basic {shown}")),
        "{body}"
    );

    // A placeholder in another header the secret names is swapped too; in a header it does
    // not name (one a service might log or reflect transformed), refused as exfiltration.
    proxy.curl(&["-H", &format!("x-api-token: {git}"), "https://git.test/api"]);
    assert!(last_received(&received).contains(&format!("x-api-token: {GIT_TOKEN}")));
    let before = received.lock().unwrap().len();
    let body = text(&proxy.curl(&[
        "-H",
        &format!("user-agent: tool/{git}"),
        "https://git.test/api",
    ]));
    assert!(body.contains("cordon-error: exfiltration"), "{body}");
    assert!(body.contains("user-agent header"), "{body}");
    assert_eq!(received.lock().unwrap().len(), before);

    // Exfiltration: to a host outside the binding, in a header or in the URL.
    let before = received.lock().unwrap().len();
    let body = text(&proxy.curl(&["-u", &format!("x:{git}"), "https://elsewhere.test/"]));
    assert!(body.contains("HTTP/2 403"), "{body}");
    assert!(body.contains("cordon-error: exfiltration"), "{body}");
    assert!(body.contains("sent to elsewhere.test"), "{body}");
    let body = text(&proxy.curl(&[&format!("https://elsewhere.test/c?t={github}")]));
    assert!(body.contains("cordon-error: exfiltration"), "{body}");
    // Another session's placeholder, even toward its bound host.
    let body = text(&proxy.curl(&[
        "--interface",
        "127.0.0.2",
        "-u",
        &format!("x-access-token:{git}"),
        "https://git.test/repo.git/info/refs",
    ]));
    assert!(body.contains("cordon-error: exfiltration"), "{body}");
    assert!(body.contains("of another session"), "{body}");
    assert_eq!(received.lock().unwrap().len(), before);

    // A removed session's placeholders are plain strings again: forwarded unswapped.
    proxy.admin("DELETE", "/sessions/sesn_a", None);
    let body = text(&proxy.curl(&[
        "-H",
        &format!("x-api-token: {git}"),
        "https://git.test/gone",
    ]));
    assert!(body.contains("HTTP/2 200"), "{body}");
    assert!(last_received(&received).contains(&format!("x-api-token: {git}")));

    let audit = std::fs::read_to_string(proxy.path("state/audit.log")).unwrap();
    assert!(
        audit.contains("\"placeholders\":[\"git->authorization\"]"),
        "{audit}"
    );
    assert!(
        audit.contains("\"reason_class\":\"exfiltration\""),
        "{audit}"
    );
    assert!(
        !audit.contains(&git),
        "placeholders stay out of the audit log"
    );
    let metrics = proxy.metrics_text();
    assert!(
        metrics.contains("cordon_proxy_credentials_total{action=\"exfiltration\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cordon_proxy_credentials_total{action=\"swapped\"} 2"),
        "{metrics}"
    );
}

/// An upstream that answers every request with a chunked body that splits the `github` value
/// across two chunks written apart, and echoes it in a response header.
fn spawn_chunky_upstream(pki: &TestPki) -> SocketAddr {
    support::spawn_tls_server(pki, b"http/1.1", |mut tls| async move {
        if support::read_head(&mut tls).await.is_none() {
            return;
        }
        let (first, second) = GITHUB_TOKEN.split_at(11);
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-debug: token={GITHUB_TOKEN}\r\n\
             transfer-encoding: chunked\r\n\r\n"
        );
        let one = format!("error: bad token {first}");
        let two = format!("{second} (try again)\n");
        let parts = [
            head,
            format!("{:x}\r\n{one}\r\n", one.len()),
            format!("{:x}\r\n{two}\r\n0\r\n\r\n", two.len()),
        ];
        for part in parts {
            if tls.write_all(part.as_bytes()).await.is_err() {
                return;
            }
            let _ = tls.flush().await;
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
}

#[test]
fn echoed_values_are_scrubbed_across_chunk_boundaries() {
    let pki = test_pki(HOSTS);
    let upstream = spawn_chunky_upstream(&pki);
    let secrets = tempfile::tempdir().unwrap();
    let proxy = start(&pki, upstream, secrets.path());
    proxy.admin(
        "PUT",
        "/sessions/sesn_a",
        Some("{\"source\": \"127.0.0.1\"}"),
    );
    let [github] = mint(&proxy, "sesn_a", &["github"]).try_into().unwrap();
    for protocol in ["--http1.1", "--http2"] {
        let body = text(&proxy.curl(&[protocol, "https://chunky.test/"]));
        assert!(body.contains(" 200"), "{body}");
        assert!(
            body.contains(&format!("error: bad token {github} (try again)")),
            "{protocol}: {body}"
        );
        assert!(body.contains(&format!("x-debug: token={github}")), "{body}");
    }
    let audit = std::fs::read_to_string(proxy.path("state/audit.log")).unwrap();
    assert!(audit.contains("\"secrets_scrubbed\":2"), "{audit}");
}

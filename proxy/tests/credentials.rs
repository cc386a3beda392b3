//! Credential injection through the real proxy: the upstream receives the secret, the sandbox
//! never sends or sees it in anything the proxy produces, and bindings are a second lock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::fs::PermissionsExt;

use support::{Proxy, spawn_upstream, test_pki, text};

const SECRET: &str = "ghp_cordonTestSecretValue0123456789";

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
"#;

#[test]
fn injects_bound_credentials_and_refuses_the_rest() {
    let pki = test_pki(&["allowed.test", "unbound.test", "unknown-secret.test"]);
    let upstream = spawn_upstream(&pki);
    let secrets = tempfile::tempdir().unwrap();
    let private = |path: &std::path::Path, text: &str| {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    };
    private(&secrets.path().join("github-token"), SECRET);
    let store = secrets.path().join("secrets.toml");
    private(
        &store,
        "[secrets.github]\nvalue_file = \"github-token\"\nhosts = [\"allowed.test\"]\n\
         format = \"bearer\"\nmethods = [\"GET\", \"POST\"]\n",
    );
    let proxy = Proxy::start(
        POLICY,
        upstream,
        &pki.ca_pem,
        &["allowed.test", "unbound.test", "unknown-secret.test"],
        &format!("[credentials]\nstore = \"{}\"\n", store.display()),
    );

    // Injected, replacing what the client sent. (The echo upstream shows what it received.)
    let out = proxy.curl(&[
        "-H",
        "Authorization: Bearer sandbox-guess",
        "https://allowed.test/repos",
    ]);
    let body = text(&out);
    assert!(body.contains("HTTP/2 200"), "{body}");
    assert!(
        body.contains(&format!("authorization: Bearer {SECRET}")),
        "{body}"
    );
    assert!(!body.contains("sandbox-guess"), "{body}");

    // Refusals: host outside the binding, method outside it, TRACE, an unknown secret.
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
    ] {
        let out = proxy.curl(&args);
        let body = text(&out);
        assert!(body.contains("HTTP/2 403"), "{args:?}: {body}");
        assert!(body.contains("cordon-error: credential"), "{body}");
        assert!(body.contains(needle), "{needle}: {body}");
    }

    // Rotation without restart: a new value after the admin reload.
    private(&secrets.path().join("github-token"), "ghp_rotatedValue");
    let answer = proxy.admin("POST", "/reload", None);
    assert!(answer.contains("\"secrets\":1"), "{answer}");
    let body = text(&proxy.curl(&["https://allowed.test/after-rotation"]));
    assert!(
        body.contains("authorization: Bearer ghp_rotatedValue"),
        "{body}"
    );

    // The audit log names the secret and header, and no value appears in anything the proxy
    // wrote: audit log, its own log, metrics, or the refusals above.
    let audit = std::fs::read_to_string(proxy.path("state/audit.log")).unwrap();
    assert!(
        audit.contains("\"credentials\":[\"github->authorization\"]"),
        "{audit}"
    );
    let metrics = proxy.metrics_text();
    let log = std::fs::read_to_string(proxy.path("proxy.log")).unwrap_or_default();
    for (name, produced) in [
        ("audit log", &audit),
        ("proxy log", &log),
        ("metrics", &metrics),
    ] {
        for value in [SECRET, "ghp_rotatedValue"] {
            assert!(
                !produced.contains(value),
                "a secret value leaked into the {name}"
            );
        }
    }
}

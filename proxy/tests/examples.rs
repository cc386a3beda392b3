//! The shipped examples work as docs/CREDENTIALS.md says: examples/policies/agent-egress with
//! examples/secrets.toml, through the real proxy, against a local echo upstream standing in for
//! GitHub, the npm registry, PyPI and the Anthropic API.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use support::{
    ANTHROPIC_KEY, GITHUB_TOKEN, NPM_TOKEN, PYPI_TOKEN, Proxy, Received, spawn_recording_upstream,
    test_pki, text,
};

const HOSTS: &[&str] = &[
    "api.github.com",
    "github.com",
    "api.anthropic.com",
    "registry.npmjs.org",
    "pypi.org",
];

fn last(received: &Received) -> String {
    received.lock().unwrap().last().cloned().unwrap_or_default()
}

#[test]
fn the_example_secrets_and_policy_inject_swap_and_refuse() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let pki = test_pki(HOSTS);
    let (upstream, received) = spawn_recording_upstream(&pki);
    let secrets = tempfile::tempdir().unwrap();
    let store = secrets.path().join("secrets.toml");
    std::fs::copy(examples.join("secrets.toml"), &store).unwrap();
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o600)).unwrap();
    let proxy = Proxy::start_bundle(
        &examples.join("policies/agent-egress"),
        upstream,
        &pki.ca_pem,
        HOSTS,
        &format!("[credentials]\nstore = \"{}\"\n", store.display()),
        &[
            ("CORDON_SECRET_GITHUB", GITHUB_TOKEN),
            ("CORDON_SECRET_NPM", NPM_TOKEN),
            ("CORDON_SECRET_PYPI", PYPI_TOKEN),
            ("CORDON_SECRET_ANTHROPIC", ANTHROPIC_KEY),
        ],
    );
    proxy.admin(
        "PUT",
        "/sessions/sesn_demo",
        Some("{\"source\": \"127.0.0.1\"}"),
    );

    // GitHub API: the policy injects `github` as a Bearer token; the echo shows the sandbox a
    // GitHub-shaped placeholder in its place.
    let body = text(&proxy.curl(&["https://api.github.com/repos/rust-lang/rust"]));
    assert!(body.contains("HTTP/2 200"), "{body}");
    assert!(last(&received).contains(&format!("authorization: Bearer {GITHUB_TOKEN}")));
    assert!(body.contains("authorization: Bearer ghp_"), "{body}");

    // git over HTTPS: `github-git`, the same token as Basic x-access-token.
    let body = text(
        &proxy.curl(&["https://github.com/rust-lang/rust.git/info/refs?service=git-upload-pack"]),
    );
    assert!(body.contains("HTTP/2 200"), "{body}");
    let basic = STANDARD.encode(format!("x-access-token:{GITHUB_TOKEN}"));
    assert!(last(&received).contains(&format!("authorization: Basic {basic}")));

    // Anthropic: x-api-key injected, the agent's own authorization removed.
    let body = text(&proxy.curl(&[
        "-X",
        "POST",
        "-H",
        "authorization: Bearer agents-own-key",
        "-d",
        "{}",
        "https://api.anthropic.com/v1/messages",
    ]));
    assert!(body.contains("HTTP/2 200"), "{body}");
    let sent = last(&received);
    assert!(
        sent.contains(&format!("x-api-key: {ANTHROPIC_KEY}")),
        "{sent}"
    );
    assert!(!sent.contains("agents-own-key"), "{sent}");

    // The npm registry: the policy injects nothing there, but a placeholder in .npmrc is
    // swapped for the registry token toward registry.npmjs.org...
    let answer = proxy.admin(
        "POST",
        "/sessions/sesn_demo/placeholders",
        Some("{\"secrets\": [\"npm\"]}"),
    );
    let value: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let npm = value["placeholders"]["npm"].as_str().unwrap().to_string();
    assert!(npm.starts_with("npm_"), "{answer}");
    let body = text(&proxy.curl(&[
        "-H",
        &format!("authorization: Bearer {npm}"),
        "https://registry.npmjs.org/left-pad",
    ]));
    assert!(body.contains("HTTP/2 200"), "{body}");
    assert!(last(&received).contains(&format!("authorization: Bearer {NPM_TOKEN}")));

    // ...and refused as exfiltration toward any other host, even one the policy allows.
    let body = text(&proxy.curl(&[
        "-H",
        &format!("authorization: Bearer {npm}"),
        "https://pypi.org/simple/",
    ]));
    assert!(body.contains("cordon-error: exfiltration"), "{body}");
}

//! A real `git clone` over HTTPS through the proxy, holding only a placeholder: the proxy swaps
//! it for the real token inside git's Basic authorization, toward the secret's bound host only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use support::git::{bare_repo, spawn_git_server};
use support::{GIT_TOKEN, Proxy, test_pki};

const POLICY: &str = r#"package cordon.egress
import rego.v1

default decision := {"allowed": false, "reason": "default deny"}

decision := {"allowed": true, "reason": "git"} if input.destination.host == "git.test"
"#;

fn private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// `git clone url dest` through the proxy, trusting its CA, with no credential helper or
/// prompt and no user or system configuration.
fn clone(proxy: &Proxy, home: &Path, url: &str, dest: &Path) -> Output {
    let out = Command::new("git")
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .args(["-c", "credential.helper="])
        .arg("-c")
        .arg(format!("http.proxy=http://127.0.0.1:{}", proxy.explicit))
        .env("GIT_SSL_CAINFO", proxy.ca())
        .args(["clone", "-q", url])
        .arg(dest)
        .output()
        .expect("git is installed by scripts/install-deps.sh");
    proxy.record(&out.stdout);
    proxy.record(&out.stderr);
    out
}

#[test]
fn git_clone_over_https_with_a_placeholder() {
    let pki = test_pki(&["git.test"]);
    let repos = tempfile::tempdir().unwrap();
    bare_repo(repos.path(), "repo.git", "hello from the fake forge\n");
    let server = spawn_git_server(
        &pki,
        repos.path().to_path_buf(),
        "x-access-token",
        GIT_TOKEN,
    );

    let secrets = tempfile::tempdir().unwrap();
    private(&secrets.path().join("git-token"), GIT_TOKEN);
    let store = secrets.path().join("secrets.toml");
    private(
        &store,
        "[secrets.git]\nvalue_file = \"git-token\"\nhosts = [\"git.test\"]\nformat = \"basic\"\n\
         basic_user = \"x-access-token\"\nplaceholder_prefix = \"gho_\"\n",
    );
    let proxy = Proxy::start(
        POLICY,
        server,
        &pki.ca_pem,
        &["git.test"],
        &format!("[credentials]\nstore = \"{}\"\n", store.display()),
    );
    proxy.admin(
        "PUT",
        "/sessions/sesn_git",
        Some("{\"source\": \"127.0.0.1\"}"),
    );
    let answer = proxy.admin(
        "POST",
        "/sessions/sesn_git/placeholders",
        Some("{\"secrets\": [\"git\"]}"),
    );
    let value: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let placeholder = value["placeholders"]["git"].as_str().unwrap().to_string();
    assert!(placeholder.starts_with("gho_"), "{answer}");

    let work = tempfile::tempdir().unwrap();
    // Without a credential the forge refuses: the swap below is what makes the clone work.
    let out = clone(
        &proxy,
        work.path(),
        "https://git.test/repo.git",
        &work.path().join("anonymous"),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("terminal prompts disabled"),
        "the forge must demand a credential: {stderr}"
    );

    let out = clone(
        &proxy,
        work.path(),
        &format!("https://x-access-token:{placeholder}@git.test/repo.git"),
        &work.path().join("clone"),
    );
    assert!(out.status.success(), "git clone failed: {out:?}");
    let readme = std::fs::read_to_string(work.path().join("clone/README")).unwrap();
    assert_eq!(readme, "hello from the fake forge\n");

    let audit = std::fs::read_to_string(proxy.path("state/audit.log")).unwrap();
    assert!(
        audit.contains("\"placeholders\":[\"git->authorization\"]"),
        "{audit}"
    );
    // The cloned repository remembers the placeholder, never the token.
    let config = std::fs::read_to_string(work.path().join("clone/.git/config")).unwrap();
    assert!(config.contains(&placeholder) && !config.contains(GIT_TOKEN));
}

//! examples/policies/git-push as shipped, through the proxy, against `git http-backend`: a
//! push's ref updates are read from the start of its body (issue 20), so a push to a feature
//! branch goes through, byte for byte (the forge accepts the pack), and a push to `main` is
//! refused with a reason naming the ref. The pack is large and incompressible, so git sends it
//! chunked; the policy reads bodies to the host, so git is offered HTTP/1.1 only, and the relay
//! reads the first 64 KiB for the decision and streams the rest.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::git::{bare_repo, spawn_git_server};
use support::{Proxy, test_pki};

/// Not a secret the proxy knows: the forge's password, in the URL.
const PASSWORD: &str = "push-password";

fn git(proxy: &Proxy, home: &Path, dir: &Path, args: &[&str]) -> Output {
    let out = Command::new("git")
        .current_dir(dir)
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_SSL_CAINFO", proxy.ca())
        .args(["-c", "credential.helper="])
        .arg("-c")
        .arg(format!("http.proxy=http://127.0.0.1:{}", proxy.explicit))
        // Bodies larger than this go chunked.
        .args(["-c", "http.postBuffer=70000"])
        .args([
            "-c",
            "user.name=Cordon Test",
            "-c",
            "user.email=test@cordon.invalid",
        ])
        .args(args)
        .output()
        .expect("git is installed by scripts/install-deps.sh");
    proxy.record(&out.stdout);
    proxy.record(&out.stderr);
    out
}

/// Bytes no compressor shrinks, so the pack stays larger than the proxy's 64 KiB read.
fn noise(len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[test]
fn pushes_are_decided_on_their_ref_updates() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let pki = test_pki(&["github.com"]);
    let repos = tempfile::tempdir().unwrap();
    bare_repo(repos.path(), "repo.git", "hello\n");
    let server = spawn_git_server(&pki, repos.path().to_path_buf(), "x-access-token", PASSWORD);
    let proxy = Proxy::start_bundle(
        &examples.join("policies/git-push"),
        server,
        &pki.ca_pem,
        &["github.com"],
        "",
        &[],
    );
    proxy.admin(
        "PUT",
        "/sessions/sesn_push",
        Some("{\"source\": \"127.0.0.1\"}"),
    );

    let work = tempfile::tempdir().unwrap();
    let url = format!("https://x-access-token:{PASSWORD}@github.com/repo.git");
    let out = git(
        &proxy,
        work.path(),
        work.path(),
        &["clone", "-q", &url, "clone"],
    );
    assert!(out.status.success(), "clone: {out:?}");
    let clone = work.path().join("clone");
    std::fs::write(clone.join("blob.bin"), noise(300 * 1024)).unwrap();
    for args in [
        &["checkout", "-q", "-b", "feature"][..],
        &["add", "blob.bin"],
        &["commit", "-q", "-m", "large"],
    ] {
        let out = git(&proxy, work.path(), &clone, args);
        assert!(out.status.success(), "{args:?}: {out:?}");
    }

    let out = git(
        &proxy,
        work.path(),
        &clone,
        &["push", "-q", "origin", "feature"],
    );
    assert!(
        out.status.success(),
        "push to a feature branch: {out:?}\n{:#?}",
        proxy.audit_records()
    );
    let out = git(
        &proxy,
        work.path(),
        &clone,
        &["push", "-q", "origin", "feature:main"],
    );
    assert!(!out.status.success(), "a push to main must fail: {out:?}");

    // The forge has the feature branch, pack and all, and main as it was.
    let bare = repos.path().join("repo.git");
    let show = |rev: &str| {
        let out = Command::new("git")
            .current_dir(&bare)
            .args(["rev-parse", rev])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let local = git(&proxy, work.path(), &clone, &["rev-parse", "HEAD"]);
    assert_eq!(
        show("refs/heads/feature"),
        String::from_utf8_lossy(&local.stdout).trim()
    );
    assert_ne!(show("refs/heads/main"), show("refs/heads/feature"));
    let fsck = Command::new("git")
        .current_dir(&bare)
        .args(["fsck", "--no-progress"])
        .output()
        .unwrap();
    assert!(fsck.status.success(), "{fsck:?}");

    let records = proxy.request_records(1);
    let pushes: Vec<_> = records
        .iter()
        .filter(|r| {
            r["path"]
                .as_str()
                .unwrap_or("")
                .ends_with("/git-receive-pack")
                && r["method"] == "POST"
        })
        .collect();
    // git probes a large push with a bodyless one first ("0000": no ref updates), which the
    // example lets through; the push itself is decided on its ref.
    let allowed = pushes
        .iter()
        .find(|r| r["reason"] == "git push to refs/heads/feature")
        .unwrap_or_else(|| panic!("{records:#?}"));
    assert_eq!(allowed["decision"], "allow", "{allowed}");
    // On the relay (HTTP/1.1): it read past max_bytes (by whole chunks), to know the body
    // goes on, and sent those bytes before the rest.
    assert_eq!(allowed["protocol"], "http1", "{allowed}");
    assert_eq!(allowed["body_truncated"], true, "{allowed}");
    assert!(allowed["body_read"].as_u64().unwrap() > 65536, "{allowed}");
    assert!(
        allowed["bytes_up"].as_u64().unwrap() > 300 * 1024,
        "{allowed}"
    );
    let denied = pushes
        .iter()
        .find(|r| r["decision"] == "deny")
        .unwrap_or_else(|| panic!("{records:#?}"));
    assert!(
        denied["reason"]
            .as_str()
            .unwrap()
            .contains("refs/heads/main"),
        "{denied}"
    );
}

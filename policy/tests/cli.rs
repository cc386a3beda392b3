//! The `cordon-policy` binary, driven as a user drives it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cordon-policy"))
        .args(args)
        .output()
        .expect("run cordon-policy")
}

fn examples(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/policies")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn stdout_json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn write(root: &Path, path: &str, content: &str) -> PathBuf {
    let full = root.join(path);
    std::fs::create_dir_all(full.parent().unwrap()).unwrap();
    std::fs::write(&full, content).unwrap();
    full
}

#[test]
fn eval_allows_a_registry_read_and_exits_zero() {
    let out = cli(&[
        "eval",
        "--bundle",
        &examples("agent-egress"),
        "--request",
        "GET https://pypi.org/simple/requests/",
        "--session",
        "sesn_1",
    ]);
    assert!(out.status.success(), "{out:?}");
    let decision = stdout_json(&out);
    assert_eq!(decision["allowed"], true, "{decision}");
    assert!(decision["http_status"].is_null());
    assert!(decision["reason"].as_str().unwrap().len() > 3);
    assert!(decision["generation"].as_str().is_some());
}

#[test]
fn eval_denies_with_a_reason_and_still_exits_zero() {
    let out = cli(&[
        "eval",
        "--bundle",
        &examples("agent-egress"),
        "--request",
        "POST https://exfil.example/upload",
        "--session",
        "sesn_1",
    ]);
    assert!(out.status.success(), "{out:?}");
    let decision = stdout_json(&out);
    assert_eq!(decision["allowed"], false);
    assert_eq!(decision["http_status"], 403);
    assert!(
        decision["reason"]
            .as_str()
            .unwrap()
            .contains("exfil.example"),
        "{decision}"
    );
}

#[test]
fn eval_names_the_credential_for_the_github_api() {
    let out = cli(&[
        "eval",
        "--bundle",
        &examples("agent-egress"),
        "--request",
        "GET https://api.github.com/repos/acme/widgets",
        "--session",
        "sesn_1",
    ]);
    let decision = stdout_json(&out);
    assert_eq!(decision["allowed"], true, "{decision}");
    assert_eq!(
        decision["inject"],
        serde_json::json!([{"secret": "github", "header": "authorization"}])
    );
}

#[test]
fn eval_unregistered_source_is_denied_by_the_example_policy() {
    let out = cli(&[
        "eval",
        "--bundle",
        &examples("agent-egress"),
        "--request",
        "GET https://pypi.org/simple/",
    ]);
    assert_eq!(stdout_json(&out)["allowed"], false);
}

#[test]
fn eval_runs_opa_envoy_policies_with_their_query() {
    let bundle = examples("opa-envoy");
    let ask = |method: &str, auth: &str| {
        let out = cli(&[
            "eval",
            "--bundle",
            &bundle,
            "--query",
            "data.envoy.authz.allow",
            "--request",
            &format!("{method} https://people.example/people"),
            "-H",
            &format!("Authorization: Basic {auth}"),
        ]);
        assert!(out.status.success(), "{out:?}");
        stdout_json(&out)["allowed"].as_bool().unwrap()
    };
    // alice is a guest, bob an admin (see examples/policies/opa-envoy).
    assert!(ask("GET", "YWxpY2U6cGFzc3dvcmQ="));
    assert!(!ask("POST", "YWxpY2U6cGFzc3dvcmQ="));
    assert!(ask("POST", "Ym9iOnBhc3N3b3Jk"));
}

#[test]
fn eval_takes_a_whole_input_document() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(
        dir.path(),
        "input.json",
        r#"{"attributes": {"request": {"http": {"method": "GET"}}}}"#,
    );
    write(
        dir.path(),
        "b/p.rego",
        "package cordon.egress\nimport rego.v1\ndecision := input.attributes.request.http.method == \"GET\"\n",
    );
    let out = cli(&[
        "eval",
        "--bundle",
        &dir.path().join("b").to_string_lossy(),
        "--input",
        &input.to_string_lossy(),
    ]);
    assert_eq!(stdout_json(&out)["allowed"], true, "{out:?}");
}

#[test]
fn eval_reports_a_broken_bundle_with_file_and_line_and_exits_two() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "cordon/bad.rego",
        "package cordon.egress\nimport rego.v1\n\ndecision := {\n",
    );
    let out = cli(&[
        "eval",
        "--bundle",
        &dir.path().to_string_lossy(),
        "--request",
        "GET https://x.example/",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cordon/bad.rego:"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn eval_rejects_a_malformed_request_and_exits_two() {
    for request in ["GET", "GET ftp://x/", "GET https://a b/"] {
        let out = cli(&[
            "eval",
            "--bundle",
            &examples("deny-all"),
            "--request",
            request,
        ]);
        assert_eq!(out.status.code(), Some(2), "{request}");
        assert!(!out.stderr.is_empty());
    }
}

#[test]
fn test_passes_every_example_bundle() {
    for bundle in ["deny-all", "agent-egress", "opa-envoy"] {
        let out = cli(&["test", &examples(bundle)]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{bundle}: {stdout}");
        let last = stdout.lines().last().unwrap();
        assert!(last.ends_with(" passed, 0 failed"), "{bundle}: {last}");
    }
}

#[test]
fn test_reports_failures_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "p.rego",
        "package cordon.egress\nimport rego.v1\ndefault decision := false\n",
    );
    write(
        dir.path(),
        "p_test.rego",
        "package cordon.egress_test\nimport rego.v1\n\
         test_denies if not data.cordon.egress.decision\n\
         test_wrongly_expects_allow if data.cordon.egress.decision with input as {}\n",
    );
    let out = cli(&["test", &dir.path().to_string_lossy()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL data.cordon.egress_test.test_wrongly_expects_allow"),
        "{stdout}"
    );
    assert_eq!(stdout.lines().last(), Some("1 passed, 1 failed"));
}

#[test]
fn check_accepts_the_examples_and_names_a_missing_query() {
    let out = cli(&["check", &examples("agent-egress")]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok:"));

    let out = cli(&["check", &examples("opa-envoy")]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("data.envoy.authz.allow"), "{stderr}");

    let out = cli(&[
        "check",
        &examples("opa-envoy"),
        "--query",
        "data.envoy.authz.allow",
    ]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn input_prints_the_document_the_policy_sees() {
    let out = cli(&[
        "input",
        "--request",
        "GET https://api.github.com/repos/o/r?a=1&a=2",
        "--session",
        "sesn_9",
        "--label",
        "team=infra",
    ]);
    let doc = stdout_json(&out);
    assert_eq!(
        doc["attributes"]["request"]["http"]["host"],
        "api.github.com"
    );
    assert_eq!(doc["parsed_query"]["a"], serde_json::json!(["1", "2"]));
    assert_eq!(doc["session"]["labels"]["team"], "infra");
    assert_eq!(doc["connection"]["sni"], "api.github.com");
}

#[test]
fn eval_decides_on_a_body_as_the_gateway_would() {
    let dir = tempfile::tempdir().unwrap();
    let call = write(
        dir.path(),
        "call.json",
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_repository"}}"#,
    );
    let list = write(
        dir.path(),
        "list.json",
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#,
    );
    let decide = |body: &Path| {
        let out = cli(&[
            "eval",
            "--bundle",
            &examples("mcp-tools"),
            "--request",
            "POST https://mcp.example.com/mcp",
            "-H",
            "Content-Type: application/json",
            "--session",
            "sesn_1",
            "--body",
            body.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{out:?}");
        stdout_json(&out)
    };
    let denied = decide(&call);
    assert_eq!(denied["allowed"], false);
    assert!(
        denied["reason"]
            .as_str()
            .unwrap()
            .contains("delete_repository"),
        "{denied}"
    );
    assert_eq!(decide(&list)["allowed"], true);

    // `input` shows the body fields, a body that is not what it claims included.
    let bad = write(dir.path(), "bad.json", "not json");
    let out = cli(&[
        "input",
        "--request",
        "POST https://mcp.example.com/mcp",
        "-H",
        "Content-Type: application/json",
        "--body",
        bad.to_str().unwrap(),
    ]);
    let input = stdout_json(&out);
    assert_eq!(
        input["cordon"]["body_error"]["kind"], "invalid_json",
        "{input}"
    );
    assert_eq!(input["attributes"]["request"]["http"]["body"], "not json");
    assert!(input.get("parsed_body").is_none(), "{input}");

    let missing = cli(&[
        "input",
        "--request",
        "POST https://mcp.example.com/mcp",
        "--body",
        "/nonexistent/cordon-body",
    ]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read --body"));
}

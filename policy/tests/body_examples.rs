//! The body-reading example bundles (examples/policies/{mcp-tools,model-api,graphql,git-push})
//! on documents built the way the proxy will build them, from raw bytes through
//! `BodyInput::parse`: their Rego tests build the body fields by hand, and this checks those
//! hand-built shapes are the ones Cordon produces. RVM and interpreter must agree.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use cordon_policy::bundle::OverLimit;
use cordon_policy::input::{BodyInput, BodyRequest};
use cordon_policy::{
    ConnectionInput, Generation, ListenerMode, PolicyConfig, PolicyInput, RequestInput,
    SessionInput, Stage, Transport,
};

fn generation(name: &str) -> Generation {
    let bundle = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/policies")
        .join(name);
    Generation::load(&PolicyConfig::new(bundle)).unwrap()
}

fn input(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    labels: &[(&str, &str)],
) -> PolicyInput {
    let request = RequestInput::from_url(
        method,
        url,
        headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
    .unwrap();
    let host = request.authority.clone();
    let mut session = SessionInput::named("sesn_1");
    session.labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    PolicyInput {
        stage: Stage::Request,
        connection: ConnectionInput {
            mode: ListenerMode::Explicit,
            transport: Transport::Tls,
            source: "10.200.0.2:40000".parse().unwrap(),
            original_destination: None,
            sni: Some(host.clone()),
            connect_target: Some(format!("{host}:443")),
            dns_name: None,
        },
        session,
        request: Some(request),
    }
}

/// The decision for `body`, read as the proxy will: only when the bundle wants bodies for the
/// host, within its limits. Returns (allowed, reason).
fn decide(generation: &Generation, input: &PolicyInput, body: &[u8]) -> (bool, String) {
    let request = input.request.as_ref().unwrap();
    let config = generation
        .request_body()
        .expect("the bundle asks for bodies");
    assert!(config.wants(&input.destination().unwrap().host));
    let body = BodyInput::parse(body, false, &BodyRequest::of(request), config.limits());
    let fast = generation.decide_with_body(input, &body);
    let slow = generation.decide_value_interpreted(input.to_value_with_body(Some(&body)));
    assert_eq!(fast, slow, "evaluators disagree on {body:?}");
    assert!(fast.failure.is_none(), "{fast:?}");
    (fast.is_allowed(), fast.reason.clone())
}

const JSON: (&str, &str) = ("content-type", "application/json");

#[test]
fn mcp_tools_decides_real_jsonrpc_bodies() {
    let g = generation("mcp-tools");
    let mcp = input("POST", "https://mcp.example.com/mcp", &[JSON], &[]);
    let call = |name: &str| {
        format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{name}"}}}}"#)
    };
    assert!(
        decide(
            &g,
            &mcp,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#
        )
        .0
    );
    assert!(decide(&g, &mcp, call("search_issues").as_bytes()).0);
    let (allowed, reason) = decide(&g, &mcp, call("delete_repository").as_bytes());
    assert!(!allowed);
    assert_eq!(
        reason,
        r#"MCP tool "delete_repository" is not allowed on mcp.example.com"#
    );
    let batch = format!(
        r#"[{{"jsonrpc":"2.0","id":1,"method":"tools/list"}}, {}]"#,
        call("push_files")
    );
    let (allowed, reason) = decide(&g, &mcp, batch.as_bytes());
    assert!(!allowed);
    assert!(reason.contains("push_files"), "{reason}");
    assert!(!decide(&g, &mcp, b"{not json").0);
    assert!(
        decide(
            &g,
            &mcp,
            br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#
        )
        .0
    );
    assert!(!g.request_body().unwrap().wants("pypi.org"));
}

#[test]
fn model_api_reads_the_model_from_real_bodies() {
    let g = generation("model-api");
    let messages = input(
        "POST",
        "https://api.anthropic.com/v1/messages",
        &[JSON],
        &[],
    );
    let body = |model: &str| {
        format!(
            r#"{{"model":"{model}","max_tokens":64,"messages":[{{"role":"user","content":"hi"}}]}}"#
        )
    };
    assert!(decide(&g, &messages, body("claude-sonnet-4-5").as_bytes()).0);
    let (allowed, reason) = decide(&g, &messages, body("claude-opus-4-1").as_bytes());
    assert!(!allowed);
    assert_eq!(
        reason,
        r#"model "claude-opus-4-1" is not allowed on api.anthropic.com"#
    );
    assert_eq!(g.request_body().unwrap().over_limit, OverLimit::Deny);
}

#[test]
fn graphql_decides_real_graphql_bodies() {
    let g = generation("graphql");
    let url = "https://api.github.com/graphql";
    let reader = input("POST", url, &[JSON], &[]);
    let writer = input("POST", url, &[JSON], &[("graphql-write", "true")]);
    let query = br#"{"query":"query Viewer { viewer { login } }","variables":{}}"#;
    let mutation =
        br#"{"query":"mutation { addStar(input: {starrableId: \"x\"}) { clientMutationId } }"}"#;
    assert_eq!(
        decide(&g, &reader, query),
        (true, "GraphQL query viewer".into())
    );
    let (allowed, reason) = decide(&g, &reader, mutation);
    assert!(!allowed);
    assert!(reason.contains("graphql-write=true"), "{reason}");
    assert!(decide(&g, &writer, mutation).0);
    // The alias does not hide the mutation's field from the reason.
    let aliased =
        br#"{"query":"mutation { harmless: deleteRepository(input: {}) { clientMutationId } }"}"#;
    assert_eq!(
        decide(&g, &writer, aliased),
        (true, "GraphQL mutation deleteRepository".into())
    );
    let (allowed, reason) = decide(&g, &reader, br#"{"query":"mutation {"}"#);
    assert!(!allowed);
    assert!(reason.contains("GraphQL syntax error"), "{reason}");
}

fn push_body(commands: &[(&str, &str, &str)], pack_len: usize) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, (old, new, reference)) in commands.iter().enumerate() {
        let caps = if i == 0 {
            "\0report-status side-band-64k"
        } else {
            ""
        };
        let line = format!("{old} {new} {reference}{caps}\n");
        body.extend(format!("{:04x}{line}", line.len() + 4).into_bytes());
    }
    body.extend(b"0000PACK");
    body.resize(body.len() + pack_len, 0xA5);
    body
}

#[test]
fn git_push_reads_real_receive_pack_bodies_even_past_the_limit() {
    let g = generation("git-push");
    let push = input(
        "POST",
        "https://github.com/acme/widgets.git/git-receive-pack",
        &[("content-type", "application/x-git-receive-pack-request")],
        &[],
    );
    let (zero, a, b) = ("0".repeat(40), "a".repeat(40), "b".repeat(40));
    let config = g.request_body().unwrap();
    assert_eq!(config.over_limit, OverLimit::Deny);
    assert_eq!(
        config.over_limit_for("POST", "/acme/widgets.git/git-receive-pack"),
        OverLimit::Truncate
    );
    // A 1 MiB pack: the body is cut at max_bytes and the commands are still read.
    let feature = push_body(&[(&a, &b, "refs/heads/feature")], 1 << 20);
    assert_eq!(
        decide(&g, &push, &feature),
        (true, "git push to refs/heads/feature".into())
    );
    let main = push_body(
        &[
            (&a, &b, "refs/heads/feature"),
            (&a, &zero, "refs/heads/main"),
        ],
        64,
    );
    assert_eq!(
        decide(&g, &push, &main),
        (false, "git push may not delete refs/heads/main".into())
    );
    assert!(!decide(&g, &push, b"junk").0);
}

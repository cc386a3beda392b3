//! OPA-Envoy policies that read request bodies, written as opa-envoy-plugin's documentation
//! and source describe the input (`input.parsed_body`, `input.truncated_body`,
//! `input.attributes.request.http.body`, the `x-envoy-auth-partial-body` header), run
//! unchanged through the engine on inputs built the way the proxy will build them: a
//! `RequestInput` and the buffered bytes through `BodyInput::parse`. Every decision is taken on
//! the RVM and the interpreter, which must agree.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;

use cordon_policy::input::{BodyInput, BodyRequest, ConnectionDocument};
use cordon_policy::{
    ConnectionInput, Generation, ListenerMode, PolicyConfig, PolicyInput, RequestInput,
    SessionInput, Stage, Transport,
};

/// The policies, pre-1.0 syntax as OPA-Envoy tutorials write them.
const AUTHZ: &str = r#"package envoy.authz

import input.attributes.request.http as http_request

default allow = false

# Truncated bodies are never decided on (opa-envoy-plugin sets truncated_body from Envoy's
# x-envoy-auth-partial-body header).
allow {
	not input.truncated_body
	action_allowed
}

action_allowed {
	http_request.method == "GET"
	glob.match("/people*", [], http_request.path)
}

# Only alice may create people, and only people named after her (the OPA-Envoy tutorial's
# "parsed_body.firstname" check, with the user from a header instead of a JWT).
action_allowed {
	http_request.method == "POST"
	http_request.path == "/people"
	user := http_request.headers["x-user"]
	user == "alice"
	lower(input.parsed_body.firstname) == user
}

# OAuth token requests: form bodies, values are arrays of strings.
action_allowed {
	http_request.method == "POST"
	http_request.path == "/oauth/token"
	input.parsed_body.grant_type == ["client_credentials"]
	count(input.parsed_body.scope) == 1
}

# Raw body inspection for content types nothing parses.
action_allowed {
	http_request.method == "POST"
	http_request.path == "/sql"
	not contains(upper(http_request.body), "DROP TABLE")
}
"#;

const CONNECT: &str = r#"package envoy.authz

allow {
	input.connection.stage == "connect"
}
"#;

/// A partial-body check on the header alone, as some OPA-Envoy policies do.
const HEADER_POLICY: &str = r#"package envoy.partial

import rego.v1

default allow := false

allow if {
	input.attributes.request.http.headers["x-envoy-auth-partial-body"] == "false"
	is_object(input.parsed_body)
}
"#;

fn bundle() -> (tempfile::TempDir, Generation, Generation) {
    let dir = tempfile::tempdir().unwrap();
    let write = |path: &str, text: &str| {
        let full = dir.path().join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, text).unwrap();
    };
    write("envoy/authz/policy.rego", AUTHZ);
    write("envoy/authz/cordon.rego", CONNECT);
    write(
        ".manifest",
        r#"{"rego_version": 0, "metadata": {"cordon": {"request_body": {"max_bytes": 1024, "over_limit": "truncate"}}}}"#,
    );
    let mut config = PolicyConfig::new(dir.path());
    config.query = "data.envoy.authz.allow".into();
    let authz = Generation::load(&config).unwrap();

    let header_dir = dir.path().join("partial");
    std::fs::create_dir_all(&header_dir).unwrap();
    std::fs::write(header_dir.join("policy.rego"), HEADER_POLICY).unwrap();
    let mut config = PolicyConfig::new(&header_dir);
    config.query = "data.envoy.partial.allow".into();
    let header = Generation::load(&config).unwrap();
    (dir, authz, header)
}

fn input(method: &str, url: &str, headers: &[(&str, &str)]) -> PolicyInput {
    let request = RequestInput::from_url(
        method,
        url,
        headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
    .unwrap();
    PolicyInput {
        stage: Stage::Request,
        connection: ConnectionInput {
            mode: ListenerMode::Explicit,
            transport: Transport::Tls,
            source: "10.200.0.2:40000".parse().unwrap(),
            original_destination: None,
            sni: Some("people.internal.example".into()),
            connect_target: Some("people.internal.example:443".into()),
            dns_name: None,
        },
        session: SessionInput::named("sesn_1"),
        request: Some(request),
    }
}

/// Decides `body` for `input` with `generation`, on both evaluators; returns `allowed`.
fn decide(generation: &Generation, input: &PolicyInput, body: &[u8]) -> bool {
    let request = input.request.as_ref().unwrap();
    let limits = generation
        .request_body()
        .map(|c| c.limits())
        .unwrap_or_default();
    let body = BodyInput::parse(body, false, &BodyRequest::of(request), limits);
    let fast = generation.decide_with_body(input, &body);
    let slow = generation.decide_value_interpreted(input.to_value_with_body(Some(&body)));
    assert_eq!(fast, slow, "evaluators disagree on {body:?}");
    // The proxy's per-connection path gives the same decision.
    let connection = ConnectionDocument::new(&input.connection, &input.session);
    assert_eq!(
        generation.decide_request_with_body(&connection, request, &body),
        fast
    );
    assert!(fast.failure.is_none(), "{fast:?}");
    fast.is_allowed()
}

const JSON: (&str, &str) = ("content-type", "application/json");
const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

#[test]
fn the_manifest_opt_in_reaches_the_generation() {
    let (_dir, authz, header) = bundle();
    let config = authz.request_body().unwrap();
    assert_eq!(config.max_bytes, 1024);
    assert_eq!(header.request_body(), None);
}

#[test]
fn parsed_body_json_fields_decide() {
    let (_dir, authz, _) = bundle();
    let alice = input(
        "POST",
        "https://people.internal.example/people",
        &[JSON, ("x-user", "alice")],
    );
    assert!(decide(
        &authz,
        &alice,
        br#"{"firstname": "Alice", "lastname": "A"}"#
    ));
    assert!(!decide(&authz, &alice, br#"{"firstname": "Bob"}"#));
    // Not JSON: parsed_body is absent (opa-envoy-plugin would fail the whole request).
    assert!(!decide(&authz, &alice, br#"{"firstname": "Alice""#));
    let bob = input(
        "POST",
        "https://people.internal.example/people",
        &[JSON, ("x-user", "bob")],
    );
    assert!(!decide(&authz, &bob, br#"{"firstname": "Bob"}"#));
}

#[test]
fn gzip_json_bodies_are_read_decoded() {
    let (_dir, authz, _) = bundle();
    let alice = input(
        "POST",
        "https://people.internal.example/people",
        &[JSON, ("x-user", "alice"), ("content-encoding", "gzip")],
    );
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(br#"{"firstname": "alice"}"#).unwrap();
    assert!(decide(&authz, &alice, &gz.finish().unwrap()));
}

#[test]
fn form_values_are_arrays_of_strings() {
    let (_dir, authz, _) = bundle();
    let token = input(
        "POST",
        "https://people.internal.example/oauth/token",
        &[FORM],
    );
    assert!(decide(
        &authz,
        &token,
        b"grant_type=client_credentials&scope=read"
    ));
    assert!(!decide(&authz, &token, b"grant_type=password&scope=read"));
    assert!(!decide(
        &authz,
        &token,
        b"grant_type=client_credentials&scope=read&scope=admin"
    ));
}

#[test]
fn the_raw_body_string_is_readable_for_any_content_type() {
    let (_dir, authz, _) = bundle();
    let sql = input(
        "POST",
        "https://people.internal.example/sql",
        &[("content-type", "application/sql")],
    );
    assert!(decide(&authz, &sql, b"SELECT * FROM people"));
    assert!(!decide(&authz, &sql, b"select 1; drop table people"));
}

#[test]
fn truncated_bodies_are_not_decided_on() {
    let (_dir, authz, _) = bundle();
    let alice = input(
        "POST",
        "https://people.internal.example/people",
        &[JSON, ("x-user", "alice")],
    );
    let padding = "x".repeat(2000);
    let body = format!(r#"{{"firstname": "alice", "note": "{padding}"}}"#);
    assert!(!decide(&authz, &alice, body.as_bytes()));
    // A GET with no body at all is still decided (truncated_body is false).
    let get = input("GET", "https://people.internal.example/people?page=2", &[]);
    assert!(decide(&authz, &get, b""));
}

#[test]
fn the_partial_body_header_is_the_proxys_not_the_clients() {
    let (_dir, _, header) = bundle();
    let lying = input(
        "POST",
        "https://people.internal.example/x",
        &[JSON, ("x-envoy-auth-partial-body", "false")],
    );
    assert!(decide(&header, &lying, br#"{"a": 1}"#));
    let request = lying.request.as_ref().unwrap();
    let limits = cordon_policy::input::BodyLimits {
        max_bytes: 4,
        max_decoded_bytes: 4,
    };
    let cut = BodyInput::parse(br#"{"a": 1}"#, false, &BodyRequest::of(request), limits);
    assert!(!header.decide_with_body(&lying, &cut).is_allowed());
}

#[test]
fn connect_stage_documents_are_unaffected() {
    let (_dir, authz, _) = bundle();
    let mut connect = input("GET", "https://people.internal.example/", &[]);
    connect.stage = Stage::Connect;
    connect.request = None;
    assert!(authz.decide(&connect).is_allowed());
}

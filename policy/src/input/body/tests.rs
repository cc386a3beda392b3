use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;
use regorus::Value;

use super::*;

fn request<'a>(method: &'a str, path: &'a str, content_type: Option<&'a str>) -> BodyRequest<'a> {
    BodyRequest {
        method: method.into(),
        path: path.into(),
        content_type: content_type.map(Into::into),
        content_encoding: None,
    }
}

fn json_request(path: &str) -> BodyRequest<'_> {
    request("POST", path, Some("application/json"))
}

fn parse(body: &[u8], request: &BodyRequest<'_>) -> BodyInput {
    BodyInput::parse(body, false, request, BodyLimits::default())
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn error_kind(input: &BodyInput) -> Option<&'static str> {
    input.error.as_ref().map(|e| e.kind.as_str())
}

fn json(value: &Value) -> serde_json::Value {
    serde_json::to_value(value).unwrap()
}

// --- text and parsed_body -------------------------------------------------------------------

#[test]
fn json_bodies_are_parsed_and_kept_as_text() {
    let body = br#"{"model": "claude-sonnet-4-5", "max_tokens": 1024}"#;
    let input = parse(body, &json_request("/v1/messages"));
    assert_eq!(input.text.as_bytes(), body);
    assert!(!input.truncated);
    assert_eq!(input.error, None);
    let Some(ParsedBody::Json(document)) = &input.parsed else {
        panic!("{input:?}");
    };
    assert_eq!(json(document)["model"], "claude-sonnet-4-5");
}

#[test]
fn json_content_types_match_by_essence_and_suffix() {
    for content_type in [
        "application/json",
        "Application/JSON; charset=utf-8",
        "application/vnd.api+json",
    ] {
        let input = parse(b"[1]", &request("POST", "/", Some(content_type)));
        assert!(input.parsed.is_some(), "{content_type}");
    }
    for content_type in [
        "text/plain; x=application/json",
        "application/jsonl",
        "text/json",
    ] {
        let input = parse(b"[1]", &request("POST", "/", Some(content_type)));
        assert_eq!(input.parsed, None, "{content_type}");
        assert_eq!(input.error, None, "{content_type}");
    }
    assert_eq!(parse(b"[1]", &request("POST", "/", None)).parsed, None);
}

#[test]
fn a_body_that_claims_json_but_is_not_has_no_parsed_body_and_says_why() {
    let input = parse(b"{\"model\": ", &json_request("/v1/messages"));
    assert_eq!(input.parsed, None);
    assert_eq!(error_kind(&input), Some("invalid_json"));
    let message = input.error.unwrap().message;
    assert!(message.contains("content type is JSON"), "{message}");
}

#[test]
fn json_that_is_not_utf8_is_invalid_rather_than_read_with_replacements() {
    let input = parse(b"{\"a\": \"\xff\"}", &json_request("/"));
    assert_eq!(input.parsed, None);
    assert_eq!(error_kind(&input), Some("invalid_json"));
    assert_eq!(input.text, "{\"a\": \"!\"}");
}

#[test]
fn invalid_utf8_bytes_become_one_bang_each_as_envoy_sends_them() {
    let body = b"ok \xe2\x9c\x93 \xff\xfe \xe2\x9c";
    let input = parse(body, &request("POST", "/", None));
    assert_eq!(input.text, "ok \u{2713} !! !!");
    assert_eq!(input.text.len(), body.len());
}

#[test]
fn an_empty_json_body_is_not_an_error() {
    let input = parse(b"", &json_request("/"));
    assert_eq!(input.parsed, None);
    assert_eq!(input.error, None);
    assert_eq!(input.text, "");
}

#[test]
fn form_bodies_give_arrays_of_strings_like_go() {
    let input = parse(
        b"a=1&b=x+y&a=2&flag&c=%2F%E2%9C%93&&=empty",
        &request("POST", "/login", Some("application/x-www-form-urlencoded")),
    );
    let Some(ParsedBody::Form(fields)) = &input.parsed else {
        panic!("{input:?}");
    };
    assert_eq!(fields["a"], ["1", "2"]);
    assert_eq!(fields["b"], ["x y"]);
    assert_eq!(fields["flag"], [""]);
    assert_eq!(fields["c"], ["/\u{2713}"]);
    assert_eq!(fields[""], ["empty"]);
    assert_eq!(fields.len(), 5);
}

#[test]
fn form_bodies_go_refuses_are_left_unparsed_with_the_reason() {
    let form = Some("application/x-www-form-urlencoded");
    for body in [&b"a=1;b=2"[..], b"a=%zz", b"a=%4"] {
        let input = parse(body, &request("POST", "/", form));
        assert_eq!(input.parsed, None, "{body:?}");
        assert_eq!(error_kind(&input), Some("invalid_form"), "{body:?}");
    }
}

// --- limits and encodings -------------------------------------------------------------------

#[test]
fn a_body_over_the_limit_is_truncated_and_not_parsed() {
    let limits = BodyLimits {
        max_bytes: 8,
        max_decoded_bytes: 8,
    };
    let body = br#"[{"jsonrpc": "2.0", "method": "tools/list", "id": 1}]"#;
    let input = BodyInput::parse(body, false, &json_request("/mcp"), limits);
    assert!(input.truncated);
    assert_eq!(input.text, r#"[{"jsonr"#);
    assert_eq!(input.parsed, None);
    assert_eq!(input.jsonrpc, None);
    assert_eq!(error_kind(&input), Some("too_large"));
}

#[test]
fn a_body_the_proxy_stopped_reading_is_truncated() {
    let input = BodyInput::parse(
        br#"{"a": 1}"#,
        true,
        &json_request("/"),
        BodyLimits::default(),
    );
    assert!(input.truncated);
    assert_eq!(input.parsed, None);
    assert_eq!(error_kind(&input), Some("too_large"));
}

#[test]
fn gzip_bodies_are_decoded_for_the_policy() {
    let body = gzip(br#"{"model": "gpt-5"}"#);
    let mut request = json_request("/v1/chat/completions");
    request.content_encoding = Some("gzip".into());
    let input = parse(&body, &request);
    assert_eq!(input.error, None);
    assert_eq!(input.text, r#"{"model": "gpt-5"}"#);
    assert!(input.parsed.is_some());
}

#[test]
fn every_gzip_member_is_decoded() {
    let mut body = gzip(b"[1,");
    body.extend(gzip(b"2]"));
    let mut request = json_request("/");
    request.content_encoding = Some("gzip".into());
    let input = parse(&body, &request);
    assert_eq!(input.text, "[1,2]");
}

#[test]
fn a_gzip_bomb_stops_at_the_decoded_limit() {
    // 64 MiB of zeros compresses to about 64 KiB.
    let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
    let zeros = vec![0u8; 1024 * 1024];
    for _ in 0..64 {
        encoder.write_all(&zeros).unwrap();
    }
    let bomb = encoder.finish().unwrap();
    let limits = BodyLimits {
        max_bytes: bomb.len(),
        max_decoded_bytes: 256 * 1024,
    };
    let mut request = json_request("/");
    request.content_encoding = Some("gzip".into());
    let input = BodyInput::parse(&bomb, false, &request, limits);
    assert_eq!(error_kind(&input), Some("decoded_too_large"));
    assert!(input.truncated);
    assert_eq!(input.text.len(), 256 * 1024);
    assert_eq!(input.parsed, None);
}

#[test]
fn bad_and_unknown_encodings_leave_the_body_out() {
    let mut request = json_request("/");
    request.content_encoding = Some("gzip".into());
    let input = parse(b"{\"not\": \"gzip\"}", &request);
    assert_eq!(error_kind(&input), Some("invalid_encoding"));
    assert_eq!((input.text.as_str(), &input.parsed), ("", &None));

    for encoding in ["br", "zstd", "gzip, gzip"] {
        request.content_encoding = Some(encoding.into());
        let input = parse(b"{}", &request);
        assert_eq!(
            error_kind(&input),
            Some("unsupported_encoding"),
            "{encoding}"
        );
    }
    request.content_encoding = Some("identity".into());
    assert!(parse(b"{}", &request).parsed.is_some());
}

#[test]
fn a_truncated_gzip_body_shows_its_decoded_prefix() {
    let body = gzip(&[b'x'; 10_000]);
    let mut request = request("POST", "/", Some("text/plain"));
    request.content_encoding = Some("gzip".into());
    let limits = BodyLimits {
        max_bytes: body.len() - 8,
        max_decoded_bytes: 20_000,
    };
    let input = BodyInput::parse(&body, false, &request, limits);
    assert!(input.truncated);
    assert_eq!(error_kind(&input), Some("too_large"));
    assert!(input.text.bytes().all(|b| b == b'x'));
}

#[test]
fn body_request_reads_content_headers_of_a_request() {
    let request = RequestInput::from_url(
        "POST",
        "https://mcp.example.com/mcp",
        vec![
            ("Content-Type".into(), "application/json".into()),
            ("content-encoding".into(), "gzip".into()),
            ("Content-Encoding".into(), "br".into()),
        ],
    )
    .unwrap();
    let body = BodyRequest::of(&request);
    assert_eq!(body.content_type.as_deref(), Some("application/json"));
    assert_eq!(body.content_encoding.as_deref(), Some("gzip,br"));
    assert_eq!(body.path, "/mcp");
}

// --- JSON-RPC -------------------------------------------------------------------------------

#[test]
fn an_mcp_tools_call_is_a_jsonrpc_request_with_its_tool_name() {
    let body = br#"{"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                    "params": {"name": "search_issues", "arguments": {"q": "bug"}}}"#;
    let input = parse(body, &json_request("/mcp"));
    let Some(JsonRpc::Single(call)) = &input.jsonrpc else {
        panic!("{input:?}");
    };
    assert_eq!(call.kind, JsonRpcKind::Request);
    assert_eq!(call.method.as_deref(), Some("tools/call"));
    assert_eq!(call.id, Some(Value::from(7u64)));
    assert_eq!(json(call.params.as_ref().unwrap())["name"], "search_issues");
}

#[test]
fn notifications_responses_and_non_jsonrpc_bodies() {
    let note = parse(
        br#"{"jsonrpc": "2.0", "method": "notifications/initialized"}"#,
        &json_request("/mcp"),
    );
    let Some(JsonRpc::Single(m)) = &note.jsonrpc else {
        panic!()
    };
    assert_eq!(m.kind, JsonRpcKind::Notification);
    assert_eq!(m.id, None);

    let answer = parse(
        br#"{"jsonrpc": "2.0", "id": "s1", "result": {}}"#,
        &json_request("/mcp"),
    );
    let Some(JsonRpc::Single(m)) = &answer.jsonrpc else {
        panic!()
    };
    assert_eq!(m.kind, JsonRpcKind::Response);

    for body in [
        &br#"{"jsonrpc": "1.0", "method": "x", "id": 1}"#[..],
        br#"{"method": "x", "id": 1}"#,
        br#"[]"#,
        br#"[1, 2]"#,
        br#""jsonrpc""#,
    ] {
        assert_eq!(parse(body, &json_request("/")).jsonrpc, None, "{body:?}");
    }
}

#[test]
fn a_batch_lists_every_call_including_the_ones_a_policy_would_deny() {
    let body = br#"[
        {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "delete_repo"}},
        {"jsonrpc": "2.0", "id": 3, "method": 42},
        "junk"
    ]"#;
    let input = parse(body, &json_request("/mcp"));
    let Some(JsonRpc::Batch(batch)) = &input.jsonrpc else {
        panic!("{input:?}");
    };
    let kinds: Vec<_> = batch.iter().map(|m| m.kind).collect();
    assert_eq!(
        kinds,
        [
            JsonRpcKind::Request,
            JsonRpcKind::Request,
            JsonRpcKind::Invalid,
            JsonRpcKind::Invalid
        ]
    );
    assert_eq!(batch[1].method.as_deref(), Some("tools/call"));
}

// --- GraphQL --------------------------------------------------------------------------------

fn graphql_single(input: &BodyInput) -> &GraphQlRequest {
    match &input.graphql {
        Some(GraphQl::Single(request)) => request,
        other => panic!("{other:?} {:?}", input.error),
    }
}

#[test]
fn graphql_json_requests_name_the_operation_and_its_top_level_fields() {
    let body = br#"{"query": "query Viewer { viewer { login } rateLimit { remaining } }",
                    "variables": {}}"#;
    let input = parse(body, &json_request("/graphql"));
    let request = graphql_single(&input);
    let op = request.operation.as_ref().unwrap();
    assert_eq!(op.operation_type, GraphQlOperationType::Query);
    assert_eq!(op.name.as_deref(), Some("Viewer"));
    assert_eq!(op.fields, ["viewer", "rateLimit"]);
    assert_eq!(request.operations.len(), 1);
}

#[test]
fn the_query_shorthand_is_a_query_and_aliases_resolve_to_field_names() {
    let input = parse(
        br#"{"query": "{ safe: deleteRepository(id: 1) { id } }"}"#,
        &json_request("/graphql"),
    );
    let op = graphql_single(&input).operation.clone().unwrap();
    assert_eq!(op.operation_type, GraphQlOperationType::Query);
    assert_eq!(op.name, None);
    assert_eq!(op.fields, ["deleteRepository"]);
}

#[test]
fn operation_name_selects_among_several_operations() {
    let query = "query A { a } mutation B { createIssue(title: \\\"x\\\") { id } }";
    let with_name = format!(r#"{{"query": "{query}", "operationName": "B"}}"#);
    let input = parse(with_name.as_bytes(), &json_request("/graphql"));
    let request = graphql_single(&input);
    let op = request.operation.as_ref().unwrap();
    assert_eq!(op.operation_type, GraphQlOperationType::Mutation);
    assert_eq!(op.fields, ["createIssue"]);
    assert_eq!(request.operations.len(), 2);

    // Without operationName the server cannot tell which runs: no `operation`.
    let without = format!(r#"{{"query": "{query}"}}"#);
    let input = parse(without.as_bytes(), &json_request("/graphql"));
    assert_eq!(graphql_single(&input).operation, None);
    // An operationName that names nothing runs nothing.
    let unknown = format!(r#"{{"query": "{query}", "operationName": "C"}}"#);
    let input = parse(unknown.as_bytes(), &json_request("/graphql"));
    assert_eq!(graphql_single(&input).operation, None);
}

#[test]
fn fields_are_found_through_fragments_and_fragment_cycles_end() {
    let query = "mutation M { ...F ... on Mutation { deleteIssue { id } } } \
                 fragment F on Mutation { createIssue { id } ...G } \
                 fragment G on Mutation { closeIssue { id } ...F }";
    let body = serde_json::json!({ "query": query }).to_string();
    let input = parse(body.as_bytes(), &json_request("/graphql"));
    let mut fields = graphql_single(&input).operation.clone().unwrap().fields;
    fields.sort();
    assert_eq!(fields, ["closeIssue", "createIssue", "deleteIssue"]);
}

#[test]
fn application_graphql_bodies_take_operation_name_from_the_query_string() {
    let input = parse(
        b"query A { a } subscription B { events { id } }",
        &request(
            "POST",
            "/graphql?operationName=B",
            Some("application/graphql"),
        ),
    );
    let op = graphql_single(&input).operation.clone().unwrap();
    assert_eq!(op.operation_type, GraphQlOperationType::Subscription);
}

#[test]
fn bad_graphql_is_an_error_on_a_graphql_path_and_ignored_elsewhere() {
    let body = br#"{"query": "mutation { createIssue("}"#;
    let input = parse(body, &json_request("/api/graphql"));
    assert_eq!(input.graphql, None);
    assert_eq!(error_kind(&input), Some("invalid_graphql"));
    assert!(input.parsed.is_some(), "the JSON is still parsed_body");

    let search = parse(br#"{"query": "red shoes"}"#, &json_request("/search"));
    assert_eq!(search.graphql, None);
    assert_eq!(search.error, None);
}

#[test]
fn deeply_nested_graphql_is_refused_not_a_stack_overflow() {
    let query = format!("{{{}{}", "a {".repeat(5_000), "}".repeat(5_001));
    let body = serde_json::json!({ "query": query }).to_string();
    let input = parse(body.as_bytes(), &json_request("/graphql"));
    assert_eq!(error_kind(&input), Some("invalid_graphql"));
}

#[test]
fn a_graphql_batch_lists_every_request_and_a_bad_element_spoils_it() {
    let body = br#"[{"query": "{ viewer { login } }"}, {"query": "mutation { deleteRepo }"}]"#;
    let input = parse(body, &json_request("/graphql"));
    let Some(GraphQl::Batch(batch)) = &input.graphql else {
        panic!("{input:?}");
    };
    assert_eq!(batch.len(), 2);
    assert_eq!(
        batch[1].operation.as_ref().unwrap().operation_type,
        GraphQlOperationType::Mutation
    );

    let mixed = br#"[{"query": "{ viewer { login } }"}, {"persisted": "abc"}]"#;
    let input = parse(mixed, &json_request("/graphql"));
    assert_eq!(input.graphql, None);
    assert_eq!(error_kind(&input), Some("invalid_graphql"));
}

// --- git receive-pack -----------------------------------------------------------------------

const ZERO: &str = "0000000000000000000000000000000000000000";
const A: &str = "1111111111111111111111111111111111111111";
const B: &str = "2222222222222222222222222222222222222222";

fn pkt(line: &str) -> Vec<u8> {
    let mut out = format!("{:04x}", line.len() + 4).into_bytes();
    out.extend(line.as_bytes());
    out
}

fn push_body(lines: &[String], pack: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for line in lines {
        body.extend(pkt(line));
    }
    body.extend(b"0000");
    body.extend(pack);
    body
}

fn receive_pack() -> BodyRequest<'static> {
    request(
        "POST",
        "/acme/widgets.git/git-receive-pack",
        Some("application/x-git-receive-pack-request"),
    )
}

#[test]
fn a_push_lists_its_ref_updates_creates_and_deletes() {
    let body = push_body(
        &[
            format!("{A} {B} refs/heads/main\0report-status side-band-64k agent=git/2.47\n"),
            format!("{ZERO} {B} refs/heads/feature\n"),
            format!("{A} {ZERO} refs/tags/v1\n"),
        ],
        b"PACK\x00\x00\x00\x02\xff\xfe",
    );
    let input = parse(&body, &receive_pack());
    assert_eq!(input.error, None);
    let push = input.git.unwrap();
    let summary: Vec<_> = push
        .commands
        .iter()
        .map(|c| (c.reference.as_str(), c.action()))
        .collect();
    assert_eq!(
        summary,
        [
            ("refs/heads/main", GitRefAction::Update),
            ("refs/heads/feature", GitRefAction::Create),
            ("refs/tags/v1", GitRefAction::Delete),
        ]
    );
    assert_eq!(push.commands[0].old, A);
}

#[test]
fn push_commands_are_read_from_a_prefix_when_their_flush_arrived() {
    let body = push_body(
        &[format!("{A} {B} refs/heads/main\0report-status\n")],
        &[7; 4096],
    );
    let limits = BodyLimits {
        max_bytes: 200,
        max_decoded_bytes: 200,
    };
    let input = BodyInput::parse(&body, false, &receive_pack(), limits);
    assert!(input.truncated);
    assert_eq!(input.git.unwrap().commands.len(), 1);

    // Cut inside the command list: no commands, and the policy knows the body was cut.
    let limits = BodyLimits {
        max_bytes: 60,
        max_decoded_bytes: 60,
    };
    let input = BodyInput::parse(&body, false, &receive_pack(), limits);
    assert_eq!(input.git, None);
    assert_eq!(error_kind(&input), Some("too_large"));
}

#[test]
fn signed_pushes_and_shallow_lines_are_understood() {
    let body = push_body(
        &[
            format!("shallow {A}\n"),
            "push-cert\0report-status\n".to_string(),
            "certificate version 0.1\n".to_string(),
            "pusher A U Thor <a@example.com> 1700000000 +0000\n".to_string(),
            "\n".to_string(),
            format!("{A} {B} refs/heads/main\n"),
            "-----BEGIN PGP SIGNATURE-----\n".to_string(),
            "push-cert-end\n".to_string(),
        ],
        b"",
    );
    let input = parse(&body, &receive_pack());
    let commands = input.git.unwrap().commands;
    assert_eq!(commands.len(), 1);
    assert_eq!(commands[0].reference, "refs/heads/main");
}

#[test]
fn malformed_pkt_lines_are_a_git_error() {
    for body in [
        b"zzzz".to_vec(),
        b"0001".to_vec(),
        push_body(&["not a command\n".to_string()], b""),
        pkt(&format!("{A} {B} refs/heads/main\n")),
    ] {
        let input = parse(&body, &receive_pack());
        assert_eq!(input.git, None, "{body:?}");
        assert_eq!(error_kind(&input), Some("invalid_git"), "{body:?}");
    }
    // Not a push: nothing is read as git.
    let fetch = request("POST", "/acme/widgets.git/git-upload-pack", None);
    assert_eq!(parse(b"0000", &fetch).git, None);
}

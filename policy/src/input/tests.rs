use std::net::SocketAddr;

use super::*;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn request(path: &str, headers: &[(&str, &str)]) -> PolicyInput {
    PolicyInput {
        stage: Stage::Request,
        connection: ConnectionInput {
            mode: ListenerMode::Transparent,
            transport: Transport::Tls,
            source: addr("10.200.0.2:50000"),
            original_destination: Some(addr("192.0.2.10:443")),
            sni: Some("api.github.com".into()),
            connect_target: None,
            dns_name: None,
        },
        session: SessionInput::named("sesn_1"),
        request: Some(RequestInput {
            id: Some("req-1".into()),
            method: "GET".into(),
            scheme: "https".into(),
            authority: "API.GitHub.com".into(),
            path: path.into(),
            protocol: HttpProtocol::Http2,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }),
    }
}

fn json(input: &PolicyInput) -> serde_json::Value {
    input.to_json()
}

#[test]
fn decodes_percent_encoded_segments_but_keeps_encoded_slashes_inside_one() {
    assert_eq!(
        parse_path("/a%20b/c%2Fd/%E2%9C%93"),
        vec!["a b", "c/d", "✓"]
    );
}

#[test]
fn keeps_invalid_percent_escapes_literally() {
    assert_eq!(parse_path("/a%zzb/%"), vec!["a%zzb", "%"]);
}

#[test]
fn root_and_empty_paths_give_one_empty_segment() {
    assert_eq!(parse_path("/"), vec![""]);
    assert_eq!(parse_path(""), vec![""]);
    assert_eq!(parse_path("/?x=1"), vec![""]);
    assert_eq!(parse_path("/a/b/"), vec!["a", "b", ""]);
}

#[test]
fn repeated_query_keys_keep_every_value_in_order() {
    let q = parse_query("/p?a=1&b=x+y&a=2&flag&c=%2F#frag");
    assert_eq!(q["a"], vec!["1", "2"]);
    assert_eq!(q["b"], vec!["x y"]);
    assert_eq!(q["flag"], vec![""]);
    assert_eq!(q["c"], vec!["/"]);
    assert_eq!(q.len(), 4);
    assert!(parse_query("/no-query").is_empty());
}

#[test]
fn parses_ipv6_authorities_with_and_without_ports() {
    assert_eq!(
        parse_authority("[2001:db8::1]:8443", 443),
        Some(Authority {
            host: "2001:db8::1".into(),
            port: 8443
        })
    );
    assert_eq!(parse_authority("[2001:db8::1]", 443).unwrap().port, 443);
    assert_eq!(parse_authority("2001:db8::1", 443), None);
    assert_eq!(parse_authority("[not-an-ip]:1", 443), None);
    let v6 = parse_authority("[2001:DB8::1]:8443", 443).unwrap();
    assert_eq!(
        v6.to_string(),
        "[2001:db8::1]:8443",
        "printed back with its brackets"
    );
}

#[test]
fn normalises_host_case_and_trailing_dot_and_rejects_junk() {
    let a = parse_authority("Example.COM.:8080", 80).unwrap();
    assert_eq!((a.host.as_str(), a.port), ("example.com", 8080));
    for bad in [
        "",
        ":80",
        "user@host",
        "host:99999",
        "host:0",
        "host:x",
        "a/b",
        // Found by fuzzing: only letters, digits, `-`, `_` and `.` make a name.
        "\rypo<43",
        "a\tb",
        "ex%61mple.com",
        "a,b.com",
        "a*.com",
        "..",
        "a..:443",
        ".a.com",
        "a..b",
    ] {
        assert_eq!(parse_authority(bad, 80), None, "{bad}");
    }
}

#[test]
fn builds_envoy_shaped_request_attributes() {
    let doc = json(&request("/repos/o/r?per_page=1", &[]));
    let http = &doc["attributes"]["request"]["http"];
    assert_eq!(http["method"], "GET");
    assert_eq!(http["host"], "api.github.com");
    assert_eq!(http["path"], "/repos/o/r?per_page=1");
    assert_eq!(http["scheme"], "https");
    assert_eq!(http["protocol"], "HTTP/2");
    assert_eq!(http["id"], "req-1");
    assert_eq!(doc["parsed_path"], serde_json::json!(["repos", "o", "r"]));
    assert_eq!(doc["parsed_query"], serde_json::json!({"per_page": ["1"]}));
    assert_eq!(
        doc["attributes"]["source"]["address"]["socketAddress"],
        serde_json::json!({"address": "10.200.0.2", "portValue": 50000})
    );
    assert_eq!(
        doc["attributes"]["destination"]["address"]["socketAddress"]["portValue"],
        443
    );
    assert_eq!(doc["attributes"]["tlsSession"]["sni"], "api.github.com");
    assert_eq!(
        doc["version"],
        serde_json::json!({"encoding": "protojson", "ext_authz": "v3"})
    );
    assert_eq!(
        doc["destination"],
        serde_json::json!({"host": "api.github.com", "port": 443})
    );
    assert_eq!(doc["connection"]["stage"], "request");
    assert_eq!(doc["connection"]["mode"], "transparent");
    assert_eq!(doc["connection"]["transport"], "tls");
    assert_eq!(doc["session"]["id"], "sesn_1");
}

#[test]
fn lower_cases_and_joins_repeated_headers_and_adds_pseudo_headers() {
    let doc = json(&request(
        "/x",
        &[
            ("Accept", "text/html"),
            ("ACCEPT", "application/json"),
            ("Cookie", "a=1"),
            ("cookie", "b=2"),
            (":authority", "evil.example"),
            ("X-Empty", ""),
        ],
    ));
    let headers = &doc["attributes"]["request"]["http"]["headers"];
    assert_eq!(headers["accept"], "text/html,application/json");
    assert_eq!(headers["cookie"], "a=1; b=2");
    assert_eq!(headers["x-empty"], "");
    // Pseudo-headers come from the request itself, never from a client-sent field.
    assert_eq!(headers[":authority"], "api.github.com");
    assert_eq!(headers[":method"], "GET");
    assert_eq!(headers[":path"], "/x");
    assert_eq!(headers[":scheme"], "https");
    assert!(headers.get("Accept").is_none());
}

#[test]
fn connect_stage_has_no_request_and_names_destination_from_sni() {
    let mut input = request("/", &[]);
    input.stage = Stage::Connect;
    input.request = None;
    let doc = json(&input);
    assert!(doc["attributes"].get("request").is_none());
    assert!(doc.get("parsed_path").is_none());
    assert!(doc.get("parsed_query").is_none());
    assert_eq!(doc["connection"]["stage"], "connect");
    assert_eq!(doc["connection"]["sni"], "api.github.com");
    assert_eq!(
        doc["destination"],
        serde_json::json!({"host": "api.github.com", "port": 443})
    );
}

#[test]
fn connect_destination_prefers_connect_target_then_falls_back_to_address() {
    let mut input = request("/", &[]);
    input.stage = Stage::Connect;
    input.request = None;
    input.connection.connect_target = Some("Git.Example:8443".into());
    assert_eq!(
        input.destination(),
        Some(Authority {
            host: "git.example".into(),
            port: 8443
        })
    );
    input.connection.connect_target = None;
    input.connection.sni = None;
    // Transparent mode: the name the DNS stub answered with this address comes next.
    input.connection.dns_name = Some("pypi.org".into());
    assert_eq!(
        input.destination(),
        Some(Authority {
            host: "pypi.org".into(),
            port: 443
        })
    );
    assert_eq!(input.to_json()["connection"]["dns_name"], "pypi.org");
    input.connection.dns_name = None;
    assert_eq!(
        input.destination(),
        Some(Authority {
            host: "192.0.2.10".into(),
            port: 443
        })
    );
}

#[test]
fn session_labels_and_agent_are_present() {
    let mut input = request("/", &[]);
    input.session.agent_id = Some("agent_7".into());
    input.session.labels.insert("team".into(), "infra".into());
    let doc = json(&input);
    assert_eq!(doc["session"]["agent_id"], "agent_7");
    assert_eq!(
        doc["session"]["labels"],
        serde_json::json!({"team": "infra"})
    );
    let unknown = PolicyInput {
        session: SessionInput::unknown(),
        ..input
    };
    let doc = json(&unknown);
    assert_eq!(doc["session"]["id"], "unknown");
    assert_eq!(doc["session"]["labels"], serde_json::json!({}));
}

#[test]
fn request_from_url_fills_scheme_authority_and_path() {
    let r = RequestInput::from_url("get", "https://[::1]:8443?x=1#f", vec![]).unwrap();
    assert_eq!(r.method, "GET");
    assert_eq!(r.authority, "[::1]:8443");
    assert_eq!(r.path, "/?x=1");
    let r = RequestInput::from_url("POST", "http://example.com", vec![]).unwrap();
    assert_eq!((r.scheme.as_str(), r.path.as_str()), ("http", "/"));
    assert!(RequestInput::from_url("GET", "ftp://x/", vec![]).is_err());
    assert!(RequestInput::from_url("GET", "example.com/x", vec![]).is_err());
    assert!(RequestInput::from_url("G T", "http://x/", vec![]).is_err());
    assert!(RequestInput::from_url("GET", "http://user@x/", vec![]).is_err());
}

/// The whole request-stage document, key for key: the per-connection templates it is filled
/// from must add nothing, drop nothing and leave no placeholder behind.
#[test]
fn the_request_document_is_exactly_the_envoy_shape() {
    let mut input = request("/repos/o/r?per_page=1", &[("Accept", "text/plain")]);
    input.session.labels.insert("team".into(), "infra".into());
    let expected = serde_json::json!({
        "attributes": {
            "destination": {"address": {"socketAddress": {"address": "192.0.2.10", "portValue": 443}}},
            "request": {"http": {
                "headers": {
                    ":authority": "api.github.com",
                    ":method": "GET",
                    ":path": "/repos/o/r?per_page=1",
                    ":scheme": "https",
                    "accept": "text/plain",
                },
                "host": "api.github.com",
                "id": "req-1",
                "method": "GET",
                "path": "/repos/o/r?per_page=1",
                "protocol": "HTTP/2",
                "scheme": "https",
            }},
            "source": {"address": {"socketAddress": {"address": "10.200.0.2", "portValue": 50000}}},
            "tlsSession": {"sni": "api.github.com"},
        },
        "connection": {
            "mode": "transparent",
            "original_destination": {"address": "192.0.2.10", "port": 443},
            "sni": "api.github.com",
            "source": {"address": "10.200.0.2", "port": 50000},
            "stage": "request",
            "transport": "tls",
        },
        "destination": {"host": "api.github.com", "port": 443},
        "parsed_path": ["repos", "o", "r"],
        "parsed_query": {"per_page": ["1"]},
        "session": {"id": "sesn_1", "labels": {"team": "infra"}},
        "version": {"encoding": "protojson", "ext_authz": "v3"},
    });
    assert_eq!(json(&input), expected);
    // A request on the same connection to another host (the proxy refuses that as fronting
    // before asking, but the document must still say so) and one without an id.
    let cached = ConnectionDocument::new(&input.connection, &input.session);
    let mut other = input.request.clone().unwrap();
    other.authority = "example.org".into();
    other.id = None;
    let doc = serde_json::to_value(cached.request(&other)).unwrap();
    assert_eq!(
        doc["destination"],
        serde_json::json!({"host": "example.org", "port": 443})
    );
    assert!(doc["attributes"]["request"]["http"].get("id").is_none());
    assert_eq!(doc["attributes"]["request"]["http"]["host"], "example.org");
}

fn mcp_call() -> (PolicyInput, BodyInput) {
    let mut input = request(
        "/mcp",
        &[
            ("Content-Type", "application/json"),
            // A client cannot vouch for its own body: Cordon's value replaces this.
            ("X-Envoy-Auth-Partial-Body", "false"),
        ],
    );
    let http = input.request.as_mut().unwrap();
    http.method = "POST".into();
    let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search"}}"#;
    let limits = BodyLimits {
        max_bytes: 40,
        max_decoded_bytes: 40,
    };
    let parsed = BodyInput::parse(body, false, &BodyRequest::of(http), limits);
    (input, parsed)
}

#[test]
fn without_a_body_the_document_is_unchanged() {
    let input = request("/mcp", &[("content-type", "application/json")]);
    assert_eq!(input.to_value_with_body(None), input.to_value());
    assert!(json(&input).get("truncated_body").is_none());
    assert!(json(&input).get("cordon").is_none());
}

#[test]
fn a_truncated_body_is_text_only_with_the_partial_body_header_set() {
    let (input, body) = mcp_call();
    let doc = input.to_json_with_body(Some(&body));
    let http = &doc["attributes"]["request"]["http"];
    assert_eq!(http["body"], r#"{"jsonrpc":"2.0","id":1,"method":"tools/"#);
    assert_eq!(http["headers"]["x-envoy-auth-partial-body"], "true");
    assert_eq!(doc["truncated_body"], true);
    assert!(doc.get("parsed_body").is_none());
    assert_eq!(doc["cordon"]["body_error"]["kind"], "too_large");
    assert!(doc["cordon"].get("jsonrpc").is_none());
}

#[test]
fn a_whole_body_gives_parsed_body_and_the_conveniences_with_exact_keys() {
    let (input, _) = mcp_call();
    let http = input.request.as_ref().unwrap();
    let raw = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search"}}"#;
    let body = BodyInput::parse(raw, false, &BodyRequest::of(http), BodyLimits::default());
    let doc = input.to_json_with_body(Some(&body));
    let expected_http_body = std::str::from_utf8(raw).unwrap();
    assert_eq!(
        doc["attributes"]["request"]["http"]["body"],
        expected_http_body
    );
    assert_eq!(
        doc["attributes"]["request"]["http"]["headers"]["x-envoy-auth-partial-body"],
        "false"
    );
    assert_eq!(doc["truncated_body"], false);
    assert_eq!(
        doc["parsed_body"],
        serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search"}})
    );
    assert_eq!(
        doc["cordon"],
        serde_json::json!({"jsonrpc": {"kind": "request", "method": "tools/call", "id": 1, "params": {"name": "search"}}})
    );
    // The rest of the document is the body-less one.
    let mut without = doc.clone();
    let root = without.as_object_mut().unwrap();
    for key in ["parsed_body", "truncated_body", "cordon"] {
        root.remove(key);
    }
    let http = without["attributes"]["request"]["http"]
        .as_object_mut()
        .unwrap();
    http.remove("body");
    http["headers"]["x-envoy-auth-partial-body"] = "false".into();
    assert_eq!(without, input.to_json());
}

#[test]
fn the_connection_document_builds_the_same_body_document() {
    let (input, body) = mcp_call();
    let cached = ConnectionDocument::new(&input.connection, &input.session);
    assert_eq!(
        cached.request_with_body(input.request.as_ref().unwrap(), &body),
        input.to_value_with_body(Some(&body))
    );
}

#[test]
fn git_and_graphql_conveniences_have_their_documented_shapes() {
    let mut input = request("/acme/widgets.git/git-receive-pack", &[]);
    input.request.as_mut().unwrap().method = "POST".into();
    let old = "1".repeat(40);
    let line = format!("{old} {} refs/heads/main\0report-status\n", "0".repeat(40));
    let body = format!("{:04x}{line}0000PACK", line.len() + 4);
    let http = input.request.as_ref().unwrap();
    let parsed = BodyInput::parse(
        body.as_bytes(),
        false,
        &BodyRequest::of(http),
        BodyLimits::default(),
    );
    let doc = input.to_json_with_body(Some(&parsed));
    assert_eq!(
        doc["cordon"]["git"],
        serde_json::json!({"commands": [
            {"old": old, "new": "0".repeat(40), "ref": "refs/heads/main", "action": "delete"}
        ]})
    );

    let mut input = request("/graphql", &[("content-type", "application/json")]);
    input.request.as_mut().unwrap().method = "POST".into();
    let http = input.request.as_ref().unwrap();
    let body = br#"{"query": "mutation Add { addStar(input: {}) { clientMutationId } }"}"#;
    let parsed = BodyInput::parse(body, false, &BodyRequest::of(http), BodyLimits::default());
    let doc = input.to_json_with_body(Some(&parsed));
    let op = serde_json::json!({"type": "mutation", "name": "Add", "fields": ["addStar"]});
    assert_eq!(
        doc["cordon"]["graphql"],
        serde_json::json!({"operation": op, "operations": [op]})
    );
}

#[test]
fn form_bodies_are_objects_of_arrays_in_parsed_body() {
    let mut input = request(
        "/login",
        &[("content-type", "application/x-www-form-urlencoded")],
    );
    input.request.as_mut().unwrap().method = "POST".into();
    let http = input.request.as_ref().unwrap();
    let parsed = BodyInput::parse(
        b"user=alice&scope=a&scope=b",
        false,
        &BodyRequest::of(http),
        BodyLimits::default(),
    );
    let doc = input.to_json_with_body(Some(&parsed));
    assert_eq!(
        doc["parsed_body"],
        serde_json::json!({"user": ["alice"], "scope": ["a", "b"]})
    );
    assert!(doc.get("cordon").is_none());
}

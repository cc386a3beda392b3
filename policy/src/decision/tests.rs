use std::sync::Arc;

use regorus::Value;

use super::*;

fn decide(json: &str) -> Decision {
    let value = if json == "undefined" {
        Value::Undefined
    } else {
        Value::from_json_str(json).unwrap()
    };
    Decision::from_value(&value, "data.q", Arc::from("gen-1"))
}

#[test]
fn booleans_allow_and_deny() {
    let allow = decide("true");
    assert_eq!(allow.outcome, Outcome::Allow);
    assert_eq!(allow.failure, None);
    assert_eq!(&*allow.generation, "gen-1");
    let deny = decide("false");
    assert_eq!(deny.outcome, Outcome::Deny);
    assert_eq!(deny.failure, None);
    assert_eq!(deny.deny_status(), 403);
}

#[test]
fn undefined_denies_and_names_the_query() {
    let d = decide("undefined");
    assert_eq!(d.outcome, Outcome::Deny);
    assert_eq!(d.failure, Some(DecisionFailure::Undefined));
    assert!(d.reason.contains("data.q is undefined"), "{}", d.reason);
}

#[test]
fn reads_every_key_of_a_full_decision_object() {
    let d = decide(
        r#"{"allowed": true, "reason": "ok", "headers": {"X-A": "1", "x-b": ["2", "3"]},
            "request_headers_to_remove": ["Cookie"], "response_headers_to_add": {"x-c": "4"},
            "inject": [{"secret": "github", "header": "Authorization"}], "mitm": false,
            "dynamic_metadata": {"ignored": true}}"#,
    );
    assert_eq!(d.outcome, Outcome::Allow);
    assert_eq!(d.reason, "ok");
    assert_eq!(
        d.headers,
        vec![
            ("x-a".into(), "1".into()),
            ("x-b".into(), "2".into()),
            ("x-b".into(), "3".into())
        ]
    );
    assert_eq!(d.request_headers_to_remove, vec!["cookie"]);
    assert_eq!(d.response_headers_to_add, vec![("x-c".into(), "4".into())]);
    assert_eq!(
        d.inject,
        vec![CredentialRef {
            secret: "github".into(),
            header: "authorization".into()
        }]
    );
    assert_eq!(d.tls, TlsHandling::Passthrough);
}

#[test]
fn deny_object_carries_status_body_and_reason() {
    let d = decide(r#"{"allowed": false, "http_status": 451, "body": "no", "reason": "r"}"#);
    assert_eq!(d.outcome, Outcome::Deny);
    assert_eq!(d.deny_status(), 451);
    assert_eq!(d.body.as_deref(), Some("no"));
    assert_eq!(d.reason, "r");
    assert_eq!(d.failure, None);
}

#[test]
fn wrong_types_deny_and_say_which_key() {
    let cases = [
        (r#"{"allowed": "yes"}"#, "`allowed` must be a boolean"),
        (r#"{"reason": "x"}"#, "no `allowed` key"),
        (r#"{"allowed": true, "http_status": 99}"#, "`http_status`"),
        (
            r#"{"allowed": true, "http_status": "403"}"#,
            "`http_status`",
        ),
        (
            r#"{"allowed": true, "headers": ["a"]}"#,
            "`headers` must be an object",
        ),
        (r#"{"allowed": true, "headers": {"a": 1}}"#, "`headers.a`"),
        (
            r#"{"allowed": true, "headers": {"bad name": "1"}}"#,
            "invalid header",
        ),
        (
            r#"{"allowed": true, "headers": {"a": "x\r\nInjected: 1"}}"#,
            "control character",
        ),
        (
            r#"{"allowed": true, "request_headers_to_remove": "cookie"}"#,
            "array of strings",
        ),
        (
            r#"{"allowed": true, "inject": {"secret": "a"}}"#,
            "`inject` must be",
        ),
        (
            r#"{"allowed": true, "inject": [{"secret": "a"}]}"#,
            "`inject` must be",
        ),
        (
            r#"{"allowed": true, "inject": [{"secret": "", "header": "x"}]}"#,
            "empty",
        ),
        (
            r#"{"allowed": true, "mitm": "no"}"#,
            "`mitm` must be a boolean",
        ),
        (
            r#"{"allowed": true, "reason": 5}"#,
            "`reason` must be a string",
        ),
        (
            r#"{"allowed": true, "body": {}}"#,
            "`body` must be a string",
        ),
        (r#""allow""#, "expected a boolean or an object"),
        ("[true]", "expected a boolean or an object"),
    ];
    for (json, needle) in cases {
        let d = decide(json);
        assert_eq!(d.outcome, Outcome::Deny, "{json}");
        assert_eq!(d.failure, Some(DecisionFailure::InvalidDecision), "{json}");
        assert!(d.reason.contains(needle), "{json}: {}", d.reason);
        assert!(d.reason.contains("fail closed"), "{json}");
    }
}

#[test]
fn json_form_shows_effective_status_only_on_deny() {
    let allow = decide(r#"{"allowed": true, "headers": {"x": ["1", "2"]}}"#).to_json();
    assert_eq!(allow["allowed"], true);
    assert!(allow["http_status"].is_null());
    assert_eq!(allow["headers"]["x"], serde_json::json!(["1", "2"]));
    let deny = decide("false").to_json();
    assert_eq!(deny["http_status"], 403);
    assert_eq!(deny["generation"], "gen-1");
    assert!(deny["failure"].is_null());
    let failed = decide("undefined").to_json();
    assert_eq!(failed["failure"], "undefined");
}

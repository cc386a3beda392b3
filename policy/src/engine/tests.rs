use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;
use crate::decision::Outcome;
use crate::input::{
    ConnectionInput, HttpProtocol, ListenerMode, RequestInput, SessionInput, Stage, Transport,
};

fn write(root: &Path, path: &str, content: &str) {
    let full = root.join(path);
    fs::create_dir_all(full.parent().unwrap()).unwrap();
    fs::write(full, content).unwrap();
}

fn input(host: &str, method: &str, path: &str) -> PolicyInput {
    PolicyInput {
        stage: Stage::Request,
        connection: ConnectionInput {
            mode: ListenerMode::Explicit,
            transport: Transport::Tls,
            source: "127.0.0.1:4000".parse().unwrap(),
            original_destination: None,
            sni: Some(host.into()),
            connect_target: None,
            dns_name: None,
        },
        session: SessionInput::named("sesn_1"),
        request: Some(RequestInput {
            id: None,
            method: method.into(),
            scheme: "https".into(),
            authority: host.into(),
            path: path.into(),
            protocol: HttpProtocol::Http11,
            headers: vec![("X-Token".into(), "t".into())],
        }),
    }
}

const POLICY: &str = r#"package cordon.egress
import rego.v1

default decision := {"allowed": false, "reason": "not on the list"}

decision := {"allowed": true, "reason": "listed", "headers": {"x-via": "cordon"}} if {
    input.destination.host in data.cordon.hosts
    input.attributes.request.http.method == "GET"
    input.parsed_path[0] == "ok"
}
"#;

fn bundle_dir(policy: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "cordon/egress.rego", policy);
    write(dir.path(), "cordon/hosts/data.json", r#"["pypi.org"]"#);
    dir
}

#[test]
fn serves_on_the_rvm_and_agrees_with_the_interpreter() {
    let dir = bundle_dir(POLICY);
    let engine = PolicyEngine::load(PolicyConfig::new(dir.path())).unwrap();
    let generation = engine.generation();
    assert_eq!(generation.info().path, EvalPath::Vm);
    for (host, method, path, allowed) in [
        ("pypi.org", "GET", "/ok/x", true),
        ("pypi.org", "POST", "/ok/x", false),
        ("evil.example", "GET", "/ok", false),
        ("pypi.org", "GET", "/nope", false),
    ] {
        let i = input(host, method, path);
        let fast = generation.decide(&i);
        let slow = generation.decide_interpreted(&i);
        assert_eq!(fast, slow, "{host} {method} {path}");
        assert_eq!(fast.is_allowed(), allowed, "{host} {method} {path}");
    }
    let d = engine.decide(&input("pypi.org", "GET", "/ok"));
    assert_eq!(d.headers, vec![("x-via".to_string(), "cordon".to_string())]);
    assert_eq!(d.reason, "listed");
    assert_eq!(d.generation, generation.info().id);
}

#[test]
fn undefined_decision_fails_closed() {
    let dir = bundle_dir("package cordon.egress\nimport rego.v1\ndecision if input.never\n");
    let engine = PolicyEngine::load(PolicyConfig::new(dir.path())).unwrap();
    let d = engine.decide(&input("pypi.org", "GET", "/"));
    assert_eq!(d.outcome, Outcome::Deny);
    assert_eq!(d.failure, Some(DecisionFailure::Undefined));
}

#[test]
fn evaluation_errors_fail_closed_on_both_paths() {
    // Two complete-rule bodies giving different values is a runtime conflict error in Rego.
    let dir = bundle_dir(
        "package cordon.egress\nimport rego.v1\ndecision := true if input.destination.host\n\
         decision := false if input.destination.host\n",
    );
    let generation = Generation::load(&PolicyConfig::new(dir.path())).unwrap();
    let i = input("pypi.org", "GET", "/");
    for d in [generation.decide(&i), generation.decide_interpreted(&i)] {
        assert_eq!(d.outcome, Outcome::Deny, "{d:?}");
        assert!(d.failure.is_some(), "{d:?}");
    }
}

#[test]
fn runaway_policies_hit_the_limit_and_deny() {
    let dir = bundle_dir(
        "package cordon.egress\nimport rego.v1\n\
         decision if count({x | some i in numbers.range(1, 5000); some j in numbers.range(1, 5000); x := i * j}) > 0\n",
    );
    let mut config = PolicyConfig::new(dir.path());
    config.limits = EvalLimits {
        timeout: Duration::from_millis(20),
        max_instructions: 100_000,
    };
    let generation = Generation::load(&config).unwrap();
    let i = input("pypi.org", "GET", "/");
    let started = std::time::Instant::now();
    for d in [generation.decide(&i), generation.decide_interpreted(&i)] {
        assert_eq!(d.outcome, Outcome::Deny, "{d:?}");
        assert_eq!(d.failure, Some(DecisionFailure::EvaluationError), "{d:?}");
    }
    // Generous bound: only proves the limit cut evaluation off (unbounded takes many seconds).
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_missing_query_rule_is_a_load_error_listing_the_rules() {
    let dir = bundle_dir(POLICY);
    let mut config = PolicyConfig::new(dir.path());
    config.query = "data.envoy.authz.allow".into();
    let err = Generation::load(&config).unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(err, PolicyLoadError::MissingQuery { .. }),
        "{message}"
    );
    assert!(message.contains("data.cordon.egress.decision"), "{message}");
}

#[test]
fn every_module_syntax_error_is_reported_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.rego", "package a\nimport rego.v1\nx if {\n");
    write(dir.path(), "b/b.rego", "package b\n\nallow {\n  true\n}\n");
    write(dir.path(), "c.rego", POLICY);
    let err = Generation::load(&PolicyConfig::new(dir.path())).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("a.rego:"), "{message}");
    assert!(message.contains("b/b.rego:3"), "{message}");
}

#[test]
fn rego_v0_bundles_load_when_the_manifest_says_so() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "envoy/authz.rego",
        "package envoy.authz\n\nimport input.attributes.request.http as http_request\n\n\
         default allow = false\n\nallow {\n  http_request.method == \"GET\"\n}\n",
    );
    write(dir.path(), ".manifest", r#"{"rego_version": 0}"#);
    let mut config = PolicyConfig::new(dir.path());
    config.query = "data.envoy.authz.allow".into();
    let generation = Generation::load(&config).unwrap();
    assert!(
        generation
            .decide(&input("x.example", "GET", "/"))
            .is_allowed()
    );
    assert!(
        !generation
            .decide(&input("x.example", "PUT", "/"))
            .is_allowed()
    );
}

#[test]
fn test_modules_are_not_served() {
    let dir = bundle_dir(POLICY);
    write(
        dir.path(),
        "cordon/egress_test.rego",
        "package cordon.egress_test\nimport rego.v1\n\
         test_x if data.cordon.egress.decision.allowed with input as {}\n",
    );
    let generation = Generation::load(&PolicyConfig::new(dir.path())).unwrap();
    assert_eq!(generation.info().modules, 1);
}

#[test]
fn a_failed_reload_keeps_the_last_good_generation() {
    let dir = bundle_dir(POLICY);
    let engine = PolicyEngine::load(PolicyConfig::new(dir.path())).unwrap();
    let before = engine.generation().info().id.clone();
    write(
        dir.path(),
        "cordon/egress.rego",
        "package cordon.egress\ndecision := {\n",
    );
    let err = engine.reload().unwrap_err();
    assert!(matches!(err, PolicyLoadError::Rego { .. }), "{err}");
    assert_eq!(engine.generation().info().id, before);
    assert!(engine.decide(&input("pypi.org", "GET", "/ok")).is_allowed());
}

#[test]
fn a_good_reload_swaps_generations() {
    let dir = bundle_dir(POLICY);
    let engine = PolicyEngine::load(PolicyConfig::new(dir.path())).unwrap();
    let before = engine.generation();
    write(
        dir.path(),
        "cordon/egress.rego",
        "package cordon.egress\nimport rego.v1\ndecision := {\"allowed\": false, \"reason\": \"locked down\"}\n",
    );
    let info = engine.reload().unwrap();
    assert_ne!(info.id, before.info().id);
    let d = engine.decide(&input("pypi.org", "GET", "/ok"));
    assert!(!d.is_allowed());
    assert_eq!(d.reason, "locked down");
    assert_eq!(d.generation, info.id);
    // A holder of the old generation still decides with it: connections pin a generation.
    assert!(before.decide(&input("pypi.org", "GET", "/ok")).is_allowed());
}

#[test]
fn decisions_during_reloads_always_come_from_one_whole_generation() {
    let dir = bundle_dir(POLICY);
    let engine = Arc::new(PolicyEngine::load(PolicyConfig::new(dir.path())).unwrap());
    let allow_id = engine.generation().info().id.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let checker = {
        let engine = engine.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut seen = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let d = engine.decide(&input("pypi.org", "GET", "/ok"));
                // Allowed exactly when decided by the allowing generation: never a mix, never
                // a failure while the bundle is being rewritten.
                assert!(d.failure.is_none(), "{d:?}");
                assert_eq!(d.is_allowed(), d.generation == allow_id, "{d:?}");
                seen += 1;
            }
            seen
        })
    };
    let deny = "package cordon.egress\nimport rego.v1\ndecision := false\n";
    for i in 0..20 {
        write(
            dir.path(),
            "cordon/egress.rego",
            if i % 2 == 0 { deny } else { POLICY },
        );
        engine.reload().unwrap();
        // A broken bundle in between must not disturb anything.
        write(
            dir.path(),
            "cordon/egress.rego",
            "package cordon.egress\nx := {\n",
        );
        assert!(engine.reload().is_err());
    }
    stop.store(true, Ordering::Relaxed);
    assert!(checker.join().unwrap() > 0);
}

#[test]
fn a_query_defined_only_by_a_default_rule_loads_and_decides() {
    let dir = bundle_dir(
        "package cordon.egress\nimport rego.v1\ndefault decision := {\"allowed\": false, \"reason\": \"closed\"}\n",
    );
    let generation = Generation::load(&PolicyConfig::new(dir.path())).unwrap();
    let i = input("pypi.org", "GET", "/");
    for d in [generation.decide(&i), generation.decide_interpreted(&i)] {
        assert_eq!(d.reason, "closed");
        assert_eq!(d.failure, None);
    }
}

//! CMA end to end, root tier: the simulator (`cordon-cma-sim`, in-process) sends a signed
//! webhook to the real `cordon-controller serve`, which claims the work item, starts a gVisor
//! sandbox behind the real proxy, runs the demo scenario's tool calls in it (an API call with
//! a credential the proxy injects, a request the policy refuses, the file tools in
//! /workspace, the example custom tools in sandboxes of their own and through the proxy),
//! posts the results the scenario checks, and tears everything down when the session
//! terminates. Also: a controller killed mid-session and started again resumes the
//! session with the same lease, and no tool call is answered twice.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use cordon_cma_sim::scenario::Scenario;
use support::cma::{
    Controller, ENVIRONMENT_KEY, TOKEN, assert_passed, demo, logs, start, start_with,
    wait_for_teardown, wait_for_teardown_leaving,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_starts_a_session_that_runs_in_a_sandbox_and_ends_cleanly() {
    let scenario = Scenario::load(&demo("scenario.toml")).unwrap();
    let (sim, world, controller) = start(&scenario, 241).await;
    let report = sim.wait(Duration::from_secs(240)).await;
    assert_passed(&report, &world);

    // Webhooks: run_started and terminated, each delivered and accepted.
    let kinds: Vec<&str> = report.webhooks.iter().map(|w| w.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["session.status_run_started", "session.status_terminated"]
    );
    // The work item was held with heartbeats and force-stopped after teardown.
    assert_eq!(report.work[0].state, "stopped");
    assert!(report.work[0].force_stopped && report.work[0].lease_conflicts == 0);

    // The upstream saw the real token; the sandbox's results never did (the scenario checks
    // `not_contains`), and nothing the controller logged holds it.
    let received = world.received.lock().unwrap().clone();
    let api: Vec<&String> = received
        .iter()
        .filter(|h| h.contains("GET /v1/user"))
        .collect();
    assert_eq!(api.len(), 1, "{received:?}");
    assert!(
        api[0]
            .to_lowercase()
            .contains(&format!("authorization: bearer {TOKEN}")),
        "{}",
        api[0]
    );
    assert!(
        !received.iter().any(|h| h.contains("/upload")),
        "the refused request never left: {received:?}"
    );
    let controller_log = std::fs::read_to_string(world.dir.path().join("controller.log")).unwrap();
    assert!(!controller_log.contains(TOKEN) && !controller_log.contains(ENVIRONMENT_KEY));

    // The audit log: the injected request and the refused one, both the session's.
    let audit = std::fs::read_to_string(world.dir.path().join("state/audit.log")).unwrap();
    let records = records_of(&audit, "sesn_demo");
    assert!(records.iter().any(|r| r["host"] == "api.example.test"
        && r["decision"] == "allow"
        && r["credentials"][0] == "example-api->authorization"));
    assert!(
        records
            .iter()
            .any(|r| r["host"] == "blocked.example.test" && r["decision"] == "deny")
    );
    assert!(!audit.contains(TOKEN));

    // The custom tools: ticket_search reached the desk as tool:ticket_search with the token
    // injected; its result (checked by the scenario) never held it.
    let search: Vec<&String> = received
        .iter()
        .filter(|h| h.contains("POST /v1/tickets/search"))
        .collect();
    assert_eq!(search.len(), 1, "{received:?}");
    assert!(
        search[0]
            .to_lowercase()
            .contains(&format!("authorization: bearer {TOKEN}"))
            && search[0].contains("x-cordon-session: sesn_demo"),
        "{}",
        search[0]
    );
    assert!(records_of(&audit, "tool:ticket_search").iter().any(|r| {
        r["decision"] == "allow"
            && r["reason"] == "ticket_search for session sesn_demo"
            && r["credentials"][0] == "example-api->authorization"
    }));
    // The controller's audit log: one record per call, sizes and outcome, never the input.
    let calls =
        std::fs::read_to_string(world.dir.path().join("state/controller/audit.jsonl")).unwrap();
    let calls: Vec<serde_json::Value> = calls
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let tools: Vec<&str> = calls.iter().map(|c| c["tool"].as_str().unwrap()).collect();
    assert_eq!(tools, ["lookup_order", "ticket_search", "order_chart"]);
    assert!(calls.iter().all(|c| c["outcome"] == "ok"
        && c["session"] == "sesn_demo"
        && c["kind"] == "custom_tool_call"));
    assert_eq!(calls[2]["images"], 1);
    assert!(!calls.iter().any(|c| c.to_string().contains("ord_1002")));

    // The sandbox is gone: no netns, no container, no proxy registration. One container
    // stays: lookup_order's warm sandbox, started again after its call used the first.
    wait_for_teardown_leaving(&world, "sesn_demo", 1);
    assert!(!world.registrations().contains("sesn_demo"));
    assert!(
        !world.registrations().contains("tool:"),
        "{}",
        world.registrations()
    );

    // The controller's metrics and sessions view say what happened.
    let metrics = controller.admin("/metrics");
    for line in [
        "cordon_controller_sessions_active 0",
        "cordon_controller_tool_calls_total{outcome=\"ok\",tool=\"bash\"} 2",
        "cordon_controller_tool_calls_total{outcome=\"ok\",tool=\"write\"} 1",
        "cordon_controller_webhook_deliveries_total{outcome=\"accepted\"} 2",
        "cordon_controller_work_items_total{end=\"terminated\"} 1",
        "cordon_controller_lease_losses_total 0",
        "cordon_controller_session_start_seconds_count 1",
        "cordon_controller_custom_tool_calls_total{outcome=\"ok\",tool=\"lookup_order\"} 1",
        "cordon_controller_custom_tool_calls_total{outcome=\"ok\",tool=\"ticket_search\"} 1",
        "cordon_controller_custom_tool_calls_total{outcome=\"ok\",tool=\"order_chart\"} 1",
        "cordon_controller_custom_tool_duration_seconds_count{tool=\"order_chart\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    let sessions: serde_json::Value = serde_json::from_str(&controller.admin("/sessions")).unwrap();
    let row = &sessions["sessions"][0];
    assert_eq!(row["id"], "sesn_demo");
    assert_eq!(row["state"], "stopped");
    assert_eq!(row["serving"], false);
    assert_eq!(row["work"]["tool_calls"], 10);
    assert_eq!(row["work"]["end_reason"], "terminated");
    assert_eq!(row["egress"]["allowed"], 1, "{row}");
    assert!(row["egress"]["denied"].as_u64().unwrap() >= 1, "{row}");
    let table = world.controller(&["sessions"]);
    let table = support::text(&table.stdout);
    assert!(
        table.contains("sesn_demo") && table.contains("terminated"),
        "{table}"
    );
    // Stopped with SIGTERM (as `make up`'s Ctrl-C does), the controller stops the warm tool
    // sandbox on its way out: nothing keeps running, and no firewall table stays loaded.
    let mut controller = controller;
    let pid = controller.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while controller.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(world.containers().is_empty(), "{:?}", world.containers());
    // With no sandbox left, its firewall table went too.
    let table = std::process::Command::new("nft")
        .args(["list", "table", "inet", &world.prefix])
        .output()
        .unwrap();
    assert!(!table.status.success(), "the table {} stays", world.prefix);
    drop(controller);
}

/// The proxy's request records of `session`.
fn records_of(audit: &str, session: &str) -> Vec<serde_json::Value> {
    audit
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|r: &serde_json::Value| r["session"] == session && r["kind"] == "request")
        .collect()
}

const RESTART: &str = r#"
environment_id = "env_restart"

[[sessions]]
id = "sesn_restart"

[[sessions.steps]]
tool = "bash"
input = { command = "echo before-restart > /workspace/mark; echo one" }
expect = { is_error = false, contains = ["one"] }

[[sessions.steps]]
tool = "bash"
input = { command = "sleep 4; echo two" }
expect = { is_error = false, contains = ["two"] }

[[sessions.steps]]
tool = "read"
input = { file_path = "/workspace/mark" }
expect = { is_error = false, contains = ["before-restart"] }
"#;

/// The controller is killed (SIGKILL) while a tool call runs; started again, it resumes the
/// work item with the lease it held (no 412), keeps the sandbox (the workspace file written
/// before the kill is still there), answers every call exactly once, and leaks nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_killed_mid_session_resumes_it_and_answers_each_call_once() {
    let scenario = Scenario::parse(RESTART).unwrap();
    let (sim, world, first) = start(&scenario, 242).await;
    let admin = first.admin;
    // Wait for the first call's answer, then kill the controller during the second.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let report = sim.world.report();
        if report.sessions[0].steps[0].outcome == "passed" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}\n{}",
            report.summary(),
            logs(&world)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(first);
    assert!(
        world.netns_exists("sesn_restart"),
        "the sandbox outlives its controller"
    );
    let second = Controller::start(&world, admin, "controller-2.log");
    let report = sim.wait(Duration::from_secs(240)).await;
    assert_passed(&report, &world);
    assert_eq!(
        report.work[0].lease_conflicts, 0,
        "resumed with the lease it held"
    );
    assert_eq!(report.work[0].lease_expiries, 0);
    assert!(report.violations.is_empty());
    let log = std::fs::read_to_string(world.dir.path().join("controller-2.log")).unwrap();
    assert!(log.contains("resuming a work item"), "{log}");
    wait_for_teardown(&world, "sesn_restart");
    assert!(
        world.host_interfaces().is_empty(),
        "{:?}",
        world.host_interfaces()
    );
    drop(second);
}

const LONG: &str = r#"
environment_id = "env_stop"

[[sessions]]
id = "sesn_stop"

[[sessions.steps]]
tool = "bash"
input = { command = "sleep 120; echo too-late" }
"#;

/// `cordon-controller sessions --stop` ends a session mid-call: the sandbox is torn down, the
/// work item force-stopped, the end recorded; stopping it again says it is not served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_stops_a_session_from_the_cli() {
    let scenario = Scenario::parse(LONG).unwrap();
    let (sim, world, controller) = start(&scenario, 243).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !controller.admin("/sessions").contains("\"serving\":true") {
        assert!(Instant::now() < deadline, "never served\n{}", logs(&world));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = world.controller(&["sessions", "--stop", "sesn_stop"]);
    assert!(out.status.success(), "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let report = sim.world.report();
        if report.work[0].state == "stopped" {
            assert!(report.work[0].force_stopped);
            assert_eq!(
                report.sessions[0].steps[0].outcome, "pending",
                "the call was never answered"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}\n{}",
            report.summary(),
            logs(&world)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for_teardown(&world, "sesn_stop");
    let sessions: serde_json::Value = serde_json::from_str(&controller.admin("/sessions")).unwrap();
    assert_eq!(
        sessions["sessions"][0]["work"]["end_reason"],
        "stopped_by_operator"
    );
    assert!(
        controller
            .admin("/metrics")
            .contains("cordon_controller_work_items_total{end=\"stopped_by_operator\"} 1")
    );
    let again = world.controller(&["sessions", "--stop", "sesn_stop"]);
    assert_eq!(again.status.code(), Some(66), "{again:?}");
    assert!(support::text(&again.stderr).contains("not being served"));
}

const TWO_TURNS: &str = r#"
environment_id = "env_turns"

[[sessions]]
id = "sesn_turns"

[[sessions.steps]]
tool = "bash"
input = { command = "echo from-turn-one > /workspace/turn1 && touch /tmp/sandbox-one && echo written" }
expect = { is_error = false, contains = ["written"] }

[[sessions.steps]]
tool = "bash"
after_idle = true
input = { command = "cat /workspace/turn1; test -e /tmp/sandbox-one && echo same-sandbox || echo new-sandbox" }
expect = { is_error = false, contains = ["from-turn-one", "new-sandbox"] }
"#;

/// A session idles after its first turn (the sandbox is torn down after max_idle_ms) and
/// resumes with a second user message: the new sandbox has the workspace the first one left,
/// and nothing else of it. Once the session terminates the workspace goes (retention 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_idles_finds_its_workspace_when_it_resumes() {
    let scenario = Scenario::parse(TWO_TURNS).unwrap();
    let (sim, world, controller) =
        start_with(&scenario, 245, "workspace_retention_hours = 0\n", None).await;
    let report = sim.wait(Duration::from_secs(240)).await;
    assert_passed(&report, &world);
    assert_eq!(
        report.work.len(),
        2,
        "one work item per turn: {}",
        report.summary()
    );
    let kinds: Vec<&str> = report.webhooks.iter().map(|w| w.kind.as_str()).collect();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == "session.status_run_started")
            .count(),
        2,
        "{kinds:?}"
    );
    assert!(kinds.contains(&"session.status_idled"), "{kinds:?}");
    wait_for_teardown(&world, "sesn_turns");
    let workspace = world.workspace("sesn_turns");
    let deadline = Instant::now() + Duration::from_secs(20);
    while workspace.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !workspace.exists(),
        "the workspace outlived its session's end\n{}",
        logs(&world)
    );
    let metrics = controller.admin("/metrics");
    assert!(
        metrics.contains("cordon_controller_work_items_total{end=\"idle\"} 1")
            && metrics.contains("cordon_controller_work_items_total{end=\"terminated\"} 1")
            && metrics.contains("cordon_controller_sandbox_starts_total{kind=\"cold\"} 2"),
        "{metrics}"
    );
}

const OUTAGE: &str = r#"
environment_id = "env_outage"

[[sessions]]
id = "sesn_outage"

[[sessions.steps]]
tool = "bash"
input = { command = "echo one >> /workspace/calls; echo one" }
expect = { is_error = false, contains = ["one"] }

[[sessions.steps]]
tool = "bash"
input = { command = "echo two >> /workspace/calls; echo two" }
expect = { is_error = false, contains = ["two"] }

[[sessions.steps]]
tool = "bash"
input = { command = "echo three >> /workspace/calls; cat /workspace/calls" }
expect = { is_error = false, matches = "^one\ntwo\nthree\n?$" }

[faults]
outage_after_results = 1
outage_ms = 10000
"#;

/// CMA answers 503 to everything for 10 s in the middle of a session (after the first
/// result): the controller rides it out (heartbeats and the result post retried, the lease
/// held), posts the second result once CMA is back, and the session ends with every call run
/// once and answered once, on one sandbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cma_outage_mid_session_loses_and_repeats_no_answer() {
    let scenario = Scenario::parse(OUTAGE).unwrap();
    let (sim, world, controller) = start(&scenario, 247).await;
    let report = sim.wait(Duration::from_secs(240)).await;
    assert_passed(&report, &world);
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    let steps = &report.sessions[0].steps;
    assert!(
        steps.iter().all(|s| s.outcome == "passed"),
        "{}",
        report.summary()
    );
    assert_eq!(report.work.len(), 1, "{}", report.summary());
    assert_eq!(report.work[0].lease_expiries, 0, "{}", report.summary());
    wait_for_teardown(&world, "sesn_outage");
    let metrics = controller.admin("/metrics");
    assert!(
        metrics.contains("cordon_controller_work_items_total{end=\"terminated\"} 1")
            && metrics.contains("cordon_controller_sandbox_starts_total{kind=\"cold\"} 1"),
        "{metrics}"
    );
}

const PROXY_RESTART: &str = r#"
environment_id = "env_proxy_restart"

[[sessions]]
id = "sesn_proxy_restart"

[[sessions.steps]]
tool = "bash"
input = { command = "curl -sS -o /dev/null -w 'first=%{http_code}' https://api.example.test/v1/user" }
expect = { is_error = false, contains = ["first=200"] }

# The test restarts the proxy during this sleep.
[[sessions.steps]]
tool = "bash"
input = { command = "sleep 8; curl -sS -o /dev/null -w 'after=%{http_code}' https://api.example.test/v1/user" }
expect = { is_error = false, contains = ["after=200"] }
"#;

/// The proxy restarts mid-session (its registrations live in memory): the controller notices
/// the session's registration is gone and registers it again, so the session's next request
/// is its own again (allowed, token injected), not an unknown source's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_restart_mid_session_keeps_the_sessions_identity() {
    let scenario = Scenario::parse(PROXY_RESTART).unwrap();
    let (sim, mut world, controller) = start(&scenario, 248).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while sim.world.report().sessions[0].steps[0].outcome != "passed" {
        assert!(Instant::now() < deadline, "{}", logs(&world));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The second call is sleeping in the sandbox: restart the proxy under it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    world.stop_proxy();
    world.start_proxy();
    let report = sim.wait(Duration::from_secs(120)).await;
    assert_passed(&report, &world);
    let audit = std::fs::read_to_string(world.dir.path().join("state/audit.log")).unwrap();
    let after: Vec<serde_json::Value> = records_of(&audit, "sesn_proxy_restart");
    assert_eq!(after.len(), 2, "both requests are the session's: {audit}");
    assert!(
        after
            .iter()
            .all(|r| r["credentials"][0] == "example-api->authorization"),
        "{after:?}"
    );
    assert!(
        controller
            .admin("/metrics")
            .contains("cordon_controller_proxy_registrations_restored_total 1"),
        "{}",
        controller.admin("/metrics")
    );
    wait_for_teardown(&world, "sesn_proxy_restart");
}

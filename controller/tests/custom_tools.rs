//! Custom tools end to end, root tier: the simulator's agent calls the operator's tools; the
//! real controller runs each `run` tool in a gVisor sandbox of its own (its mounts and nothing
//! else of the host, the proxy its only way out, as `tool:<name>`) and sends each `http` tool's
//! input through the real proxy. Every way a call can go wrong is an error result that says
//! what happened, and the session goes on. The tools file is reloaded on change; a broken edit
//! keeps the previous tools serving.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use cordon_cma_sim::scenario::Scenario;
use support::cma::{assert_passed, logs, start_with, wait_for_teardown};

const TOOLS: &str = r#"
[[tool]]
name = "context"
description = "Shows what a tool sees: its context, its mounts, its way out."
input_schema = { type = "object", properties = { n = { type = "integer", minimum = 1 } }, required = ["n"] }
[tool.run]
command = ["bash", "-c", """
echo "session=$CORDON_SESSION_ID agent=$CORDON_AGENT_ID tool=$CORDON_TOOL_NAME use=${CORDON_TOOL_USE_ID:0:6} input=$(cat)"
cat /data/fact.txt
touch /data/new 2>/dev/null && echo data-writable || echo data-read-only
echo "from the tool" >> /out/log && echo out-written
test -e /etc/cordon-host-marker && echo host-visible || echo host-hidden
curl -sS -o /dev/null -w 'egress=%{http_code}\n' https://blocked.example.test/ || echo egress-failed
"""]
mounts = [
    { source = "data", target = "/data" },
    { source = "out", target = "/out", writable = true },
]

[[tool]]
name = "fails"
description = "Exits with status 3 after writing."
input_schema = { type = "object" }
[tool.run]
command = ["bash", "-c", "echo partial-output; echo the-reason >&2; exit 3"]

[[tool]]
name = "slow"
description = "Never finishes in time."
input_schema = { type = "object" }
timeout_ms = 1500
[tool.run]
command = ["sleep", "60"]

[[tool]]
name = "missing_program"
description = "Its program is there, its interpreter is not."
input_schema = { type = "object" }
[tool.run]
command = ["/tool/run.sh"]
mounts = [{ source = "bin", target = "/tool" }]

[[tool]]
name = "bad_image"
description = "Answers with an image type CMA does not take."
input_schema = { type = "object" }
[tool.run]
command = ["echo", '{"content": [{"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": "Qk0="}}]}']

[[tool]]
name = "desk_admin"
description = "A private-service path the policy does not allow."
input_schema = { type = "object" }
[tool.http]
url = "https://api.example.test/v1/admin"
"#;

const SCENARIO: &str = r#"
environment_id = "env_tools"

[[agents]]
id = "agent_tools"
name = "tools"
model = "claude-sonnet-4-5"

[[sessions]]
id = "sesn_tools"
agent = "agent_tools"

[[sessions.steps]]
tool = "context"
custom = true
input = { n = 7 }
expect = { is_error = false, contains = ["session=sesn_tools agent=agent_tools tool=context use=", "input={\"n\":7}", "a fact from the host", "data-read-only", "out-written", "host-hidden", "egress=403"] }

[[sessions.steps]]
tool = "context"
custom = true
input = { n = "seven" }
expect = { is_error = true, contains = ["does not match its input_schema", "did not run", "/n"] }

[[sessions.steps]]
tool = "fails"
custom = true
input = {}
expect = { is_error = true, contains = ["exited with status 3", "partial-output", "the-reason"] }

[[sessions.steps]]
tool = "slow"
custom = true
input = {}
expect = { is_error = true, contains = ["did not finish within its timeout_ms (1500 ms)", "killed"] }

[[sessions.steps]]
tool = "missing_program"
custom = true
input = {}
expect = { is_error = true, contains = ["could not be started"] }

[[sessions.steps]]
tool = "bad_image"
custom = true
input = {}
expect = { is_error = true, contains = ["content[0]", "image/bmp"] }

[[sessions.steps]]
tool = "desk_admin"
custom = true
input = {}
expect = { is_error = true, contains = ["the proxy refused the call", "403", "policy"] }

[[sessions.steps]]
tool = "not_in_the_file"
custom = true
input = {}
expect = { is_error = true, contains = ["no custom tool named \"not_in_the_file\"", "bad_image, context, desk_admin, fails, missing_program, slow"] }

# The session goes on: its own sandbox still answers, and sees none of the tools' files.
[[sessions.steps]]
tool = "bash"
input = { command = "cat /data/fact.txt /out/log 2>&1; echo still-here" }
expect = { is_error = false, contains = ["still-here", "/data/fact.txt: No such file", "/out/log: No such file"], not_contains = ["a fact from the host", "from the tool"] }
"#;

fn wait_for_log(world: &support::World, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log =
            std::fs::read_to_string(world.dir.path().join("controller.log")).unwrap_or_default();
        if log.contains(needle) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the controller's log\n{}",
            logs(world)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_tools_run_sandboxed_and_every_failure_is_a_result() {
    let scenario = Scenario::parse(SCENARIO).unwrap();
    let tools_dir = tempfile::Builder::new()
        .prefix("cordon-test-tools-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let dir = tools_dir.path();
    std::fs::create_dir(dir.join("data")).unwrap();
    std::fs::write(dir.join("data/fact.txt"), "a fact from the host\n").unwrap();
    std::fs::create_dir(dir.join("out")).unwrap();
    std::fs::create_dir(dir.join("bin")).unwrap();
    std::fs::write(dir.join("bin/run.sh"), "#!/opt/nowhere/interpreter\n").unwrap();
    std::fs::set_permissions(
        dir.join("bin/run.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(dir.join("tools.toml"), TOOLS).unwrap();
    // A host file outside every mount: the tool must not see it.
    let marker = std::path::Path::new("/etc/cordon-host-marker");
    std::fs::write(marker, "host").unwrap();
    struct Remove(&'static str);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(self.0);
        }
    }
    let _marker = Remove("/etc/cordon-host-marker");

    let (sim, world, controller) =
        start_with(&scenario, 246, "", Some(&dir.join("tools.toml"))).await;
    let report = sim.wait(Duration::from_secs(300)).await;
    assert_passed(&report, &world);

    // The writable mount kept what the tool wrote; the read-only one has nothing new.
    assert_eq!(
        std::fs::read_to_string(dir.join("out/log")).unwrap(),
        "from the tool\n"
    );
    assert!(!dir.join("data/new").exists());

    // Counted by tool and outcome; drift counted apart, under a closed label.
    let metrics = controller.admin("/metrics");
    for line in [
        "cordon_controller_custom_tool_calls_total{outcome=\"ok\",tool=\"context\"} 1",
        "cordon_controller_custom_tool_calls_total{outcome=\"invalid_input\",tool=\"context\"} 1",
        "cordon_controller_custom_tool_calls_total{outcome=\"error\",tool=\"fails\"} 1",
        "cordon_controller_custom_tool_calls_total{outcome=\"timeout\",tool=\"slow\"} 1",
        "cordon_controller_custom_tool_calls_total{outcome=\"error\",tool=\"missing_program\"} 1",
        "cordon_controller_custom_tool_calls_total{outcome=\"error\",tool=\"bad_image\"} 1",
        "cordon_controller_custom_tool_calls_total{outcome=\"refused\",tool=\"desk_admin\"} 1",
        "cordon_controller_custom_tool_calls_total{outcome=\"undeclared\",tool=\"undeclared\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    assert!(!metrics.contains("not_in_the_file"));

    // The proxy saw the tool as tool:context, labelled with the calling session, and refused
    // its request; nothing of any tool call stays registered.
    let audit = std::fs::read_to_string(world.dir.path().join("state/audit.log")).unwrap();
    let refused: Vec<serde_json::Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|r: &serde_json::Value| r["session"] == "tool:context" && r["kind"] == "request")
        .collect();
    assert!(
        refused.iter().any(|r| r["decision"] == "deny"
            && r["host"] == "blocked.example.test"
            && r["labels"]["session"] == "sesn_tools"
            && r["labels"]["tool"] == "context"),
        "{refused:?}"
    );
    wait_for_teardown(&world, "sesn_tools");
    assert!(
        !world.registrations().contains("tool:"),
        "{}",
        world.registrations()
    );

    // A broken edit: logged, and the previous tools keep serving; `tools check` lists the
    // errors. A good edit is served within a poll.
    let broken = format!(
        "{TOOLS}\n[[tool]]\nname = \"broken\"\ndescription = \"x\"\ninput_schema = {{ type = \"string\" }}\n"
    );
    std::fs::write(dir.join("tools.toml"), broken).unwrap();
    wait_for_log(&world, "the tools file has errors");
    let check = world.controller(&[
        "tools",
        "check",
        "--file",
        dir.join("tools.toml").to_str().unwrap(),
    ]);
    assert_eq!(check.status.code(), Some(65), "{check:?}");
    assert!(
        support::text(&check.stderr).contains("tool \"broken\": input_schema:"),
        "{check:?}"
    );
    let good = format!(
        "{TOOLS}\n[[tool]]\nname = \"added\"\ndescription = \"x\"\ninput_schema = {{ type = \"object\" }}\n[tool.run]\ncommand = [\"true\"]\n"
    );
    std::fs::write(dir.join("tools.toml"), good).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !controller
        .admin("/metrics")
        .contains("cordon_controller_custom_tool_calls_total{outcome=\"ok\",tool=\"added\"} 0")
    {
        assert!(
            Instant::now() < deadline,
            "the new tool was not served\n{}",
            logs(&world)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let schema = world.controller(&[
        "tools",
        "schema",
        "--file",
        dir.join("tools.toml").to_str().unwrap(),
    ]);
    let entries: serde_json::Value = serde_json::from_slice(&schema.stdout).unwrap();
    assert_eq!(entries.as_array().unwrap().len(), 7);
    assert_eq!(entries[0]["type"], "custom");

    // SIGHUP reloads a file whose modification time did not change (a checkout, a copy that
    // keeps times), which the poll alone would miss.
    let path = dir.join("tools.toml");
    let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(
        "\n[[tool]]\nname = \"hup\"\ndescription = \"x\"\ninput_schema = { type = \"object\" }\n[tool.run]\ncommand = [\"true\"]\n",
    );
    std::fs::write(&path, text).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(modified)
        .unwrap();
    let hup = "cordon_controller_custom_tool_calls_total{outcome=\"ok\",tool=\"hup\"} 0";
    std::thread::sleep(cordon_controller::tools::serve::WATCH_INTERVAL * 2);
    assert!(!controller.admin("/metrics").contains(hup));
    let pid = controller.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !controller.admin("/metrics").contains(hup) {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload\n{}",
            logs(&world)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(controller);
}

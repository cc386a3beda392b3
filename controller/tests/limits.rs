//! Root tier: a tool call stopped by a sandbox limit says which limit in its result and is
//! counted in `cordon_controller_sandbox_limit_hits_total{limit}`; the process limit and a
//! full workspace leave the sandbox running, the memory limit kills it and the session gets a
//! new sandbox with the same /workspace. Drives the tools the CMA runner calls.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use cordon_controller::cma::runner::ToolExecutor;
use cordon_controller::cma::tools::SessionTools;
use cordon_controller::config::SandboxConfig;
use cordon_controller::metrics::ControllerMetrics;
use cordon_controller::sandbox::Runtime;
use cordon_sandbox_agent::tools::{ToolCall, ToolResult};
use support::World;

async fn bash(tools: &SessionTools, command: &str) -> ToolResult {
    tools
        .call(&ToolCall {
            name: "bash".into(),
            input: serde_json::json!({ "command": command, "timeout_ms": 60_000 }),
        })
        .await
}

fn hits(metrics: &ControllerMetrics, limit: &str) -> u64 {
    metrics.sandbox_limit_hits.with_label_values(&[limit]).get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_limit_is_named_in_the_result_and_counted() {
    let world = World::new(
        244,
        28,
        "memory_mb = 160\npids = 32\nworkspace_max_mb = 16\n",
    );
    let config = SandboxConfig::load(&world.config()).unwrap();
    let runtime = Arc::new(Runtime::open(config).unwrap());
    runtime.start("l1", None).await.unwrap();
    let metrics = ControllerMetrics::new().unwrap();
    let tools = SessionTools::new(runtime.clone(), metrics.clone(), "l1", None).unwrap();
    let result = bash(&tools, "echo keep > /workspace/keep; ulimit -u").await;
    assert!(!result.is_error && result.text.contains("32"), "{result:?}");

    // Processes: a fork past the limit fails inside, the sandbox lives on.
    let result = bash(
        &tools,
        "printf 'import os, time\\nfor i in range(60):\\n    if os.fork() == 0:\\n        \
         time.sleep(3)\\n        os._exit(0)\\n' > /tmp/forks.py && python3 /tmp/forks.py",
    )
    .await;
    assert!(result.is_error, "{result:?}");
    assert!(
        result
            .text
            .contains("process limit (32 processes, [sandbox] pids)"),
        "{result:?}"
    );
    assert_eq!(hits(&metrics, "pids"), 1);
    assert!(runtime.sandbox_running("l1").await);

    // The workspace quota: ENOSPC inside, named, nothing else on the host affected.
    let result = bash(&tools, "dd if=/dev/zero of=/workspace/big bs=1M count=64").await;
    assert!(result.is_error, "{result:?}");
    assert!(
        result.text.contains("No space left on device")
            && result.text.contains("[sandbox] workspace_max_mb"),
        "{result:?}"
    );
    assert_eq!(hits(&metrics, "workspace_disk"), 1);
    let result = bash(&tools, "rm /workspace/big && echo freed").await;
    assert!(!result.is_error, "{result:?}");

    // Memory: gVisor does not OOM-kill inside; the host's memory cgroup kills the sandbox.
    // The result says so, and the next call runs in a new sandbox on the same workspace.
    let result = bash(
        &tools,
        "python3 -c 'b = bytearray(400 * 1024 * 1024); print(len(b))'",
    )
    .await;
    assert!(result.is_error, "{result:?}");
    assert!(
        result
            .text
            .contains("memory limit (160 MiB, [sandbox] memory_mb)")
            && result.text.contains("A new sandbox was started"),
        "{result:?}"
    );
    assert_eq!(hits(&metrics, "memory"), 1);
    let result = bash(&tools, "cat /workspace/keep").await;
    assert_eq!((result.is_error, result.text.trim()), (false, "keep"));
    assert_eq!(hits(&metrics, "pids") + hits(&metrics, "workspace_disk"), 2);
    runtime.stop_all().await.unwrap();
}

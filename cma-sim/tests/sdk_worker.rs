//! The simulator speaks the real protocol: the official `anthropic` SDK's own
//! EnvironmentWorker (installed from PyPI into Cordon's virtualenv by
//! scripts/install-deps.sh) plays the toolset scenario through to the end against it, leases,
//! confirmations, pagination and the event stream included.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cordon_cma_sim::Sim;
use cordon_cma_sim::scenario::Scenario;
use cordon_cma_sim::world::WorldConfig;

fn python() -> PathBuf {
    let venv = std::env::var_os("CORDON_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/cordon/venv")
        });
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/install-deps.sh (make test does) to create the virtualenv with the anthropic SDK",
        python.display()
    );
    python
}

/// Kills the worker (by the pid we started) when the test ends, however it ends.
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn play(
    scenario: &str,
    config: WorldConfig,
) -> (cordon_cma_sim::report::Report, PathBuf, tempfile::TempDir) {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let scenario = Scenario::load(&manifest.join("scenarios").join(scenario)).unwrap();
    let key = config.environment_key.clone();
    let sim = Sim::start(&scenario, config, None, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    sim.open_sessions();
    let work = tempfile::tempdir().unwrap();
    let workdir = work.path().join("workspace");
    std::fs::create_dir(&workdir).unwrap();
    let log = work.path().join("worker.log");
    let child = Command::new(python())
        .arg(manifest.join("tests/sdk_worker.py"))
        .args([&sim.base_url(), &scenario.environment_id])
        .arg(&workdir)
        .env("CORDON_SIM_ENVIRONMENT_KEY", &key)
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("ANTHROPIC_AUTH_TOKEN")
        .env_remove("ANTHROPIC_BASE_URL")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _worker = Worker(child);
    let report = sim.wait(Duration::from_secs(120)).await;
    (report, log, work)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_sdk_worker_plays_a_scenario_through() {
    let (report, log, work) = play("toolset.toml", WorldConfig::default()).await;
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        report.passed,
        "{}\n--- worker log ---\n{log_text}",
        report.summary()
    );
    // The denied call never ran; the allowed one did; the work item was force-stopped by
    // the worker, which held its lease with heartbeats.
    assert!(!work.path().join("workspace/denied-ran").exists());
    let steps = &report.sessions[0].steps;
    assert_eq!(steps[8].outcome, "denied");
    assert_eq!(report.work[0].state, "stopped");
    assert!(report.work[0].force_stopped);
    assert!(report.work[0].heartbeats >= 1);
    assert_eq!(report.work[0].lease_conflicts, 0);
    for route in [
        "poll",
        "ack",
        "heartbeat",
        "get session",
        "list events",
        "stream events",
        "send events",
        "stop",
    ] {
        assert!(
            report.calls.get(route).copied().unwrap_or(0) >= 1,
            "{route}: {:?}",
            report.calls
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_worker_rides_out_injected_faults_without_a_sessions_token() {
    let config = WorldConfig {
        sessions_token: false,
        ..WorldConfig::default()
    };
    let (report, log, _work) = play("faults.toml", config).await;
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        report.passed,
        "{}\n--- worker log ---\n{log_text}",
        report.summary()
    );
    assert!(
        report.calls["poll"] >= 2,
        "the failed poll was retried: {:?}",
        report.calls
    );
    assert!(
        report.calls["stream events"] >= 2,
        "the dropped stream was reopened: {:?}",
        report.calls
    );
}

//! Root tier: sandboxes of different sessions start side by side, and the warm pool hands each
//! new session a ready sandbox of its own, never one another session used. Drives the
//! runtime's library API (what `serve` calls), on the real proxy, runsc and nftables.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Instant;

use cordon_controller::agent::{ExecRequest, exec};
use cordon_controller::config::SandboxConfig;
use cordon_controller::http::HttpClient;
use cordon_controller::sandbox::{Runtime, agent_endpoint};
use support::{World, text};

/// Runs `script` with `sh -c` in session `id`'s sandbox: (exit status, stdout).
async fn sh(config: &SandboxConfig, id: &str, script: &str) -> (i32, String) {
    let (agent, token) = agent_endpoint(config, id).unwrap();
    let mut out = String::new();
    let request = ExecRequest {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        cwd: None,
        env: Default::default(),
        timeout_ms: Some(20_000),
        stdin: None,
    };
    let outcome = exec(
        &HttpClient::default(),
        agent,
        &token,
        &request,
        |stderr, chunk| {
            if !stderr {
                out.push_str(chunk);
            }
        },
    )
    .await
    .unwrap();
    (outcome.exit_status(), out)
}

fn runtime(world: &World) -> (Runtime, SandboxConfig) {
    let config = SandboxConfig::load(&world.config()).unwrap();
    (Runtime::open(config.clone()).unwrap(), config)
}

/// The firewall table's pinned sources.
fn firewall_sources(world: &World) -> String {
    let out = std::process::Command::new("nft")
        .args(["list", "set", "inet", &world.prefix, "sources"])
        .output()
        .unwrap();
    text(&out.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_of_different_sessions_overlap_and_each_sandbox_is_its_own() {
    let world = World::new(239, 27, "");
    let (runtime, config) = runtime(&world);
    let ids = ["c1", "c2", "c3", "c4"];
    let begun = Instant::now();
    let results = futures_util::future::join_all(ids.iter().map(|id| {
        let runtime = &runtime;
        async move {
            let from = begun.elapsed();
            let started = runtime.start(id, None).await;
            (from, begun.elapsed(), started)
        }
    }))
    .await;
    let mut spans = Vec::new();
    for (id, (from, to, started)) in ids.iter().zip(results) {
        let started = started.unwrap_or_else(|e| panic!("start {id}: {e}"));
        assert!(!started.warm);
        spans.push((from, to));
    }
    // Serialised starts would follow one another; concurrent ones overlap: every start began
    // before the first one ended.
    let first_end = spans.iter().map(|s| s.1).min().unwrap();
    let last_begin = spans.iter().map(|s| s.0).max().unwrap();
    assert!(
        last_begin < first_end,
        "the starts did not overlap: {spans:?}"
    );
    // Every sandbox is pinned in the firewall, answers, and sees only its own workspace.
    let sources = firewall_sources(&world);
    for id in ids {
        let address = agent_endpoint(&config, id).unwrap().0.ip().to_string();
        assert!(sources.contains(&address), "{address} in {sources}");
        let (status, _) = sh(&config, id, &format!("echo {id} > /workspace/mine")).await;
        assert_eq!(status, 0);
    }
    for id in ids {
        let (status, out) = sh(&config, id, "cat /workspace/*").await;
        assert_eq!((status, out.trim()), (0, id), "{id} sees only its own file");
    }
    // Stops run side by side too, and leave nothing.
    let stopped = futures_util::future::join_all(ids.iter().map(|id| runtime.stop(id))).await;
    for (id, result) in ids.iter().zip(stopped) {
        result.unwrap_or_else(|e| panic!("stop {id}: {e}"));
    }
    assert!(world.containers().is_empty(), "{:?}", world.containers());
    assert!(world.host_interfaces().is_empty());
    assert!(
        !firewall_sources(&world).contains("10.239."),
        "{}",
        firewall_sources(&world)
    );
    runtime.stop_all().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_sandbox_serves_one_new_session_and_shows_it_nothing_of_another() {
    let world = World::new(240, 27, "warm = 1\n");
    let (runtime, config) = runtime(&world);
    assert!(runtime.fill_warm().await.is_empty());
    let warm = runtime.list().unwrap();
    assert_eq!(warm.len(), 1, "{warm:?}");
    assert_eq!(warm[0].state, "warm");
    // Unclaimed, it is no session's: the proxy does not know its address.
    let warm_address = warm[0].address.to_string();
    assert!(!world.registrations().contains(&warm_address));
    assert!(firewall_sources(&world).contains(&warm_address));

    let first = runtime.start("w1", None).await.unwrap();
    assert!(first.warm, "a new session claims the warm sandbox");
    assert_eq!(first.sandbox_address.to_string(), warm_address);
    let registrations = world.registrations();
    assert!(
        registrations.contains("w1") && registrations.contains(&warm_address),
        "{registrations}"
    );
    let (status, out) = sh(&config, "w1", "ls -A /workspace; echo one > /workspace/f").await;
    assert_eq!(
        (status, out.as_str()),
        (0, ""),
        "a claimed workspace is empty"
    );

    // The pool refills with a new sandbox; the next session gets that one.
    assert!(runtime.fill_warm().await.is_empty());
    let second = runtime.start("w2", None).await.unwrap();
    assert!(second.warm);
    assert_ne!(second.sandbox_address, first.sandbox_address);
    let (_, w1_token) = agent_endpoint(&config, "w1").unwrap();
    let (_, w2_token) = agent_endpoint(&config, "w2").unwrap();
    assert_ne!(w1_token, w2_token);
    let (status, out) = sh(&config, "w2", "ls -A /workspace").await;
    assert_eq!((status, out.as_str()), (0, ""), "w2 sees nothing of w1");

    // A claimed sandbox serves its session only: stopped, it is gone, and the session's next
    // start (it has a workspace now) is a cold one that mounts that workspace again.
    runtime.stop("w1").await.unwrap();
    assert!(runtime.fill_warm().await.is_empty());
    let again = runtime.start("w1", None).await.unwrap();
    assert!(!again.warm, "a session with a workspace starts cold");
    let (status, out) = sh(&config, "w1", "cat /workspace/f").await;
    assert_eq!((status, out.as_str()), (0, "one\n"));
    assert_eq!(
        runtime
            .list()
            .unwrap()
            .iter()
            .filter(|s| s.state == "warm")
            .count(),
        1,
        "the warm sandbox made after w2's claim is still waiting"
    );

    // Everything goes, the pool's sandboxes and their workspaces included.
    runtime.stop_all().await.unwrap();
    assert!(world.containers().is_empty(), "{:?}", world.containers());
    let left: Vec<_> = runtime
        .list()
        .unwrap()
        .into_iter()
        .filter(|s| s.state == "warm" || s.id.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let mut workspaces: Vec<String> = std::fs::read_dir(config.workspace_root.clone())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".warm"))
        .map(|n| n.trim_end_matches(".img").to_string())
        .collect();
    workspaces.sort();
    workspaces.dedup();
    assert_eq!(
        workspaces.len(),
        2,
        "only the two claimed warm workspaces (now w1's and w2's) stay: {workspaces:?}"
    );
}

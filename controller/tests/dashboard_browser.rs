//! The dashboard in a real browser (headless Chromium over WebDriver), root tier: the demo
//! session runs for real (the simulator's webhook, a gVisor sandbox, the proxy) while an
//! operator watches it appear live, opens it and sees the request the policy denied with its
//! reason, uploads a file into its workspace and reads it back in a terminal, downloads it
//! after the sandbox stopped, tries a request in the policy form, and reads the overview,
//! secrets and webhooks; a viewer is offered no operator action and is refused one sent by hand.
//!
//! With CORDON_DASHBOARD_SCREENSHOTS=<dir> (`make dashboard-screenshots`) each page is saved
//! there as a PNG for docs/DASHBOARD.md.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use cordon_cma_sim::scenario::Scenario;
use cordon_testkit::free_port;
use fantoccini::{Client, Locator};
use support::browser::{Driver, choose, click, fill, screenshot, type_into, wait_for_text};
use support::cma::{TOKEN, assert_passed, demo, example_tools, prepare};

const PASSWORD: &str = "dashboard-test-password";

fn add_user(config: &std::path::Path, name: &str, role: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cordon-controller"))
        .args([
            "dashboard",
            "user",
            "add",
            name,
            "--role",
            role,
            "--password-stdin",
            "--config",
        ])
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(PASSWORD.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
}

async fn log_in(client: &Client, base: &str, user: &str) {
    client.goto(&format!("{base}/login")).await.unwrap();
    type_into(client, "#user", user).await;
    type_into(client, "#password", PASSWORD).await;
    click(client, "button[type=submit]").await;
    wait_for_text(client, "header .who", user, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_watches_the_demo_session_live_and_a_viewer_cannot_act() {
    // The demo scenario, and a last call that keeps its sandbox running for the terminal.
    let scratch = tempfile::tempdir().unwrap();
    let mut text = std::fs::read_to_string(demo("scenario.toml")).unwrap();
    text.push_str(
        "\n[[sessions.steps]]\ntool = \"bash\"\ninput = { command = \"sleep 50; echo held\" }\n\
         expect = { is_error = false, contains = [\"held\"] }\n",
    );
    std::fs::write(scratch.path().join("scenario.toml"), text).unwrap();
    let scenario = Scenario::load(&scratch.path().join("scenario.toml")).unwrap();
    let session = scenario.sessions[0].id().to_string();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let tools = example_tools();
    let (sim, world, _controller) = prepare(
        &scenario,
        249,
        "",
        Some(&tools),
        &format!("[dashboard]\nlisten = \"127.0.0.1:{port}\"\n"),
        |world| {
            add_user(&world.config(), "ops", "operator");
            add_user(&world.config(), "watcher", "viewer");
        },
    )
    .await;
    assert!(
        cordon_testkit::wait_for_port(port, Duration::from_secs(30)),
        "the dashboard did not start:\n{}",
        std::fs::read_to_string(world.dir.path().join("controller.log")).unwrap_or_default()
    );
    let driver = Driver::start();
    let ops = driver.browser("ops").await;

    // The login page, a wrong password, then the operator's login.
    ops.goto(&format!("{base}/")).await.unwrap();
    screenshot(&ops, "login").await;
    type_into(&ops, "#user", "ops").await;
    type_into(&ops, "#password", "not the password").await;
    click(&ops, "button[type=submit]").await;
    wait_for_text(
        &ops,
        "p.error",
        "Wrong user name or password.",
        Duration::from_secs(10),
    )
    .await;
    log_in(&ops, &base, "ops").await;

    // The sessions page is open before the session exists; the row appears without a reload.
    ops.goto(&format!("{base}/sessions")).await.unwrap();
    let before = ops.source().await.unwrap();
    assert!(!before.contains(&format!("data-session=\"{session}\"")));
    sim.open_sessions();
    wait_for_text(&ops, "#live", &session, Duration::from_secs(90)).await;
    assert_eq!(
        ops.current_url().await.unwrap().path(),
        "/sessions",
        "no navigation happened"
    );

    // Its page: the denied request with the policy's reason, inside the tool call that made it.
    // The live region is re-rendered under the pointer: follow the row's link by its address.
    let link = format!("/sessions/{session}");
    assert!(
        ops.source()
            .await
            .unwrap()
            .contains(&format!("href=\"{link}\""))
    );
    ops.goto(&format!("{base}{link}")).await.unwrap();
    let denied = wait_for_text(
        &ops,
        "#live",
        "not on the demo allow list",
        Duration::from_secs(120),
    )
    .await;
    assert!(denied.contains("blocked.example.test"), "{denied}");
    let call = ops
        .find(Locator::Css("tr.decision.deny"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(call.contains("/upload") && call.contains("POST"), "{call}");
    // A file uploaded into the running session's workspace from the file browser.
    ops.goto(&format!("{base}/sessions/{session}"))
        .await
        .unwrap();
    click(&ops, "#files").await;
    wait_for_text(&ops, "#usage", "quota", Duration::from_secs(10)).await;
    let local = scratch.path().join("hello-upload.txt");
    std::fs::write(&local, "uploaded-from-the-browser\n").unwrap();
    type_into(&ops, "#file", local.to_str().unwrap()).await;
    click(&ops, "#upload button[type=submit]").await;
    wait_for_text(
        &ops,
        "#outcome",
        "Uploaded hello-upload.txt",
        Duration::from_secs(10),
    )
    .await;
    wait_for_text(&ops, "#files", "hello-upload.txt", Duration::from_secs(10)).await;
    screenshot(&ops, "files").await;

    // A terminal into the running sandbox (its last call sleeps), typed into and read back,
    // in two tabs; opening it is audited with who did it. The upload is there inside.
    ops.goto(&format!("{base}/sessions/{session}"))
        .await
        .unwrap();
    click(&ops, "#terminal").await;
    let shell = ".pane.active .xterm-rows";
    wait_for_text(&ops, shell, "#", Duration::from_secs(30)).await;
    type_into(
        &ops,
        ".pane.active .xterm-helper-textarea",
        "echo hi-$((6*7))\u{E007}",
    )
    .await;
    let screen = wait_for_text(&ops, shell, "hi-42", Duration::from_secs(20)).await;
    assert!(screen.contains("echo hi-$((6*7))"), "{screen}");
    click(&ops, "#new-tab").await;
    wait_for_text(&ops, shell, "#", Duration::from_secs(30)).await;
    type_into(
        &ops,
        ".pane.active .xterm-helper-textarea",
        "pwd; cat hello-upload.txt\u{E007}",
    )
    .await;
    wait_for_text(&ops, shell, "/workspace", Duration::from_secs(20)).await;
    wait_for_text(
        &ops,
        shell,
        "uploaded-from-the-browser",
        Duration::from_secs(20),
    )
    .await;
    screenshot(&ops, "terminal").await;
    let audit =
        std::fs::read_to_string(world.dir.path().join("state/controller/audit.jsonl")).unwrap();
    assert!(
        audit
            .lines()
            .filter(|l| l.contains("\"terminal_open\"") && l.contains("\"user\":\"ops\""))
            .count()
            >= 2,
        "{audit}"
    );
    let report = sim.wait(Duration::from_secs(240)).await;
    assert_passed(&report, &world);
    // The whole timeline is in: the allowed call with the credential injected by name.
    ops.goto(&format!("{base}/sessions/{session}"))
        .await
        .unwrap();
    let timeline = wait_for_text(&ops, "#live", "read", Duration::from_secs(10)).await;
    assert!(
        timeline.contains("example-api->authorization"),
        "{timeline}"
    );
    assert!(!timeline.contains(TOKEN), "the token is never shown");
    // The chart the order_chart tool answered with is in its call, and the browser draws it
    // once it is in view (thumbnails load lazily).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let drawn = ops
            .execute(
                "const img = document.querySelector('.call .images img'); \
                 if (!img) return null; img.scrollIntoView(); \
                 return img.complete && img.naturalWidth > 0;",
                vec![],
            )
            .await
            .unwrap();
        if drawn == serde_json::json!(true) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the chart does not show in the timeline: {drawn}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ops.execute("window.scrollTo(0, 0); return null;", vec![])
        .await
        .unwrap();
    screenshot(&ops, "session").await;
    ops.goto(&format!("{base}/sessions")).await.unwrap();
    screenshot(&ops, "sessions").await;

    // The overview: the proxy's health and the latest denial.
    ops.goto(&format!("{base}/")).await.unwrap();
    wait_for_text(&ops, "#card-proxy", "ready", Duration::from_secs(10)).await;
    wait_for_text(
        &ops,
        "#denials",
        "blocked.example.test",
        Duration::from_secs(10),
    )
    .await;
    screenshot(&ops, "overview").await;

    // Try a request: decided by the proxy as a registered session, nothing sent.
    let try_session = "cordon-test-dashboard-try";
    let registered = Command::new("curl")
        .args([
            "-sSf",
            "-X",
            "PUT",
            "-d",
            r#"{"source": "10.249.250.2"}"#,
            &format!(
                "http://127.0.0.1:{}/sessions/{try_session}",
                world.ports.admin
            ),
        ])
        .output()
        .unwrap();
    assert!(registered.status.success());
    let upstream_before = world.received.lock().unwrap().len();
    ops.goto(&format!("{base}/policy")).await.unwrap();
    choose(&ops, "#session", try_session).await;
    choose(&ops, "#method", "POST").await;
    type_into(&ops, "#url", "https://blocked.example.test/upload").await;
    click(&ops, "#try button[type=submit]").await;
    let decided = wait_for_text(&ops, "#decision", "deny", Duration::from_secs(10)).await;
    assert!(decided.contains("not on the demo allow list"), "{decided}");
    fill(&ops, "#url", "https://api.example.test/v1/user").await;
    choose(&ops, "#method", "GET").await;
    click(&ops, "#try button[type=submit]").await;
    // Not "allow": the deny shown until the new answer arrives says "not on the demo allow
    // list".
    let allowed = wait_for_text(
        &ops,
        "#decision",
        "example-api->authorization",
        Duration::from_secs(10),
    )
    .await;
    assert!(allowed.contains("allow"), "{allowed}");
    screenshot(&ops, "policy").await;
    assert_eq!(
        world.received.lock().unwrap().len(),
        upstream_before,
        "trying a request sends nothing upstream"
    );

    // Secrets: names and bindings, never the value.
    ops.goto(&format!("{base}/secrets")).await.unwrap();
    wait_for_text(&ops, "#secrets", "example-api", Duration::from_secs(10)).await;
    assert!(!ops.source().await.unwrap().contains(TOKEN));
    screenshot(&ops, "secrets").await;

    // Webhooks: the simulator's deliveries, verified and accepted.
    ops.goto(&format!("{base}/webhooks")).await.unwrap();
    let deliveries = wait_for_text(
        &ops,
        "#deliveries",
        "session.status_run_started",
        Duration::from_secs(10),
    )
    .await;
    assert!(deliveries.contains("accepted"), "{deliveries}");
    screenshot(&ops, "webhooks").await;

    // A stopped session has no terminal, and says why.
    // (The warm sandbox of the example custom tools stays.)
    support::cma::wait_for_teardown_leaving(&world, &session, 1);
    ops.goto(&format!("{base}/sessions/{session}/terminal"))
        .await
        .unwrap();
    wait_for_text(&ops, "main", "No terminal", Duration::from_secs(10)).await;

    // Its workspace outlives the sandbox: the uploaded file is downloaded from it.
    ops.goto(&format!("{base}/sessions/{session}/files"))
        .await
        .unwrap();
    wait_for_text(&ops, "#files", "hello-upload.txt", Duration::from_secs(10)).await;
    click(&ops, "#files tr[data-name='hello-upload.txt'] a.file").await;
    let saved = driver.downloads("ops").join("hello-upload.txt");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !saved.exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        std::fs::read_to_string(&saved).unwrap_or_default(),
        "uploaded-from-the-browser\n",
        "the download"
    );
    let audit =
        std::fs::read_to_string(world.dir.path().join("state/controller/audit.jsonl")).unwrap();
    for action in ["\"file_upload\"", "\"file_download\""] {
        assert!(
            audit
                .lines()
                .any(|l| l.contains(action) && l.contains("hello-upload.txt")),
            "{action} in {audit}"
        );
    }
    ops.close().await.unwrap();

    // A viewer: every page, no operator action offered, and one sent by hand refused.
    let viewer = driver.browser("watcher").await;
    log_in(&viewer, &base, "watcher").await;
    viewer.goto(&format!("{base}/policy")).await.unwrap();
    assert!(
        viewer.find(Locator::Id("reload")).await.is_err(),
        "no reload button for a viewer"
    );
    viewer
        .goto(&format!("{base}/sessions/{session}"))
        .await
        .unwrap();
    assert!(viewer.find(Locator::Id("stop")).await.is_err());
    viewer
        .goto(&format!("{base}/sessions/{session}/files"))
        .await
        .unwrap();
    wait_for_text(
        &viewer,
        "#files",
        "hello-upload.txt",
        Duration::from_secs(10),
    )
    .await;
    assert!(
        viewer.find(Locator::Id("upload")).await.is_err(),
        "no upload form for a viewer"
    );
    let status = viewer
        .execute_async(
            r#"const done = arguments[arguments.length - 1];
               const csrf = document.querySelector("input[name=csrf]").value;
               fetch("/policy/reload", {method: "POST", body: new URLSearchParams({csrf})})
                 .then(r => done(r.status));"#,
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(status, serde_json::json!(403));
    viewer.close().await.unwrap();
}

//! The browser built-in end to end, root tier (issue 17): the simulator's agent calls the
//! `browser_*` tools; the real controller answers them in the session's own gVisor sandbox on
//! the browser image (examples/images/browser.toml), where Chromium's every request leaves
//! through the real proxy under the session's identity. The page loads a script and an API
//! call (allowed, with the demo token injected by the proxy) and an image from a host the
//! policy denies (a failed sub-resource, and a deny in the audit log): the page still renders.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use cordon_cma_sim::scenario::Scenario;
use cordon_testkit::{Received, TestPki, read_head, spawn_tls_server};
use support::cma::{TOKEN, assert_passed, start_on, wait_for_teardown};
use tokio::io::AsyncWriteExt;

const SCENARIO: &str = r##"
environment_id = "env_browser"

[[sessions]]
id = "sesn_browser"

[[sessions.steps]]
tool = "browser_navigate"
custom = true
input = { url = "https://api.example.test/page" }
expect = { is_error = false, contains = ["status 200", "\"Cordon browser test\""] }

[[sessions.steps]]
tool = "browser_markdown"
custom = true
input = {}
expect = { is_error = false, contains = ["# Orders", "changed by JavaScript", "api: authorized"], not_contains = ["cordon-demo-token"] }

[[sessions.steps]]
tool = "browser_screenshot"
custom = true
input = {}
expect = { is_error = false, contains = ["1280x800 PNG", "[image image/png"] }

[[sessions.steps]]
tool = "browser_evaluate"
custom = true
input = { expression = "document.querySelector('img').naturalWidth" }
expect = { is_error = false, contains = ["0"] }

[[sessions.steps]]
tool = "browser_type"
custom = true
input = { selector = "#q", text = "cordon", submit = true }
expect = { is_error = false, contains = ["/search?q=cordon", "\"Results\""] }

[[sessions.steps]]
tool = "browser_navigate"
custom = true
input = { url = "file:///etc/passwd" }
expect = { is_error = true, contains = ["http:// and https://"] }

[[sessions.steps]]
tool = "browser_click"
custom = true
input = { selector = "#missing" }
expect = { is_error = true, contains = ["no element matches the selector"] }

[[sessions.steps]]
tool = "browser_back"
custom = true
input = {}
expect = { is_error = false, contains = ["\"Cordon browser test\""] }

# The browser runs in the session's own sandbox, and its profile is the sandbox's.
[[sessions.steps]]
tool = "bash"
input = { command = "ls -d /tmp/cordon-browser/home/.pki/nssdb && echo in-this-sandbox" }
expect = { is_error = false, contains = ["in-this-sandbox"] }
"##;

const PAGE: &str = r#"<!doctype html><html><head><title>Cordon browser test</title></head><body>
<h1>Orders</h1><p id="msg">before</p><p id="api">api: pending</p>
<img src="https://blocked.example.test/pixel.png" alt="pixel">
<form action="/search" method="get"><input name="q" id="q"><button type="submit">Search</button></form>
<script src="/app.js"></script>
</body></html>"#;

/// Synchronous, so the page's load event waits for the API's answer.
const SCRIPT: &str = "document.getElementById('msg').textContent = 'changed by JavaScript';
var x = new XMLHttpRequest(); x.open('GET', '/v1/whoami', false); x.send();
document.getElementById('api').textContent = 'api: ' + x.responseText;";

/// The site every host name reaches: a page, its script, an API that says whether the demo
/// token came with the call (the page never sees the token), and a search page.
fn site(pki: &TestPki) -> (SocketAddr, Received) {
    let received = Received::default();
    let log = received.clone();
    let address = spawn_tls_server(pki, b"http/1.1", move |mut tls| {
        let log = log.clone();
        async move {
            while let Some(head) = read_head(&mut tls).await {
                let head = String::from_utf8_lossy(&head).into_owned();
                log.lock().unwrap().push(head.clone());
                let target = head.split(' ').nth(1).unwrap_or("/").to_string();
                let authorized = head
                    .lines()
                    .any(|l| l.eq_ignore_ascii_case(&format!("authorization: Bearer {TOKEN}")));
                let (status, kind, body) = match target.split('?').next().unwrap_or("/") {
                    "/page" => ("200 OK", "text/html", PAGE.to_string()),
                    "/app.js" => ("200 OK", "text/javascript", SCRIPT.to_string()),
                    "/v1/whoami" if authorized => ("200 OK", "text/plain", "authorized".into()),
                    "/v1/whoami" => ("200 OK", "text/plain", "anonymous".into()),
                    "/search" => (
                        "200 OK",
                        "text/html",
                        "<html><head><title>Results</title></head><body>Results</body></html>"
                            .into(),
                    ),
                    _ => ("404 Not Found", "text/plain", "not here".into()),
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                if tls.write_all(response.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    });
    (address, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browser_runs_in_the_sandbox_behind_the_gateway() {
    let images = support::test_images();
    assert!(
        std::fs::read_to_string(images.join("index.json"))
            .unwrap()
            .contains("\"browser\""),
        "no browser image in {}: run `make test` (it builds one), or `cordon-controller image \
         build browser --from-file examples/images/browser.toml --store {}`",
        images.display(),
        images.display()
    );
    let scenario = Scenario::parse(SCENARIO).unwrap();
    let tools = tempfile::Builder::new()
        .prefix("cordon-test-browser-tools-")
        .tempdir()
        .unwrap();
    let file = tools.path().join("tools.toml");
    std::fs::write(&file, "[builtins]\nbrowser = true\n").unwrap();

    let (sim, world, controller) = start_on(
        &scenario,
        249,
        "image = \"browser\"\nmemory_mb = 2048\n",
        Some(&file),
        Some(site),
    )
    .await;
    let report = sim.wait(Duration::from_secs(300)).await;
    assert_passed(&report, &world);

    // Recorded with the session for its timeline: each action's URL and timing, and the
    // screenshot itself.
    let store =
        cordon_controller::store::Store::open(&world.dir.path().join("state/controller/state.db"))
            .unwrap();
    let calls = store.tool_calls("sesn_browser", 50).unwrap();
    let navigate = calls
        .iter()
        .find(|c| c.name == "browser_navigate" && !c.is_error)
        .unwrap_or_else(|| panic!("{calls:#?}"));
    assert!(
        navigate
            .input_summary
            .contains("https://api.example.test/page")
    );
    assert!(navigate.result_excerpt.contains("status 200"));
    assert!(navigate.duration_ms > 0);
    let shot = calls
        .iter()
        .find(|c| c.name == "browser_screenshot")
        .unwrap();
    let (media, png) = store
        .tool_image("sesn_browser", &shot.tool_use_id, 0)
        .unwrap()
        .expect("the screenshot is kept");
    assert_eq!(media, "image/png");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

    // The page's requests went through the proxy as the session's: the script and the API
    // call allowed (the token injected on the way), the image from the denied host refused.
    let audit = std::fs::read_to_string(world.dir.path().join("state/audit.log")).unwrap();
    let records: Vec<serde_json::Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|r: &serde_json::Value| r["kind"] == "request" && r["session"] == "sesn_browser")
        .collect();
    let find = |host: &str, path: &str| {
        records
            .iter()
            .find(|r| r["host"] == host && r["path"] == path)
            .unwrap_or_else(|| panic!("no record of {host}{path}: {records:#?}"))
    };
    assert_eq!(find("api.example.test", "/page")["decision"], "allow");
    assert_eq!(find("api.example.test", "/app.js")["decision"], "allow");
    assert_eq!(find("api.example.test", "/v1/whoami")["decision"], "allow");
    let denied = find("blocked.example.test", "/pixel.png");
    assert_eq!(denied["decision"], "deny", "{denied}");
    let heads = world.received.lock().unwrap().clone();
    assert!(
        heads
            .iter()
            .any(|h| h.starts_with("GET /v1/whoami") && h.contains(&format!("Bearer {TOKEN}"))),
        "the token was injected into the page's call: {heads:#?}"
    );
    assert!(
        heads.iter().any(|h| h.starts_with("GET /search?q=cordon ")),
        "{heads:#?}"
    );
    assert!(!heads.iter().any(|h| h.contains("pixel.png")), "{heads:#?}");

    // Served and counted as the built-in tools they are.
    let metrics = controller.admin("/metrics");
    for line in [
        "cordon_controller_custom_tool_calls_total{outcome=\"ok\",tool=\"browser_navigate\"} 1",
        "cordon_controller_custom_tool_calls_total{outcome=\"error\",tool=\"browser_navigate\"} 1",
        "cordon_controller_custom_tool_calls_total{outcome=\"ok\",tool=\"browser_screenshot\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    // The browser ends with the session's sandbox.
    wait_for_teardown(&world, "sesn_browser");
    drop(controller);
}

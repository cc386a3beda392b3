//! The browser tools against Debian's Chromium on the host (installed by
//! scripts/install-deps.sh) and a test site on 127.0.0.1. Chromium is kept off every other
//! address: its resolver maps every name but 127.0.0.1 to nothing. The same tools inside a
//! gVisor sandbox, behind the gateway, are the controller's tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::{get, post};
use base64::Engine;
use cordon_sandbox_agent::browser::{Browser, BrowserCall, BrowserConfig, BrowserReply};
use serde_json::{Value, json};

const START: &str = r#"<!doctype html><html><head><title>Start</title></head><body>
<h1>Orders</h1><p id="msg">before</p>
<script>document.getElementById('msg').textContent = 'changed by JavaScript';</script>
<form action="/submit" method="post"><input name="q" id="q"><button type="submit">Send</button></form>
<a href="/second">Second page</a> <a href="/download">Get the report</a>
<div style="height: 3000px"></div>
</body></html>"#;

/// The site: a start page (sets a cookie), a second page, a form target that records what it
/// got, a page that shows the cookie it was sent, and one that never answers.
async fn site() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let posted = Arc::new(Mutex::new(Vec::new()));
    let seen = posted.clone();
    let app = Router::new()
        .route(
            "/",
            get(|| async {
                (
                    [(header::SET_COOKIE, "visit=1; Path=/")],
                    Html(START),
                )
            }),
        )
        .route(
            "/second",
            get(|| async { Html("<html><head><title>Second</title></head><body><p>Second page text</p></body></html>") }),
        )
        .route(
            "/cookie",
            get(|headers: axum::http::HeaderMap| async move {
                let cookie = headers
                    .get(header::COOKIE)
                    .and_then(|c| c.to_str().ok())
                    .unwrap_or("none")
                    .to_string();
                Html(format!("<html><head><title>Cookie</title></head><body><p>cookie: {cookie}</p></body></html>"))
            }),
        )
        .route(
            "/submit",
            post(move |body: String| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push(body);
                    Html("<html><head><title>Thanks</title></head><body>Thanks</body></html>")
                }
            }),
        )
        .route(
            "/download",
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "text/plain"),
                        (
                            header::CONTENT_DISPOSITION,
                            "attachment; filename=\"report.txt\"",
                        ),
                    ],
                    "the report\n",
                )
            }),
        )
        .route(
            "/never",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                "late".into_response()
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (address, posted)
}

fn config(profile: &std::path::Path, downloads: &std::path::Path) -> BrowserConfig {
    BrowserConfig {
        profile: profile.to_path_buf(),
        ca: None,
        downloads: downloads.to_path_buf(),
        executable: None,
        action_timeout: Duration::from_secs(5),
        // Hermetic: no name resolves, and only 127.0.0.1 is reached.
        extra_args: vec!["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1".into()],
    }
}

async fn call(browser: &Browser, name: &str, input: Value) -> BrowserReply {
    browser
        .call(&BrowserCall {
            name: name.to_string(),
            input,
        })
        .await
}

fn text(reply: &BrowserReply) -> String {
    reply
        .content
        .iter()
        .filter_map(|b| b["text"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

fn ok(reply: &BrowserReply) -> String {
    assert!(!reply.is_error, "{reply:?}");
    text(reply)
}

fn failed(reply: &BrowserReply) -> String {
    assert!(reply.is_error, "{reply:?}");
    text(reply)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browser_tools_drive_a_real_chromium() {
    let (site, posted) = site().await;
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("profile");
    let browser = Browser::new(config(&profile, dir.path()));
    let base = format!("http://{site}");

    // navigate: final URL, status, title.
    let said = ok(&call(
        &browser,
        "browser_navigate",
        json!({"url": format!("{base}/")}),
    )
    .await);
    assert!(said.contains("status 200"), "{said}");
    assert!(said.contains("\"Start\""), "{said}");
    assert!(profile.exists(), "the profile is made at the first call");

    // markdown: the page after its script ran.
    let md = ok(&call(&browser, "browser_markdown", json!({})).await);
    assert!(md.contains("# Orders"), "{md}");
    assert!(
        md.contains("changed by JavaScript") && !md.contains("before"),
        "{md}"
    );

    // screenshot: a PNG of the viewport, as an image block.
    let shot = call(&browser, "browser_screenshot", json!({})).await;
    assert!(ok(&shot).contains("1280x800"), "{shot:?}");
    let image = &shot.content[1];
    assert_eq!(image["type"], "image");
    assert_eq!(image["source"]["media_type"], "image/png");
    let png = base64::engine::general_purpose::STANDARD
        .decode(image["source"]["data"].as_str().unwrap())
        .unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 1280);
    assert_eq!(u32::from_be_bytes(png[20..24].try_into().unwrap()), 800);

    // scroll, then evaluate what the page says of it.
    let said = ok(&call(&browser, "browser_scroll", json!({"pixels": 500})).await);
    assert!(said.contains("y=500"), "{said}");
    let said = ok(&call(
        &browser,
        "browser_evaluate",
        json!({"expression": "window.scrollY + 1"}),
    )
    .await);
    assert_eq!(said.trim(), "501");
    // A promise is awaited: the page's own fetch.
    let said = ok(&call(
        &browser,
        "browser_evaluate",
        json!({"expression": "fetch('/second').then(r => r.text()).then(t => t.includes('Second page text'))"}),
    )
    .await);
    assert_eq!(said.trim(), "true");

    // type and submit: the site gets the form.
    let said = ok(&call(
        &browser,
        "browser_type",
        json!({"selector": "#q", "text": "hello world", "submit": true}),
    )
    .await);
    assert!(said.contains("/submit"), "{said}");
    assert_eq!(*posted.lock().unwrap(), vec!["q=hello+world".to_string()]);

    // back, then click a link by its text.
    let said = ok(&call(&browser, "browser_back", json!({})).await);
    assert!(said.contains("\"Start\""), "{said}");
    // A download lands in the workspace.
    ok(&call(&browser, "browser_click", json!({"text": "Get the report"})).await);
    let report = dir.path().join("report.txt");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&report).ok().as_deref() != Some("the report\n") {
        assert!(
            std::time::Instant::now() < deadline,
            "no download in {}",
            dir.path().display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let said = ok(&call(&browser, "browser_click", json!({"text": "Second page"})).await);
    assert!(
        said.contains("/second") && said.contains("\"Second\""),
        "{said}"
    );

    // Cookies last between calls.
    let md = ok(&call(
        &browser,
        "browser_markdown",
        json!({"url": format!("{base}/cookie")}),
    )
    .await);
    assert!(md.contains("cookie: visit=1"), "{md}");

    // Bad input: each a clear error, and the session goes on.
    for (name, input, says) in [
        (
            "browser_navigate",
            json!({"url": "file:///etc/passwd"}),
            "http:// and https://",
        ),
        ("browser_navigate", json!({}), "input.url is required"),
        (
            "browser_click",
            json!({"selector": "#nothing-here"}),
            "no element matches the selector \"#nothing-here\"",
        ),
        (
            "browser_click",
            json!({"text": "No such button"}),
            "no link, button or label reads",
        ),
        ("browser_click", json!({}), "exactly one of"),
        (
            "browser_scroll",
            json!({"direction": "sideways"}),
            "not one of down, up, left, right",
        ),
        (
            "browser_evaluate",
            json!({"expression": "throw new Error('boom')"}),
            "boom",
        ),
        (
            "browser_navigate",
            json!({"url": format!("{base}/never")}),
            "did not finish within 5 s",
        ),
        (
            "browser_navigate",
            json!({"url": "http://unresolvable.test/"}),
            "did not load: net::ERR_NAME_NOT_RESOLVED",
        ),
        // The test's flags reach Chromium: even localhost does not resolve.
        (
            "browser_navigate",
            json!({"url": format!("http://localhost:{}/", site.port())}),
            "did not load: net::ERR_NAME_NOT_RESOLVED",
        ),
        ("browser_fly", json!({}), "unknown browser tool"),
    ] {
        let said = failed(&call(&browser, name, input.clone()).await);
        assert!(said.contains(says), "{name} {input}: {said}");
    }
    let said = ok(&call(
        &browser,
        "browser_navigate",
        json!({"url": format!("{base}/second")}),
    )
    .await);
    assert!(said.contains("\"Second\""), "{said}");

    // A page opens no window by itself (the popup blocker is on).
    let said = ok(&call(
        &browser,
        "browser_evaluate",
        json!({"expression": "window.open('/cookie') !== null"}),
    )
    .await);
    assert_eq!(said.trim(), "false");
    assert_eq!(browser.pages().await, 1);

    // A page nested deeper than markdown is made from is refused, not converted.
    ok(&call(
        &browser,
        "browser_evaluate",
        json!({"expression": "let n = document.body; for (let i = 0; i < 1200; i++) { const d = document.createElement('div'); n.appendChild(d); n = d; } 1"}),
    )
    .await);
    let said = failed(&call(&browser, "browser_markdown", json!({})).await);
    assert!(
        said.contains("nests elements") && said.contains("deep"),
        "{said}"
    );

    // A crash between calls: the next call starts a new browser, and says so.
    let pid = browser.process_id().await.expect("the browser runs");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let said = ok(&call(
        &browser,
        "browser_navigate",
        json!({"url": format!("{base}/cookie")}),
    )
    .await);
    assert!(said.contains("started a new one"), "{said}");
    assert_ne!(browser.process_id().await, Some(pid));

    // close: gone, with its profile; the next call starts afresh, without the cookie.
    let said = ok(&call(&browser, "browser_close", json!({})).await);
    assert!(said.contains("closed"), "{said}");
    assert!(browser.process_id().await.is_none());
    assert!(!profile.exists(), "the profile is removed at close");
    let md = ok(&call(
        &browser,
        "browser_markdown",
        json!({"url": format!("{base}/cookie")}),
    )
    .await);
    assert!(md.contains("cookie: none"), "{md}");
    browser.shutdown().await;
    assert!(!profile.exists());
}

#[tokio::test]
async fn a_missing_chromium_is_named_with_the_image_to_use() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&dir.path().join("profile"), dir.path());
    config.executable = Some(dir.path().join("no-chromium"));
    let browser = Browser::new(config);
    let said = failed(
        &call(
            &browser,
            "browser_navigate",
            json!({"url": "http://127.0.0.1:9/"}),
        )
        .await,
    );
    assert!(said.contains("not a file"), "{said}");
}

/// One HTTP/1.1 request to the agent; the status and body.
async fn ask(address: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
    stream
        .write_all(
            format!("POST {path} HTTP/1.1\r\nhost: agent\r\n{auth}content-length: 0\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let status = answer[9..12].parse().unwrap();
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// `POST /browser/warm` starts the browser without a call (the controller asks at the start of
/// a session that has the built-in), and says when the image has none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browser_starts_ahead_of_its_first_call_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let state = Arc::new(cordon_sandbox_agent::AgentState::with_browser(
        "agent-token".into(),
        dir.path().display().to_string(),
        config(&dir.path().join("profile"), dir.path()),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = cordon_sandbox_agent::router(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    assert_eq!(ask(address, "/browser/warm", None).await.0, 401);
    let (status, body) = ask(address, "/browser/warm", Some("agent-token")).await;
    assert_eq!((status, body.as_str()), (202, r#"{"browser":true}"#));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while state.browser().process_id().await.is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the browser did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    state.shutdown().await;
    assert!(state.browser().process_id().await.is_none());

    // An image without Chromium: nothing starts, and the answer says so.
    let mut none = config(&dir.path().join("profile2"), dir.path());
    none.executable = Some(dir.path().join("no-chromium"));
    let state = Arc::new(cordon_sandbox_agent::AgentState::with_browser(
        "agent-token".into(),
        dir.path().display().to_string(),
        none,
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = cordon_sandbox_agent::router(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let (status, body) = ask(address, "/browser/warm", Some("agent-token")).await;
    assert_eq!((status, body.as_str()), (202, r#"{"browser":false}"#));
}

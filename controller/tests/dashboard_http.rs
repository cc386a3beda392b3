//! The dashboard over HTTP, without a browser or root: logins, cookies, CSRF, the Origin
//! check, roles, the failed-login limit, JWT assertions of an authenticating proxy, and a live
//! session page fed by the proxy's audit log. (The browser suite, `dashboard_browser.rs`,
//! drives the same pages in Chromium over a real session.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cordon_controller::admin::Admin;
use cordon_controller::dashboard::config::DashboardConfig;
use cordon_controller::dashboard::users::{self, Role};
use cordon_controller::dashboard::{self, Dashboard};
use cordon_controller::egress::{EgressIngestConfig, EgressIngester, EgressMetrics};
use cordon_controller::metrics::ControllerMetrics;
use cordon_controller::store::{Store, ToolCallRecord};

const PASSWORD: &str = "a long enough password";

struct Served {
    dir: tempfile::TempDir,
    admin: Arc<Admin>,
    address: SocketAddr,
    store: Store,
    audit_log: PathBuf,
}

impl Served {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// `curl` with the given extra arguments; returns (status, headers, body).
    fn curl(&self, args: &[&str], path: &str) -> (u16, String, String) {
        let out = Command::new("curl")
            .args(["-sS", "-D", "-", "-o", "-", "--max-time", "10"])
            .args(args)
            .arg(self.url(path))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, head.to_string(), body.to_string())
    }

    /// Logs in; the cookie header value (`name=value`).
    fn login(&self, user: &str) -> String {
        let (status, head, body) = self.curl(
            &[
                "--data-urlencode",
                &format!("user={user}"),
                "--data-urlencode",
                &format!("password={PASSWORD}"),
            ],
            "/login",
        );
        assert_eq!(status, 303, "{head}\n{body}");
        let set_cookie = head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
            .unwrap();
        assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"));
        set_cookie["set-cookie:".len()..]
            .trim()
            .split(';')
            .next()
            .unwrap()
            .to_string()
    }

    /// A page with the cookie; the login's CSRF token as the page carries it.
    fn csrf(&self, cookie: &str) -> String {
        let (status, _, body) = self.curl(&["-H", &format!("cookie: {cookie}")], "/");
        assert_eq!(status, 200);
        let at = body.find("name=\"csrf\" value=\"").unwrap() + "name=\"csrf\" value=\"".len();
        body[at..at + body[at..].find('"').unwrap()].to_string()
    }

    /// Appends a proxy audit record for `session`.
    fn audit(&self, session: &str, decision: &str, host: &str, reason: &str) {
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let record = serde_json::json!({
            "time": now, "kind": "request", "decision_id": format!("d-{host}-{}", rand_id()),
            "session": session, "source": "10.200.0.2", "mode": "transparent",
            "method": "GET", "host": host, "port": 443, "path": "/v1/items",
            "decision": decision, "reason_class": "policy", "reason": reason,
            "policy_generation": "g1", "status": if decision == "allow" { 200 } else { 403 },
        });
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.audit_log)
            .unwrap();
        writeln!(file, "{record}").unwrap();
    }
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A controller's dashboard (no sandboxes, no proxy) with an operator `ops` and a viewer
/// `watcher`; `extra` is added to `[dashboard]`.
async fn serve(extra: &str, files: &[(&str, &str)]) -> Served {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let config_path = dir.path().join("cordon.toml");
    std::fs::write(
        &config_path,
        format!(
            "[proxy]\nstate_dir = \"state\"\ntransparent_listen = \"0.0.0.0:1\"\n\
             [dns]\nlisten = \"0.0.0.0:1\"\n[audit]\npath = \"audit.log\"\n\
             [sandbox]\nworkspace_max_mb = 0\n\
             [dashboard]\nlisten = \"127.0.0.1:0\"\nlogin_attempts_per_minute = 3\n{extra}"
        ),
    )
    .unwrap();
    let config = DashboardConfig::load(&config_path).unwrap().unwrap();
    let users_file = dir.path().join("state/controller/dashboard-users.toml");
    users::add(&users_file, "ops", Role::Operator, PASSWORD, false).unwrap();
    users::add(&users_file, "watcher", Role::Viewer, PASSWORD, false).unwrap();
    let store = Store::open(&dir.path().join("state/state.db")).unwrap();
    let admin = Arc::new(Admin {
        store: Store::open(&dir.path().join("state/state.db")).unwrap(),
        metrics: ControllerMetrics::new().unwrap(),
        stops: Arc::default(),
        sandbox: None,
        proxy_admin: None,
        // Plain-directory workspaces (no quota): no mount, no root.
        runtime: Some(Arc::new(
            cordon_controller::sandbox::Runtime::open(
                cordon_controller::config::SandboxConfig::load(&config_path).unwrap(),
            )
            .unwrap(),
        )),
        files_token: None,
        local: None,
        actions: None,
    });
    let ingester = EgressIngester::spawn(
        EgressIngestConfig::new(config.audit_log.clone()),
        Arc::new(Store::open(&dir.path().join("state/state.db")).unwrap()),
        EgressMetrics::new().unwrap(),
    );
    let feed = dashboard::EgressFeed::new(
        Store::open(&dir.path().join("state/state.db")).unwrap(),
        ingester,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let dashboard = Arc::new(Dashboard::new(
        &config,
        address,
        admin.clone(),
        Arc::default(),
        feed,
        None,
    ));
    let listening = dashboard::Listening::new(&config.transport).unwrap();
    tokio::spawn(async move {
        dashboard::serve(listener, listening, dashboard::router(dashboard))
            .await
            .unwrap();
    });
    Served {
        admin,
        audit_log: config.audit_log.clone(),
        dir,
        address,
        store,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_need_a_login_and_bad_logins_say_nothing_of_which_part_failed() {
    let s = serve("", &[]).await;
    let (status, _, body) = s.curl(&[], "/");
    assert_eq!(status, 401);
    assert!(body.contains("name=\"password\""), "the login form: {body}");
    for path in [
        "/sessions",
        "/sessions/x",
        "/policy",
        "/secrets",
        "/webhooks",
        "/live/overview",
        "/nowhere",
    ] {
        assert_eq!(s.curl(&[], path).0, 401, "{path}");
    }
    for (user, password) in [("ops", "wrong password"), ("nobody", PASSWORD)] {
        let (status, _, body) = s.curl(
            &[
                "--data-urlencode",
                &format!("user={user}"),
                "--data-urlencode",
                &format!("password={password}"),
            ],
            "/login",
        );
        assert_eq!(status, 401);
        assert!(body.contains("Wrong user name or password."), "{body}");
    }
    let cookie = s.login("ops");
    let (status, head, body) = s.curl(&["-H", &format!("cookie: {cookie}")], "/");
    assert_eq!(status, 200);
    assert!(body.contains("Overview") && body.contains("ops"));
    for header in [
        "content-security-policy: default-src 'none'",
        "x-frame-options: DENY",
        "cache-control: no-store",
    ] {
        assert!(
            head.to_ascii_lowercase()
                .contains(&header.to_ascii_lowercase()),
            "{header} in {head}"
        );
    }
    // A tampered or unknown cookie is nobody.
    let (name, value) = cookie.split_once('=').unwrap();
    let mut bytes = value.as_bytes().to_vec();
    bytes[3] = if bytes[3] == b'A' { b'B' } else { b'A' };
    let tampered = format!("{name}={}", String::from_utf8(bytes).unwrap());
    assert_eq!(s.curl(&["-H", &format!("cookie: {tampered}")], "/").0, 401);
    assert_eq!(
        s.curl(&["-H", &format!("cookie: {name}=garbage")], "/").0,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changes_need_the_csrf_token_the_same_origin_and_the_operator_role() {
    let s = serve("", &[]).await;
    let cookie = s.login("ops");
    let csrf = s.csrf(&cookie);
    let with = |extra: &[&str]| {
        let mut args = vec!["-H".to_string(), format!("cookie: {cookie}")];
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    };
    let run = |args: Vec<String>, path: &str| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        s.curl(&refs, path)
    };
    // No token, a wrong token, another origin: refused, nothing changed.
    assert_eq!(run(with(&["-d", "x=1"]), "/policy/reload").0, 403);
    assert_eq!(run(with(&["-d", "csrf=forged"]), "/policy/reload").0, 403);
    let origin = run(
        with(&[
            "-H",
            "origin: https://evil.example",
            "-d",
            &format!("csrf={csrf}"),
        ]),
        "/logout",
    );
    assert_eq!(origin.0, 403);
    assert!(origin.2.contains("cross-origin"));
    // The right host under another scheme is another origin too.
    let https = format!("origin: https://{}", s.address);
    assert_eq!(
        run(
            with(&["-H", &https, "-d", &format!("csrf={csrf}")]),
            "/logout"
        )
        .0,
        403
    );
    // A name that is not the dashboard's (DNS rebinding) is not answered at all.
    let (status, _, body) = s.curl(
        &[
            "-H",
            "host: rebound.example.test",
            "-H",
            &format!("cookie: {cookie}"),
        ],
        "/",
    );
    assert_eq!(status, 421);
    assert!(body.contains("DNS rebinding"), "{body}");
    // The operator's stop of a session not served: a clear 409, not a 403.
    let stop = run(
        with(&["-d", &format!("csrf={csrf}")]),
        "/sessions/sesn_x/stop",
    );
    assert_eq!(stop.0, 409, "{}", stop.2);
    // A viewer sees pages and is refused the operator's actions.
    let viewer = s.login("watcher");
    let viewer_csrf = s.csrf(&viewer);
    let (status, _, body) = s.curl(
        &[
            "-H",
            &format!("cookie: {viewer}"),
            "-d",
            &format!("csrf={viewer_csrf}"),
        ],
        "/sessions/sesn_x/stop",
    );
    assert_eq!(status, 403);
    assert!(body.contains("Operators only"), "{body}");
    assert_eq!(
        s.curl(
            &[
                "-H",
                &format!("cookie: {viewer}"),
                "-d",
                &format!("csrf={viewer_csrf}")
            ],
            "/policy/reload"
        )
        .0,
        403
    );
    let (_, _, policy) = s.curl(&["-H", &format!("cookie: {viewer}")], "/policy");
    assert!(
        !policy.contains("Reload policy"),
        "a viewer is not offered the reload"
    );
    // Logout with the token ends the login.
    let out = run(with(&["-d", &format!("csrf={csrf}")]), "/logout");
    assert_eq!(out.0, 303);
    assert_eq!(s.curl(&["-H", &format!("cookie: {cookie}")], "/").0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_past_the_limit_are_refused_for_a_minute() {
    let s = serve("", &[]).await;
    for _ in 0..3 {
        let (status, _, _) = s.curl(&["-d", "user=ops&password=wrong-password"], "/login");
        assert_eq!(status, 401);
    }
    let (status, head, body) = s.curl(
        &[
            "--data-urlencode",
            "user=ops",
            "--data-urlencode",
            &format!("password={PASSWORD}"),
        ],
        "/login",
    );
    assert_eq!(status, 429, "the right password is refused too now");
    assert!(head.to_ascii_lowercase().contains("retry-after: 60"));
    assert!(body.contains("Too many failed logins"));
    // Another user at the same address is not locked out by them (the address alone may
    // fail four times as often).
    let (status, _, _) = s.curl(
        &[
            "--data-urlencode",
            "user=watcher",
            "--data-urlencode",
            &format!("password={PASSWORD}"),
        ],
        "/login",
    );
    assert_eq!(status, 303);
    let metrics = s.admin.metrics.render();
    for line in [
        "cordon_controller_dashboard_logins_total{outcome=\"wrong\"} 3",
        "cordon_controller_dashboard_logins_total{outcome=\"limited\"} 1",
        "cordon_controller_dashboard_logins_total{outcome=\"ok\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_page_shows_its_tool_calls_with_their_egress_and_updates_live() {
    let s = serve("", &[]).await;
    let now_ms = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    s.store
        .record_tool_call(
            "sesn_live",
            &ToolCallRecord {
                tool_use_id: "toolu_1".into(),
                name: "bash".into(),
                custom: false,
                input_summary: "curl https://api.example.test/v1/items".into(),
                result_excerpt: "<b>not markup</b>".into(),
                is_error: false,
                started_ms: now_ms - 60_000,
                duration_ms: 120,
            },
        )
        .unwrap();
    s.audit(
        "sesn_live",
        "deny",
        "blocked.example.test",
        "host blocked.example.test is not allowed",
    );
    let cookie = s.login("ops");
    let deadline = Instant::now() + Duration::from_secs(5);
    let body = loop {
        let (status, _, body) =
            s.curl(&["-H", &format!("cookie: {cookie}")], "/sessions/sesn_live");
        if status == 200 && body.contains("blocked.example.test") {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "the decision never showed: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(body.contains("curl https://api.example.test/v1/items"));
    assert!(
        body.contains("&lt;b&gt;not markup&lt;/b&gt;"),
        "tool output is escaped"
    );
    assert!(body.contains("host blocked.example.test is not allowed"));

    // The live stream sends the page's timeline again within a second of a new decision.
    let url = s.url("/live/sessions/sesn_live");
    let stream = Command::new("curl")
        .args([
            "-sSN",
            "--max-time",
            "4",
            "-H",
            &format!("cookie: {cookie}"),
            &url,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let written = Instant::now();
    s.audit(
        "sesn_live",
        "allow",
        "fresh.example.test",
        "allowed by rule api",
    );
    let out = stream.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| e.contains("event: update"))
        .collect();
    assert!(events.len() >= 2, "the first render and the update: {text}");
    assert!(
        events.last().unwrap().contains("fresh.example.test"),
        "{text}"
    );
    assert!(written.elapsed() < Duration::from_secs(4));
    drop(s.dir);
}

/// A tool call's images (a browser's screenshot) show in the session's timeline, each served
/// as the image type it was kept as, never sniffed, sandboxed, and only to a logged-in user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calls_images_show_in_the_timeline() {
    let s = serve("", &[]).await;
    let now_ms = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    s.store
        .record_tool_call(
            "sesn_shots",
            &ToolCallRecord {
                tool_use_id: "toolu_shot".into(),
                name: "browser_screenshot".into(),
                custom: true,
                input_summary: "{}".into(),
                result_excerpt: "Screenshot of the viewport\n[image/png]".into(),
                is_error: false,
                started_ms: now_ms - 1_000,
                duration_ms: 300,
            },
        )
        .unwrap();
    let png = b"\x89PNG\r\n\x1a\n not really a png".to_vec();
    s.store
        .record_tool_images(
            "sesn_shots",
            "toolu_shot",
            &[("image/png".to_string(), png.clone())],
            now_ms,
        )
        .unwrap();
    let image = "/sessions/sesn_shots/calls/toolu_shot/images/0";
    let (status, _, _) = s.curl(&[], image);
    assert_ne!(status, 200, "images need a login too");
    let cookie = s.login("watcher");
    let (status, _, body) = s.curl(
        &["-H", &format!("cookie: {cookie}")],
        "/sessions/sesn_shots",
    );
    assert_eq!(status, 200);
    assert!(
        body.contains(&format!("<img src=\"{image}\"")),
        "the timeline shows the image: {body}"
    );
    let out = Command::new("curl")
        .args([
            "-sS",
            "-D",
            "/dev/stderr",
            "-H",
            &format!("cookie: {cookie}"),
        ])
        .arg(s.url(image))
        .output()
        .unwrap();
    assert_eq!(out.stdout, png, "byte for byte");
    let head = String::from_utf8_lossy(&out.stderr).to_lowercase();
    for header in [
        "content-type: image/png",
        "x-content-type-options: nosniff",
        "content-security-policy: sandbox",
    ] {
        assert!(head.contains(header), "{header} in {head}");
    }
    for missing in [
        "/sessions/sesn_shots/calls/toolu_shot/images/1",
        "/sessions/sesn_other/calls/toolu_shot/images/0",
    ] {
        let (status, _, _) = s.curl(&["-H", &format!("cookie: {cookie}")], missing);
        assert_eq!(status, 404, "{missing}");
    }
    drop(s.dir);
}

/// An ES256 key pair: its PKCS#8 form for signing and its JWK for the JWKS.
fn es256_key(kid: &str) -> (Vec<u8>, serde_json::Value) {
    use base64::Engine;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let public = pair.public_key().as_ref();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let jwk = serde_json::json!({
        "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
        "x": b64.encode(&public[1..33]), "y": b64.encode(&public[33..65]),
    });
    (pkcs8.as_ref().to_vec(), jwk)
}

fn token(pkcs8: &[u8], kid: &str, audience: &str, email: &str) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.into());
    let exp = time::OffsetDateTime::now_utc().unix_timestamp() + 600;
    let claims = serde_json::json!({
        "iss": "https://team.example.test", "aud": audience, "email": email, "exp": exp,
    });
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_der(pkcs8),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_an_authenticating_proxy_only_a_verified_assertion_gets_in() {
    let (key, jwk) = es256_key("k1");
    let (other_key, _) = es256_key("k1");
    let jwks = serde_json::json!({ "keys": [jwk] }).to_string();
    let s = serve(
        "[dashboard.jwt]\nheader = \"Cf-Access-Jwt-Assertion\"\njwks_file = \"jwks.json\"\n\
         issuer = \"https://team.example.test\"\naudience = \"cordon-aud\"\noperators = [\"ops@example.test\"]\n",
        &[("jwks.json", &jwks)],
    )
    .await;
    let get = |token: &str, path: &str| {
        s.curl(&["-H", &format!("cf-access-jwt-assertion: {token}")], path)
    };
    let (status, _, body) = get(&token(&key, "k1", "cordon-aud", "ops@example.test"), "/");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("ops@example.test") && body.contains("operator"));
    let (status, _, body) = get(
        &token(&key, "k1", "cordon-aud", "dev@example.test"),
        "/policy",
    );
    assert_eq!(status, 200);
    assert!(body.contains("viewer") && !body.contains("Reload policy"));
    for (name, bad) in [
        ("wrong audience", token(&key, "k1", "someone-else", "ops@example.test")),
        ("unknown key id", token(&key, "k2", "cordon-aud", "ops@example.test")),
        ("signed by another key", token(&other_key, "k1", "cordon-aud", "ops@example.test")),
        ("not a token", "ops@example.test".to_string()),
        ("an HMAC token", jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &serde_json::json!({"iss": "https://team.example.test", "aud": "cordon-aud", "email": "ops@example.test", "exp": 9_999_999_999u64}),
            &jsonwebtoken::EncodingKey::from_secret(jwks.as_bytes()),
        ).unwrap()),
    ] {
        let (status, _, body) = get(&bad, "/");
        assert_eq!(status, 401, "{name}");
        assert!(!body.contains("audience") && !body.contains("kid"), "{name}: no detail: {body}");
    }
    assert_eq!(s.curl(&[], "/").0, 401, "no assertion at all");
    // No password login in this mode.
    assert_eq!(s.curl(&["-d", "user=ops&password=x"], "/login").0, 401);
}

/// A measurement, not a check (`--ignored`): how long a session page takes to load over HTTP
/// when the session has 100 000 decisions (and 200 tool calls), against the page of a session
/// with 10, in the same run. docs/DASHBOARD.md quotes it.
///
/// `cargo test -p cordon-controller --release --test dashboard_http -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run by hand"]
async fn measure_a_session_page_with_100k_decisions() {
    let s = serve("", &[]).await;
    let now_ms = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    for n in 0..200 {
        let call = ToolCallRecord {
            tool_use_id: format!("toolu_{n}"),
            name: "bash".into(),
            custom: false,
            input_summary: format!("curl https://api.example.test/v1/items/{n}"),
            result_excerpt: "ok".into(),
            is_error: false,
            started_ms: now_ms - 3_600_000 + n * 1000,
            duration_ms: 500,
        };
        s.store.record_tool_call("sesn_big", &call).unwrap();
    }
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&s.audit_log).unwrap());
        for n in 0..100_000u64 {
            let host = format!("h{}.example.test", n % 50);
            let (decision, reason) = if n % 10 == 0 {
                ("deny", "not listed")
            } else {
                ("allow", "listed")
            };
            let record = serde_json::json!({
                "time": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap(),
                "kind": "request", "decision_id": format!("d{n}"), "session": "sesn_big",
                "source": "10.200.0.2", "mode": "transparent", "method": "GET", "host": host,
                "port": 443, "path": "/v1/items", "decision": decision, "reason_class": "policy",
                "reason": reason, "policy_generation": "g1", "status": 200,
            });
            writeln!(file, "{record}").unwrap();
        }
        for n in 0..10 {
            writeln!(file, "{}", serde_json::json!({
                "time": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap(),
                "kind": "request", "decision_id": format!("s{n}"), "session": "sesn_small",
                "source": "10.200.0.6", "mode": "transparent", "method": "GET", "host": "a.example.test",
                "port": 443, "path": "/", "decision": "allow", "reason_class": "policy",
                "reason": "listed", "policy_generation": "g1", "status": 200,
            })).unwrap();
        }
    }
    // Wait for the ingester to have stored everything (the small session comes last).
    let deadline = Instant::now() + Duration::from_secs(120);
    while s
        .store
        .egress_for_session("sesn_small", None, 10)
        .unwrap()
        .rows
        .len()
        < 10
    {
        assert!(Instant::now() < deadline, "ingesting took too long");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cookie = s.login("ops");
    let time_page = |path: &str| -> Vec<f64> {
        let mut times: Vec<f64> = (0..30)
            .map(|_| {
                let out = Command::new("curl")
                    .args([
                        "-sS",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{time_total}",
                        "-H",
                        &format!("cookie: {cookie}"),
                    ])
                    .arg(s.url(path))
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse::<f64>()
                    .unwrap()
                    * 1000.0
            })
            .collect();
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        times
    };
    let big = time_page("/sessions/sesn_big");
    let small = time_page("/sessions/sesn_small");
    println!(
        "session page, 100 000 decisions + 200 tool calls: p50 {:.1} ms, max {:.1} ms; \
         10 decisions: p50 {:.1} ms, max {:.1} ms; ratio of p50s {:.2}",
        big[15],
        big[29],
        small[15],
        small[29],
        big[15] / small[15]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_browser_stays_in_the_workspace_and_uploads_are_whole_or_absent() {
    let s = serve("", &[]).await;
    let runtime = s.admin.runtime.clone().unwrap();
    runtime
        .store()
        .workspace_used("sesn_files", "sesn_files")
        .unwrap();
    let root = runtime.workspaces().dir("sesn_files");
    std::fs::create_dir_all(root.join("src")).unwrap();
    std::fs::write(root.join("src/main.rs"), "fn main() {}\n").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("passwd")).unwrap();
    std::os::unix::fs::symlink("/etc", root.join("etc")).unwrap();
    let local = s.dir.path().join("notes.txt");
    std::fs::write(&local, "first notes\n").unwrap();
    let ops = s.login("ops");
    let csrf = s.csrf(&ops);
    let as_ops = ["-H".to_string(), format!("cookie: {ops}")];
    let get = |cookie: &[String], path: &str| {
        let args: Vec<&str> = cookie.iter().map(String::as_str).collect();
        s.curl(&args, path)
    };

    // Browsing: directories first, links shown with their target and never followed.
    let (status, _, body) = get(&as_ops, "/sessions/sesn_files/files");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("src/") && body.contains("/etc/passwd"),
        "{body}"
    );
    let (status, _, body) = get(&as_ops, "/sessions/sesn_files/files?path=%2Fsrc");
    assert_eq!(status, 200);
    assert!(body.contains("main.rs"), "{body}");
    let (status, head, body) = get(
        &as_ops,
        "/sessions/sesn_files/files/download?path=%2Fsrc%2Fmain.rs",
    );
    assert_eq!((status, body.as_str()), (200, "fn main() {}\n"));
    assert!(
        head.to_ascii_lowercase()
            .contains("content-disposition: attachment; filename=\"main.rs\""),
        "{head}"
    );
    // Outside the workspace: through a link, or `..`; refused with the reason, nothing read.
    for (path, why) in [
        (
            "/sessions/sesn_files/files/download?path=%2Fpasswd",
            "symbolic link",
        ),
        ("/sessions/sesn_files/files?path=%2Fetc", "symbolic link"),
        (
            "/sessions/sesn_files/files/download?path=..%2F..%2Fetc%2Fpasswd",
            "`..`",
        ),
        (
            "/sessions/sesn_files/files/download?path=%2Fsrc",
            "a directory",
        ),
        ("/sessions/sesn_other/files", "has no workspace"),
    ] {
        let (status, _, body) = get(&as_ops, path);
        assert!(status >= 400, "{path}: {status}");
        assert!(body.contains(why), "{path}: {body}");
        assert!(!body.contains("root:x:0"), "{path}");
    }

    // Uploads: whole, with the token, never over an existing file unless asked.
    let upload = |cookie: &str, fields: &[&str], dir: &str| {
        let mut args = vec!["-H".to_string(), format!("cookie: {cookie}")];
        for field in fields {
            args.push("-F".into());
            args.push(field.to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        s.curl(
            &args,
            &format!("/sessions/sesn_files/files/upload?path={dir}"),
        )
    };
    let file = format!("file=@{}", local.display());
    let token = format!("csrf={csrf}");
    let (status, head, _) = upload(&ops, &[&token, &file], "%2Fsrc");
    assert_eq!(status, 303, "{head}");
    assert!(head.contains("uploaded=notes.txt"), "{head}");
    assert_eq!(
        std::fs::read_to_string(root.join("src/notes.txt")).unwrap(),
        "first notes\n"
    );
    std::fs::write(&local, "second notes\n").unwrap();
    let (status, _, body) = upload(&ops, &[&token, &file], "%2Fsrc");
    assert_eq!(status, 409);
    assert!(body.contains("already exists"), "{body}");
    assert_eq!(
        std::fs::read_to_string(root.join("src/notes.txt")).unwrap(),
        "first notes\n"
    );
    let (status, _, _) = upload(&ops, &[&token, "replace=on", &file], "%2Fsrc");
    assert_eq!(status, 303);
    assert_eq!(
        std::fs::read_to_string(root.join("src/notes.txt")).unwrap(),
        "second notes\n"
    );
    // Into a linked directory, without the token, or by a viewer: refused, nothing written.
    let (status, _, body) = upload(&ops, &[&token, &file], "%2Fetc");
    assert_eq!(status, 400);
    assert!(body.contains("symbolic link"), "{body}");
    assert_eq!(upload(&ops, &["csrf=wrong", &file], "%2F").0, 403);
    let watcher = s.login("watcher");
    let watcher_csrf = format!("csrf={}", s.csrf(&watcher));
    assert_eq!(upload(&watcher, &[&watcher_csrf, &file], "%2F").0, 403);
    let (status, _, body) = get(
        &["-H".into(), format!("cookie: {watcher}")],
        "/sessions/sesn_files/files/download?path=%2Fsrc%2Fnotes.txt",
    );
    assert_eq!(
        (status, body.as_str()),
        (200, "second notes\n"),
        "a viewer downloads"
    );
    assert!(!root.join("notes.txt").exists());
    let leftovers: Vec<_> = walk(&root)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".cordon-upload-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // An ended session's workspace is read only.
    runtime.store().workspace_ended("sesn_files").unwrap();
    let (status, _, body) = get(&as_ops, "/sessions/sesn_files/files");
    assert_eq!(status, 200);
    assert!(body.contains("takes no uploads") && !body.contains("id=\"upload\""));
    let (status, _, body) = upload(&ops, &[&token, &file], "%2F");
    assert_eq!(status, 409);
    assert!(body.contains("ended"), "{body}");
    assert!(!root.join("notes.txt").exists());
}

/// Every path under `dir` (links not followed).
fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            found.extend(walk(&path));
        }
        found.push(path);
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_holds_at_most_sixteen_live_streams() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = serve("", &[]).await;
    let ops = s.login("ops");
    let watcher = s.login("watcher");
    let open = |cookie: String| {
        let address = s.address;
        async move {
            let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
            stream
                .write_all(
                    format!(
                        "GET /live/overview HTTP/1.1\r\nHost: {address}\r\ncookie: {cookie}\r\n\r\n"
                    )
                    .as_bytes(),
                )
                .await
                .unwrap();
            let mut head = vec![0; 512];
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut head))
                .await
                .unwrap()
                .unwrap();
            let status = String::from_utf8_lossy(&head[..n])
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_string();
            (status, stream)
        }
    };
    let mut held = Vec::new();
    for _ in 0..16 {
        let (status, stream) = open(ops.clone()).await;
        assert_eq!(status, "200");
        held.push(stream);
    }
    let (status, _) = open(ops.clone()).await;
    assert_eq!(status, "429", "the seventeenth stream of one user");
    let (status, _) = open(watcher).await;
    assert_eq!(status, "200", "another user is not held back");
}

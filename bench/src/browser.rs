//! The session's browser (docs/BROWSER.md): how long the first `browser_navigate` of a session
//! takes (Chromium's cold start in gVisor included, the sandbox's own start not), a warm
//! navigate + screenshot, and the memory of a sandbox with its browser open.
//!
//! Each round starts a sandbox on the browser image behind a fresh proxy, opens a local HTTPS
//! page (a loopback upstream with a test CA, reached through the proxy as every page is) and
//! then navigates and screenshots it again and again. Baseline, measured in the same sandbox
//! and interleaved: the same page fetched with `curl` through the same proxy, so the ratios say
//! what the browser adds to the network path every request pays anyway.

use std::path::Path;
use std::time::{Duration, Instant};

use cordon_controller::agent::{ExecRequest, exec};
use cordon_controller::config::SandboxConfig;
use cordon_controller::http::HttpClient;
use cordon_controller::sandbox::{Runtime, agent_endpoint};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::fixture::{ProxyProcess, free_port, images_dir, percentile};
use crate::sandboxes::{pss_kib, remove_workspaces};

const POLICY: &str = r#"package cordon.egress
import rego.v1
default decision := false
decision := true if input.destination.host == "page.test"
"#;

/// A simple page: a heading, some text, a styled box.
const PAGE: &str = "<!doctype html><html><head><title>Bench page</title>\
<style>div{width:300px;height:200px;background:#36c}</style></head>\
<body><h1>Cordon</h1><p>A simple page for the browser benchmark.</p><div></div></body></html>";

/// Navigate + screenshot pairs per round on the warm browser.
const WARM_CALLS: usize = 10;

/// Between a session's start and its first browser call: a model's first turn, about.
const TURN: Duration = Duration::from_secs(10);

fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new(3).unwrap_or_else(|_| unreachable!("3 is a valid precision"))
}

fn record(h: &mut Histogram<u64>, elapsed: Duration) {
    let _ = h.record(elapsed.as_micros() as u64);
}

/// The page's upstream: HTTPS on loopback with a test CA, `PAGE` for every request.
fn upstream(pki: &cordon_testkit::TestPki) -> std::net::SocketAddr {
    cordon_testkit::spawn_tls_server(pki, b"http/1.1", |mut tls| async move {
        while cordon_testkit::read_head(&mut tls).await.is_some() {
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\n\r\n{PAGE}",
                PAGE.len()
            );
            if tls.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    })
}

struct Report {
    cold_navigate: Histogram<u64>,
    /// The first navigate of a session whose browser was asked to start with the sandbox,
    /// [`TURN`] before the call.
    warmed_navigate: Histogram<u64>,
    cold_curl: Histogram<u64>,
    warm_pair: Histogram<u64>,
    warm_curl: Histogram<u64>,
    pss_kib: Vec<u64>,
    failures: Vec<String>,
}

/// One browser call in session `id`'s sandbox; an error unless it answers without `is_error`.
async fn browser(config: &SandboxConfig, id: &str, name: &str, input: Value) -> Result<(), String> {
    let (agent, token) = agent_endpoint(config, id).map_err(|e| format!("{id}: {e}"))?;
    let body = json!({"name": name, "input": input}).to_string();
    let text = HttpClient::default()
        .call(
            http::Method::POST,
            &format!("http://{agent}/browser"),
            Some(&token),
            Some(body),
        )
        .await
        .map_err(|e| format!("{id} {name}: {e}"))?;
    let reply: Value = serde_json::from_str(&text).map_err(|e| format!("{id} {name}: {e}"))?;
    if reply["is_error"] == true {
        return Err(format!("{id} {name}: {}", reply["content"]));
    }
    Ok(())
}

/// `curl` of the page in session `id`'s sandbox.
async fn curl(config: &SandboxConfig, id: &str) -> Result<(), String> {
    let (agent, token) = agent_endpoint(config, id).map_err(|e| format!("{id}: {e}"))?;
    let request = ExecRequest {
        argv: vec![
            "curl".into(),
            "-sSf".into(),
            "-o".into(),
            "/dev/null".into(),
            "https://page.test/".into(),
        ],
        cwd: None,
        env: Default::default(),
        timeout_ms: Some(30_000),
        stdin: None,
    };
    match exec(&HttpClient::default(), agent, &token, &request, |_, _| {}).await {
        Ok(outcome) if outcome.exit_status() == 0 => Ok(()),
        Ok(outcome) => Err(format!("{id}: curl ended {outcome:?}")),
        Err(e) => Err(format!("{id}: {e}")),
    }
}

async fn round(
    runtime: &Runtime,
    config: &SandboxConfig,
    id: &str,
    report: &mut Report,
) -> Result<(), String> {
    runtime
        .start(id, Some("browser"))
        .await
        .map_err(|e| format!("start {id}: {e}"))?;
    // The sandbox's own first request, then the browser's first navigation (Chromium starts).
    let t = Instant::now();
    curl(config, id).await?;
    record(&mut report.cold_curl, t.elapsed());
    let t = Instant::now();
    browser(
        config,
        id,
        "browser_navigate",
        json!({"url": "https://page.test/"}),
    )
    .await?;
    record(&mut report.cold_navigate, t.elapsed());
    for _ in 0..WARM_CALLS {
        let t = Instant::now();
        curl(config, id).await?;
        record(&mut report.warm_curl, t.elapsed());
        let t = Instant::now();
        browser(
            config,
            id,
            "browser_navigate",
            json!({"url": "https://page.test/"}),
        )
        .await?;
        browser(config, id, "browser_screenshot", json!({})).await?;
        record(&mut report.warm_pair, t.elapsed());
    }
    let bundle = config.state_dir.join("sessions").join(id).join("bundle");
    report.pss_kib.push(pss_kib(&bundle.display().to_string()));
    Ok(())
}

/// A session whose browser is started with its sandbox (as the controller asks when the
/// built-in is served): its first navigate, a turn later.
async fn warmed(
    runtime: &Runtime,
    config: &SandboxConfig,
    id: &str,
    report: &mut Report,
) -> Result<(), String> {
    runtime
        .start(id, Some("browser"))
        .await
        .map_err(|e| format!("start {id}: {e}"))?;
    let (agent, token) = agent_endpoint(config, id).map_err(|e| format!("{id}: {e}"))?;
    HttpClient::default()
        .call(
            http::Method::POST,
            &format!("http://{agent}/browser/warm"),
            Some(&token),
            None,
        )
        .await
        .map_err(|e| format!("{id} warm: {e}"))?;
    tokio::time::sleep(TURN).await;
    let t = Instant::now();
    browser(
        config,
        id,
        "browser_navigate",
        json!({"url": "https://page.test/"}),
    )
    .await?;
    record(&mut report.warmed_navigate, t.elapsed());
    Ok(())
}

/// Runs `rounds` rounds; returns a summary, writes JSON under `out` and, with `doc`, the
/// figures against their targets into that Markdown file.
pub async fn run(rounds: usize, out: &Path, doc: Option<&Path>) -> Result<String, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let pid = std::process::id();
    let pki = cordon_testkit::test_pki(&["page.test"]);
    let page = upstream(&pki);
    let (transparent, admin, dns) = (free_port()?, free_port()?, free_port()?);
    std::fs::create_dir_all(dir.path().join("bundle")).map_err(|e| e.to_string())?;
    std::fs::write(dir.path().join("bundle/policy.rego"), POLICY).map_err(|e| e.to_string())?;
    std::fs::write(dir.path().join("page-ca.pem"), &pki.ca_pem).map_err(|e| e.to_string())?;
    let config_path = dir.path().join("cordon.toml");
    std::fs::write(
        &config_path,
        format!(
            "[proxy]\ntransparent_listen = \"0.0.0.0:{transparent}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
             state_dir = \"state\"\n[policy]\nbundle = \"bundle\"\n[dns]\nlisten = \"0.0.0.0:{dns}\"\n\
             [tls]\nupstream_extra_roots = [\"page-ca.pem\"]\n\
             [upstream.connect_to]\n\"page.test:443\" = \"{page}\"\n\
             [sandbox]\nname_prefix = \"cordon-bench-{pid}\"\ninterface_prefix = \"cb{}x\"\n\
             address_pool = \"10.237.0.0/22\"\nmemory_mb = 2048\n\
             images_dir = \"{}\"\n",
            pid % 100_000,
            images_dir().display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let _proxy = ProxyProcess::start(&config_path, &[admin]).await?;
    let config = SandboxConfig::load(&config_path).map_err(|e| e.to_string())?;
    let mut report = Report {
        cold_navigate: histogram(),
        warmed_navigate: histogram(),
        cold_curl: histogram(),
        warm_pair: histogram(),
        warm_curl: histogram(),
        pss_kib: Vec::new(),
        failures: Vec::new(),
    };
    {
        let mut runtime = Runtime::open(config.clone()).map_err(|e| e.to_string())?;
        runtime.detach_sandboxes().map_err(|e| e.to_string())?;
        for i in 0..rounds {
            let id = format!("browser{i}");
            if let Err(e) = round(&runtime, &config, &id, &mut report).await {
                report.failures.push(e);
            }
            if let Err(e) = runtime.stop(&id).await {
                report.failures.push(format!("stop {id}: {e}"));
            }
            let id = format!("warmed{i}");
            if let Err(e) = warmed(&runtime, &config, &id, &mut report).await {
                report.failures.push(e);
            }
            if let Err(e) = runtime.stop(&id).await {
                report.failures.push(format!("stop {id}: {e}"));
            }
        }
        let cleanup = runtime.stop_all().await;
        let unmounted = remove_workspaces(&runtime);
        cleanup.map_err(|e| e.to_string())?;
        unmounted?;
    }
    let json = report.json(rounds);
    let file = crate::doc::write_figures(out, "browser", &json)?;
    let summary = report.summary();
    if !report.failures.is_empty() {
        return Err(format!(
            "{summary}\nfailures:\n  {}",
            report.failures.join("\n  ")
        ));
    }
    if let Some(doc) = doc {
        crate::doc::write_section(doc, "browser", &report.markdown(rounds, &file))?;
    }
    Ok(format!("{summary}\nwritten to {}", file.display()))
}

impl Report {
    fn mib(&self) -> f64 {
        let n = self.pss_kib.len().max(1) as f64;
        self.pss_kib.iter().sum::<u64>() as f64 / n / 1024.0
    }

    fn summary(&self) -> String {
        let p50 = |h: &Histogram<u64>| percentile(h, 0.5);
        format!(
            "first browser_navigate (cold Chromium): p50 {:.0} ms (target <= 3000), first curl \
             of the same page {:.0} ms\nfirst browser_navigate, browser started with the sandbox \
             {} s before: p50 {:.0} ms\nwarm navigate + screenshot: p50 {:.0} ms (target <= 500), \
             curl of the same page {:.1} ms\nsandbox with its browser open: {:.0} MiB PSS",
            p50(&self.cold_navigate),
            p50(&self.cold_curl),
            TURN.as_secs(),
            p50(&self.warmed_navigate),
            p50(&self.warm_pair),
            p50(&self.warm_curl),
            self.mib()
        )
    }

    fn json(&self, rounds: usize) -> Value {
        let figures = |h: &Histogram<u64>| json!({"p50_ms": percentile(h, 0.5), "p90_ms": percentile(h, 0.9), "count": h.len()});
        json!({
            "rounds": rounds,
            "warm_calls_per_round": WARM_CALLS,
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "cold_navigate": figures(&self.cold_navigate),
            "warmed_navigate": figures(&self.warmed_navigate),
            "turn_s": TURN.as_secs(),
            "cold_curl": figures(&self.cold_curl),
            "warm_navigate_screenshot": figures(&self.warm_pair),
            "warm_curl": figures(&self.warm_curl),
            "pss_mib": self.mib(),
            "failures": self.failures,
        })
    }

    fn markdown(&self, rounds: usize, json: &Path) -> String {
        let p50 = |h: &Histogram<u64>| percentile(h, 0.5);
        let met = |ok: bool| if ok { "yes" } else { "**no**" };
        let (cold, warm) = (p50(&self.cold_navigate), p50(&self.warm_pair));
        let date = time::OffsetDateTime::now_utc().date();
        format!(
            "{begin}\n## The session's browser\n\n\
             Written by `cordon-bench browser --rounds {rounds} --doc docs/BENCHMARKS.md` (`make \
             bench-browser`; root, the release build) from [`{json}`](../{json}) on {date}, {cpus} \
             CPUs. Each round: a sandbox on the browser image (examples/images/browser.toml), a \
             local HTTPS page through the proxy. Baseline from the same sandboxes, interleaved: \
             the same page fetched with `curl` through the same proxy.\n\n\
             | figure | target | measured | baseline (curl) | met |\n|---|---|---|---|---|\n\
             | first `browser_navigate` of a session (Chromium starts), p50 | <= 3 s | {cold:.0} ms | {cc:.0} ms ({cr:.0}x) | {m1} |\n\
             | first `browser_navigate`, the browser started with the sandbox {turn} s before (as the controller asks), p50 | | {warmed:.0} ms | | |\n\
             | warm `browser_navigate` + `browser_screenshot`, p50 | <= 500 ms | {warm:.0} ms | {wc:.1} ms ({wr:.0}x) | {m2} |\n\
             | sandbox with its browser open (PSS of its runsc processes) | reported | {mib:.0} MiB | | |\n\
             {end}",
            begin = crate::doc::begin("browser"),
            end = crate::doc::end("browser"),
            json = json.display(),
            cpus = std::thread::available_parallelism().map_or(0, |n| n.get()),
            turn = TURN.as_secs(),
            warmed = p50(&self.warmed_navigate),
            cc = p50(&self.cold_curl),
            cr = cold / p50(&self.cold_curl).max(0.001),
            wc = p50(&self.warm_curl),
            wr = warm / p50(&self.warm_curl).max(0.001),
            m1 = met(cold <= 3000.0),
            m2 = met(warm <= 500.0),
            mib = self.mib(),
        )
    }
}

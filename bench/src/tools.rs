//! The overhead of a custom tool call (docs/TOOLS.md), each against a baseline measured in the
//! same run:
//!
//! - a `run` tool on a warm sandbox, and cold, against the handler's own time: the same
//!   program (`cat`, the input back) run in an already running sandbox through its agent;
//! - an `http` tool against the same request sent straight to the upstream (a loopback HTTP
//!   server), both on a new connection per call.
//!
//! Calls go through the controller's library ([`CustomTools::call`]), as `serve` makes them:
//! schema check, permit, sandbox or request, proxy registration, result parsing, metrics and
//! audit.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cordon_controller::agent::{ExecRequest, exec};
use cordon_controller::config::SandboxConfig;
use cordon_controller::http::HttpClient;
use cordon_controller::metrics::ControllerMetrics;
use cordon_controller::sandbox::{Runtime, agent_endpoint};
use cordon_controller::tools::setup::ToolsConfig;
use cordon_controller::tools::{CallContext, CustomTools};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::fixture::{ProxyProcess, free_port, images_dir, percentile};

const POLICY: &str = r#"package cordon.egress
import rego.v1
default decision := false
decision := true if startswith(input.session.id, "tool:")
"#;

fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new(3).unwrap_or_else(|_| unreachable!("3 is a valid precision"))
}

/// A loopback HTTP/1.1 server answering every request `ok` (the upstream's own time is
/// nearly nothing, so what a call adds stands out).
async fn upstream() -> Result<u16, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buffer[..end]).to_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if buffer.len() < end + 4 + length {
                        continue;
                    }
                    buffer.drain(..end + 4 + length);
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(port)
}

/// One request straight to the upstream on a new connection, as the http tool makes through
/// the proxy.
async fn direct(port: u16, body: &str) -> Result<(), String> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    stream.set_nodelay(true).ok();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = http::Request::post(format!("http://upstream.bench.test:{port}/echo"))
        .header("host", format!("upstream.bench.test:{port}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Runs the measurements with `calls` calls of each kind; returns a human summary, writes JSON
/// under `out` and, with `doc`, the figures against their targets into that Markdown file.
pub async fn run(calls: usize, out: &Path, doc: Option<&Path>) -> Result<String, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let pid = std::process::id();
    let (explicit, transparent, admin, dns) =
        (free_port()?, free_port()?, free_port()?, free_port()?);
    let upstream_port = upstream().await?;
    std::fs::create_dir_all(dir.path().join("bundle")).map_err(|e| e.to_string())?;
    std::fs::write(dir.path().join("bundle/policy.rego"), POLICY).map_err(|e| e.to_string())?;
    std::fs::write(
        dir.path().join("tools.toml"),
        format!(
            "[[tool]]\nname = \"cat_cold\"\ndescription = \"the input back\"\n\
             input_schema = {{ type = \"object\" }}\n[tool.run]\ncommand = [\"cat\"]\n\n\
             [[tool]]\nname = \"cat_warm\"\ndescription = \"the input back\"\n\
             input_schema = {{ type = \"object\" }}\nwarm = 1\n[tool.run]\ncommand = [\"cat\"]\n\n\
             [[tool]]\nname = \"upstream\"\ndescription = \"ok\"\n\
             input_schema = {{ type = \"object\" }}\n[tool.http]\n\
             url = \"http://upstream.bench.test:{upstream_port}/echo\"\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let config_path = dir.path().join("cordon.toml");
    std::fs::write(
        &config_path,
        format!(
            "[proxy]\nexplicit_listen = \"127.0.0.1:{explicit}\"\n\
             transparent_listen = \"0.0.0.0:{transparent}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
             state_dir = \"state\"\n[policy]\nbundle = \"bundle\"\n[dns]\nlisten = \"0.0.0.0:{dns}\"\n\
             [upstream.connect_to]\n\"upstream.bench.test:{upstream_port}\" = \"127.0.0.1:{upstream_port}\"\n\
             [audit]\npath = \"state/audit.log\"\n\
             [controller]\ntools = \"tools.toml\"\n\
             [sandbox]\nname_prefix = \"cordon-bench-{pid}\"\ninterface_prefix = \"cb{}x\"\n\
             address_pool = \"10.237.0.0/24\"\nmemory_mb = 256\nimages_dir = \"{}\"\n",
            pid % 100_000,
            images_dir().display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let _proxy = ProxyProcess::start(&config_path, &[admin, explicit]).await?;
    let config = SandboxConfig::load(&config_path).map_err(|e| e.to_string())?;
    let tools_config = ToolsConfig::load(&config_path, &config).map_err(|e| e.to_string())?;
    let mut runtime = Runtime::open(config).map_err(|e| e.to_string())?;
    runtime.detach_sandboxes().map_err(|e| e.to_string())?;
    let runtime = Arc::new(runtime);
    let metrics = ControllerMetrics::new().map_err(|e| e.to_string())?;
    let tools = CustomTools::start(tools_config, runtime.clone(), metrics)
        .await
        .map_err(|e| e.join("; "))?;
    tokio::spawn(tools.clone().watch());
    let result = measure(&runtime, &tools, calls, upstream_port).await;
    tools.shutdown().await;
    let cleanup = runtime.stop_all().await;
    let report = result?;
    cleanup.map_err(|e| e.to_string())?;
    let json = report.json(calls);
    let file = crate::doc::write_figures(out, "tools", &json)?;
    if let Some(doc) = doc {
        crate::doc::write_section(doc, "tools", &report.markdown(calls, &file))?;
    }
    Ok(format!(
        "{}\nwritten to {}",
        report.summary(),
        file.display()
    ))
}

/// Each figure in microseconds.
struct Report {
    handler: Histogram<u64>,
    warm: Histogram<u64>,
    cold: Histogram<u64>,
    direct: Histogram<u64>,
    http: Histogram<u64>,
}

async fn measure(
    runtime: &Arc<Runtime>,
    tools: &Arc<CustomTools>,
    calls: usize,
    upstream_port: u16,
) -> Result<Report, String> {
    let mut report = Report {
        handler: histogram(),
        warm: histogram(),
        cold: histogram(),
        direct: histogram(),
        http: histogram(),
    };
    let input = json!({"order_id": "ord_1001", "note": "benchmark"});
    let context = |n: usize| CallContext {
        session: "sesn_bench".into(),
        agent_id: Some("agent_bench".into()),
        tool_use_id: format!("sevt_{n}"),
    };
    let record = |h: &mut Histogram<u64>, began: Instant| {
        h.record(began.elapsed().as_micros() as u64).ok();
    };
    // The handler's own time: `cat` in a running sandbox, through its agent.
    let sandbox = runtime
        .start_tool(None, &[])
        .await
        .map_err(|e| e.to_string())?;
    let (agent, token) =
        agent_endpoint(runtime.config(), &sandbox.id).map_err(|e| e.to_string())?;
    let request = ExecRequest {
        argv: vec!["cat".into()],
        cwd: Some("/".into()),
        env: Default::default(),
        timeout_ms: Some(30_000),
        stdin: Some(input.to_string()),
    };
    let http = HttpClient::default();
    for _ in 0..calls + 2 {
        let began = Instant::now();
        exec(&http, agent, &token, &request, |_, _| {})
            .await
            .map_err(|e| e.to_string())?;
        record(&mut report.handler, began);
    }
    runtime.stop(&sandbox.id).await.map_err(|e| e.to_string())?;
    let expect_ok = |reply: &cordon_controller::tools::reply::ToolReply, what: &str| {
        if reply.is_error {
            Err(format!("{what}: {:?}", reply.content))
        } else {
            Ok(())
        }
    };
    for n in 0..calls {
        // A warm sandbox is started again after each call; wait for it, as a call arriving
        // later would find it.
        let deadline = Instant::now() + Duration::from_secs(30);
        while tools.warm_ready("cat_warm") == 0 {
            if Instant::now() > deadline {
                return Err("no warm tool sandbox within 30 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let began = Instant::now();
        let reply = tools.call(context(n), "cat_warm", input.clone()).await;
        record(&mut report.warm, began);
        expect_ok(&reply, "cat_warm")?;
    }
    for n in 0..calls {
        let began = Instant::now();
        let reply = tools.call(context(n), "cat_cold", input.clone()).await;
        record(&mut report.cold, began);
        expect_ok(&reply, "cat_cold")?;
    }
    // Interleaved, so both see the same machine.
    let body = input.to_string();
    for n in 0..calls * 10 {
        let began = Instant::now();
        direct(upstream_port, &body).await?;
        record(&mut report.direct, began);
        let began = Instant::now();
        let reply = tools.call(context(n), "upstream", input.clone()).await;
        record(&mut report.http, began);
        expect_ok(&reply, "upstream")?;
    }
    Ok(report)
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    percentile(h, q)
}

impl Report {
    fn overheads(&self) -> (f64, f64, f64) {
        let handler = ms(&self.handler, 0.5);
        (
            ms(&self.warm, 0.5) - handler,
            ms(&self.cold, 0.5) - handler,
            ms(&self.http, 0.5) - ms(&self.direct, 0.5),
        )
    }

    fn summary(&self) -> String {
        let (warm, cold, http) = self.overheads();
        format!(
            "run tool, warm: p50 {:.1} ms, overhead {warm:.1} ms over the handler's own {:.1} ms\n\
             run tool, cold: p50 {:.1} ms, overhead {cold:.1} ms\n\
             http tool: p50 {:.2} ms, overhead {http:.2} ms over the upstream direct, {:.2} ms",
            ms(&self.warm, 0.5),
            ms(&self.handler, 0.5),
            ms(&self.cold, 0.5),
            ms(&self.http, 0.5),
            ms(&self.direct, 0.5),
        )
    }

    fn json(&self, calls: usize) -> serde_json::Value {
        let figures = |h: &Histogram<u64>| json!({"p50_ms": ms(h, 0.5), "p90_ms": ms(h, 0.9), "p99_ms": ms(h, 0.99), "count": h.len()});
        let (warm, cold, http) = self.overheads();
        json!({
            "calls": calls,
            "handler_own": figures(&self.handler),
            "run_warm": figures(&self.warm),
            "run_cold": figures(&self.cold),
            "upstream_direct": figures(&self.direct),
            "http_tool": figures(&self.http),
            "overhead_p50_ms": {"run_warm": warm, "run_cold": cold, "http": http},
        })
    }

    fn markdown(&self, calls: usize, json: &Path) -> String {
        let (warm, cold, http) = self.overheads();
        let met = |ok: bool| if ok { "yes" } else { "**no**" };
        let date = time::OffsetDateTime::now_utc().date();
        format!(
            "{begin}\n## Custom tools\n\n\
             Written by `cordon-bench tools --calls {calls} --doc docs/BENCHMARKS.md` (`make \
             bench-tools`; root, the release build) from [`{json}`](../{json}) on {date}, {cpus} \
             CPUs. Calls through the controller's library as `serve` makes them. Baselines from \
             the same run: for `run` tools, the handler (`cat`, the input back) run in an already \
             running sandbox through its agent; for `http` tools, the same request sent straight \
             to the loopback upstream, both on a new connection per call, interleaved.\n\n\
             | figure | target | measured | met |\n|---|---|---|---|\n\
             | `run` tool on a warm sandbox: overhead over the handler's own time, p50 | <= 100 ms | {warm:.1} ms (call {wp50:.1} ms, handler {hp50:.1} ms: {wratio:.1}x) | {m1} |\n\
             | `run` tool, cold: overhead, p50 | <= 400 ms | {cold:.0} ms (call {cp50:.0} ms, p99 {cp99:.0} ms) | {m2} |\n\
             | `http` tool: overhead over the upstream direct, p50 | <= 2 ms | {http:.2} ms (call {tp50:.2} ms, direct {dp50:.2} ms: {tratio:.1}x) | {m3} |\n\n\
             {end}",
            begin = crate::doc::begin("tools"),
            end = crate::doc::end("tools"),
            json = json.display(),
            cpus = std::thread::available_parallelism().map_or(0, |n| n.get()),
            wp50 = ms(&self.warm, 0.5),
            hp50 = ms(&self.handler, 0.5),
            wratio = ms(&self.warm, 0.5) / ms(&self.handler, 0.5).max(0.001),
            m1 = met(warm <= 100.0),
            cp50 = ms(&self.cold, 0.5),
            cp99 = ms(&self.cold, 0.99),
            m2 = met(cold <= 400.0),
            tp50 = ms(&self.http, 0.5),
            dp50 = ms(&self.direct, 0.5),
            tratio = ms(&self.http, 0.5) / ms(&self.direct, 0.5).max(0.001),
            m3 = met(http <= 2.0),
        )
    }
}

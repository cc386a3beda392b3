//! The local agent loop's own overhead per model turn (docs/OPEN-MODELS.md), against
//! baselines measured in the same run.
//!
//! One local session runs `turns` model turns, each answered at once by a scripted model
//! (cordon_testkit::model) with one `read` call; the loop runs as `serve` runs it (the
//! controller's library, the real proxy with the model's key injected, the session's gVisor
//! sandbox). A turn's wall time is the time between two `span.model_request_start` events.
//! Afterwards, in the same run, each turn's model request is replayed straight through the
//! proxy (the same body, a new connection, from a source registered once) and the same `read`
//! is sent straight to the sandbox's agent: the loop's overhead is a turn's wall time less
//! those two.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cordon_controller::config::SandboxConfig;
use cordon_controller::http::HttpClient;
use cordon_controller::local::LocalSessions;
use cordon_controller::local::agent::AgentSpec;
use cordon_controller::local::events::Event;
use cordon_controller::local::model::ModelClient;
use cordon_controller::metrics::ControllerMetrics;
use cordon_controller::proxy_admin::ProxyAdmin;
use cordon_controller::sandbox::{Runtime, agent_endpoint};
use cordon_controller::store::Store;
use cordon_controller::tools::http::{Opened, ProxyRoute, next_source, open};
use cordon_sandbox_agent::tools::ToolCall;
use cordon_testkit::model::{ModelScript, Reply};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use crate::fixture::{ProxyProcess, free_port, images_dir, percentile};

/// The loop's overhead target per model turn, p50.
const TARGET_MS: f64 = 5.0;

const POLICY: &str = r#"package cordon.egress
import rego.v1
default decision := {"allowed": false}
decision := {"allowed": true} if {
    startswith(input.session.id, "model:")
    input.connection.stage == "connect"
}
decision := {"allowed": true, "inject": [{"secret": "model", "header": "authorization"}]} if {
    startswith(input.session.id, "model:")
    input.connection.stage == "request"
    input.attributes.request.http.method == "POST"
}
"#;

fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new(3).unwrap_or_else(|_| unreachable!("3 is a valid precision"))
}

fn micros(d: Duration) -> u64 {
    d.as_micros().max(1) as u64
}

fn parse_time(text: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}

pub async fn run(turns: usize, out: &Path, doc: Option<&Path>) -> Result<String, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let pid = std::process::id();
    let (explicit, transparent, admin, dns) =
        (free_port()?, free_port()?, free_port()?, free_port()?);
    let script = ModelScript::new([]);
    let model = cordon_testkit::model::spawn_plain(script.clone());
    let port = model.port();
    std::fs::create_dir_all(dir.path().join("bundle")).map_err(|e| e.to_string())?;
    std::fs::write(dir.path().join("bundle/policy.rego"), POLICY).map_err(|e| e.to_string())?;
    write_private(&dir.path().join("model-key"), "sk-bench-model-key")?;
    write_private(
        &dir.path().join("secrets.toml"),
        "[secrets.model]\nvalue_file = \"model-key\"\nhosts = [\"model.bench.test\"]\n\
         format = \"bearer\"\nallow_plaintext = true\n",
    )?;
    let config_path = dir.path().join("cordon.toml");
    std::fs::write(
        &config_path,
        format!(
            "[proxy]\nexplicit_listen = \"127.0.0.1:{explicit}\"\n\
             transparent_listen = \"0.0.0.0:{transparent}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
             state_dir = \"state\"\n[policy]\nbundle = \"bundle\"\n[dns]\nlisten = \"0.0.0.0:{dns}\"\n\
             [credentials]\nstore = \"secrets.toml\"\n\
             [upstream.connect_to]\n\"model.bench.test:{port}\" = \"127.0.0.1:{port}\"\n\
             [audit]\npath = \"state/audit.log\"\n\
             [sandbox]\nname_prefix = \"cordon-bench-{pid}\"\ninterface_prefix = \"cb{}x\"\n\
             address_pool = \"10.236.0.0/24\"\nmemory_mb = 256\nimages_dir = \"{}\"\n",
            pid % 100_000,
            images_dir().display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let _proxy = ProxyProcess::start(&config_path, &[admin, explicit]).await?;
    let config = SandboxConfig::load(&config_path).map_err(|e| e.to_string())?;
    let route = ProxyRoute::new(
        std::net::SocketAddr::from(([127, 0, 0, 1], explicit)),
        &config.ca_cert,
    )?;
    let proxy_admin = ProxyAdmin::new(config.admin);
    let store = Store::open(&config.state_dir.join("state.db")).map_err(|e| e.to_string())?;
    let mut runtime = Runtime::open(config).map_err(|e| e.to_string())?;
    runtime.detach_sandboxes().map_err(|e| e.to_string())?;
    let runtime = Arc::new(runtime);
    let metrics = ControllerMetrics::new().map_err(|e| e.to_string())?;
    let local = LocalSessions::new(
        store,
        runtime.clone(),
        None,
        ModelClient {
            route: route.clone(),
            admin: proxy_admin.clone(),
        },
        metrics,
        None,
    );
    let result = measure(&local, &runtime, &script, &route, &proxy_admin, port, turns).await;
    let cleanup = runtime.stop_all().await;
    // stop_all keeps workspaces mounted, as for sessions that resume.
    let unmounted = crate::sandboxes::remove_workspaces(&runtime);
    let report = result?;
    cleanup.map_err(|e| e.to_string())?;
    unmounted?;
    let json = report.json(turns);
    let file = crate::doc::write_figures(out, "local-loop", &json)?;
    if let Some(doc) = doc {
        crate::doc::write_section(doc, "local-loop", &report.markdown(turns, &file))?;
    }
    Ok(format!(
        "{}\nwritten to {}",
        report.summary(),
        file.display()
    ))
}

fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Each figure in microseconds.
struct Report {
    wall: Histogram<u64>,
    model: Histogram<u64>,
    tool: Histogram<u64>,
    overhead: Histogram<u64>,
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    local: &Arc<LocalSessions>,
    runtime: &Arc<Runtime>,
    script: &Arc<ModelScript>,
    route: &ProxyRoute,
    admin: &ProxyAdmin,
    port: u16,
    turns: usize,
) -> Result<Report, String> {
    let read = json!({"file_path": "/workspace/note.txt"}).to_string();
    script
        .push((0..turns).map(|_| Reply::Calls(String::new(), vec![("read".into(), read.clone())])));
    script.push([Reply::Text("done".into())]);
    let spec = AgentSpec::from_toml(&format!(
        "name = \"bench\"\n[model]\nbase_url = \"http://model.bench.test:{port}/v1\"\nname = \"scripted\"\n\
         [tools]\ntoolset = [\"read\", \"write\"]\n[limits]\nmax_turns = {}\n",
        turns + 5
    ))
    .map_err(|e| e.join("; "))?;
    local.create_agent(spec).map_err(|e| e.to_string())?;
    let session = local
        .create_session("bench", Some("loop overhead"))
        .map_err(|e| e.to_string())?;
    let id = session.id.clone();
    // The sandbox first, with the file the calls read, so the first turn is not a cold start.
    runtime.start(&id, None).await.map_err(|e| e.to_string())?;
    let (agent, token) = agent_endpoint(runtime.config(), &id).map_err(|e| e.to_string())?;
    let http = HttpClient::default();
    let note = ToolCall {
        name: "write".into(),
        input: json!({"file_path": "/workspace/note.txt", "content": "a short note\n"}),
    };
    cordon_controller::agent::tool(&http, agent, &token, &note)
        .await
        .map_err(|e| e.to_string())?;
    let began = Instant::now();
    local
        .post(
            &id,
            &[json!({"type": "user.message", "content": [{"type": "text", "text": "go"}]})],
        )
        .map_err(|e| e.to_string())?;
    let events = loop {
        let events = local.events(&id, 0, 1_000_000).map_err(|e| e.to_string())?;
        if events
            .iter()
            .any(|e| matches!(e.event, Event::StatusIdle { .. }))
        {
            break events;
        }
        if began.elapsed() > Duration::from_secs(600) {
            return Err("the session did not finish within 10 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if let Some(error) = events.iter().find_map(|e| match &e.event {
        Event::SessionError { error } => Some(error.message.clone()),
        _ => None,
    }) {
        return Err(format!("the session failed: {error}"));
    }
    let errors = events
        .iter()
        .filter(|e| matches!(&e.event, Event::ToolResult { is_error: true, .. }))
        .count();
    if errors > 0 {
        return Err(format!("{errors} read calls failed"));
    }
    let starts: Vec<time::OffsetDateTime> = events
        .iter()
        .filter(|e| matches!(e.event, Event::ModelRequestStart { .. }))
        .filter_map(|e| parse_time(&e.processed_at))
        .collect();
    let mut report = Report {
        wall: histogram(),
        model: histogram(),
        tool: histogram(),
        overhead: histogram(),
    };
    // Baselines: each turn's request replayed through the proxy, the read sent straight to
    // the sandbox's agent.
    let source = next_source();
    admin
        .register_shared("model:baseline", source, None, &Default::default())
        .await
        .map_err(|e| e.to_string())?;
    let bodies: Vec<Value> = script.requests().into_iter().map(|s| s.body).collect();
    // The same answer as the loop got.
    script
        .push((0..turns).map(|_| Reply::Calls(String::new(), vec![("read".into(), read.clone())])));
    let url: http::Uri = format!("http://model.bench.test:{port}/v1/chat/completions")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let call = ToolCall {
        name: "read".into(),
        input: json!({"file_path": "/workspace/note.txt"}),
    };
    for (k, pair) in starts.windows(2).enumerate() {
        let wall = Duration::try_from(pair[1] - pair[0]).unwrap_or_default();
        let clock = Instant::now();
        direct(route, source, &url, &bodies[k]).await?;
        let model = clock.elapsed();
        let clock = Instant::now();
        cordon_controller::agent::tool(&http, agent, &token, &call)
            .await
            .map_err(|e| e.to_string())?;
        let tool = clock.elapsed();
        report.wall.record(micros(wall)).ok();
        report.model.record(micros(model)).ok();
        report.tool.record(micros(tool)).ok();
        report
            .overhead
            .record(micros(wall.saturating_sub(model + tool)))
            .ok();
    }
    admin
        .unregister_source("model:baseline", source)
        .await
        .map_err(|e| e.to_string())?;
    local.archive(&id).map_err(|e| e.to_string())?;
    Ok(report)
}

/// One chat-completions request through the proxy, on a new connection, read whole.
async fn direct(
    route: &ProxyRoute,
    source: std::net::IpAddr,
    url: &http::Uri,
    body: &Value,
) -> Result<(), String> {
    let Opened {
        mut sender,
        target,
        host_header,
    } = open(route, source, url)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(target)
        .header(http::header::HOST, host_header)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!(
            "the baseline request answered {}",
            response.status()
        ));
    }
    response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    percentile(h, q)
}

impl Report {
    fn summary(&self) -> String {
        format!(
            "local loop: turn p50 {:.2} ms = model through the proxy {:.2} ms + read {:.2} ms + \
             the loop's own {:.2} ms (p90 {:.2} ms; target <= {TARGET_MS} ms)",
            ms(&self.wall, 0.5),
            ms(&self.model, 0.5),
            ms(&self.tool, 0.5),
            ms(&self.overhead, 0.5),
            ms(&self.overhead, 0.9),
        )
    }

    fn json(&self, turns: usize) -> Value {
        let figures = |h: &Histogram<u64>| json!({"p50_ms": ms(h, 0.5), "p90_ms": ms(h, 0.9), "p99_ms": ms(h, 0.99), "count": h.len()});
        json!({
            "turns": turns,
            "turn_wall": figures(&self.wall),
            "model_direct": figures(&self.model),
            "tool_direct": figures(&self.tool),
            "loop_overhead": figures(&self.overhead),
            "target_p50_ms": TARGET_MS,
        })
    }

    fn markdown(&self, turns: usize, json: &Path) -> String {
        let overhead = ms(&self.overhead, 0.5);
        let met = if overhead <= TARGET_MS {
            "yes"
        } else {
            "**no**"
        };
        let date = time::OffsetDateTime::now_utc().date();
        format!(
            "{begin}\n## Local agent loop\n\n\
             Written by `cordon-bench local-loop --turns {turns} --doc docs/BENCHMARKS.md` (`make \
             bench-local`; root, the release build) from [`{json}`](../{json}) on {date}, {cpus} \
             CPUs. One local session of {turns} model turns, each answered at once by a scripted \
             model with one `read` call, through the real proxy (the model's key injected) into \
             the session's gVisor sandbox. A turn is the time between two model requests; the \
             baselines, from the same run, are each turn's request replayed straight through the \
             proxy and the same `read` sent straight to the sandbox's agent.\n\n\
             | figure | target | measured | met |\n|---|---|---|---|\n\
             | the loop's own time per model turn, p50 | <= {TARGET_MS} ms | {overhead:.2} ms (p90 {o90:.2} ms) | {met} |\n\
             | a turn, p50 | | {wall:.2} ms | |\n\
             | its model request straight through the proxy, p50 | | {model:.2} ms | |\n\
             | its `read` straight to the sandbox's agent, p50 | | {tool:.2} ms | |\n\n\
             {end}",
            begin = crate::doc::begin("local-loop"),
            end = crate::doc::end("local-loop"),
            json = json.display(),
            cpus = std::thread::available_parallelism().map_or(0, |n| n.get()),
            o90 = ms(&self.overhead, 0.9),
            wall = ms(&self.wall, 0.5),
            model = ms(&self.model, 0.5),
            tool = ms(&self.tool, 0.5),
        )
    }
}

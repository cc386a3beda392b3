//! Sandbox start and stop latency, memory per idle sandbox, and many sandboxes at once.
//!
//! Starts a fresh proxy and `count` sandboxes one after another through the controller's
//! library API (the same calls the CLI makes), checks every one answers while all are up,
//! measures each sandbox's memory (PSS of its runsc processes, so shared pages are split
//! rather than counted once per sandbox), then stops them one by one. Latency is the library
//! call's wall time: for start, from the call to the agent answering its health check; the
//! CLI adds its own process start (a few milliseconds) on top.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cordon_controller::config::SandboxConfig;
use cordon_controller::http::HttpClient;
use cordon_controller::sandbox::Runtime;
use hdrhistogram::Histogram;

const POLICY: &str = "package cordon.egress\nimport rego.v1\ndefault decision := false\n";

fn binary(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let path = exe
        .parent()
        .map(|d| d.join(name))
        .ok_or("cannot locate the binaries")?;
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} is not built: run `cargo build --release --workspace --bins`",
            path.display()
        ))
    }
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

/// The proxy, killed on drop.
struct ProxyProcess(Child);

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// PSS in KiB of the processes whose command line names `marker` (a session's bundle path).
fn pss_kib(marker: &str) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(marker))
                .unwrap_or(false)
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("smaps_rollup")).ok())
        .filter_map(|s| {
            s.lines()
                .find(|l| l.starts_with("Pss:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

fn percentile(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// The image store sandboxes run from: `$CORDON_IMAGES`, default `~/.cache/cordon/images`
/// (where `make up` and `make test` build the default image).
fn images_dir() -> std::path::PathBuf {
    std::env::var_os("CORDON_IMAGES").map_or_else(
        || {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/cordon/images")
        },
        std::path::PathBuf::from,
    )
}

/// Runs the measurement; returns a human summary and writes JSON under `out`.
pub async fn run(count: usize, out: &Path) -> Result<String, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let pid = std::process::id();
    let (transparent, admin, dns) = (free_port()?, free_port()?, free_port()?);
    std::fs::create_dir_all(dir.path().join("bundle")).map_err(|e| e.to_string())?;
    std::fs::write(dir.path().join("bundle/policy.rego"), POLICY).map_err(|e| e.to_string())?;
    let config_path = dir.path().join("cordon.toml");
    std::fs::write(
        &config_path,
        format!(
            "[proxy]\ntransparent_listen = \"0.0.0.0:{transparent}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
             state_dir = \"state\"\n[policy]\nbundle = \"bundle\"\n[dns]\nlisten = \"0.0.0.0:{dns}\"\n\
             [sandbox]\nname_prefix = \"cordon-bench-{pid}\"\ninterface_prefix = \"cb{}x\"\n\
             address_pool = \"10.236.0.0/22\"\nagent = \"{}\"\nmemory_mb = 256\n\
             images_dir = \"{}\"\n",
            pid % 100_000,
            binary("cordon-sandbox-agent")?.display(),
            images_dir().display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let _proxy = ProxyProcess(
        Command::new(binary("cordon-proxy")?)
            .arg("--config")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", admin)).is_err() {
        if Instant::now() > deadline {
            return Err("the proxy did not start".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let config = SandboxConfig::load(&config_path).map_err(|e| e.to_string())?;
    let runtime = Runtime::open(config.clone()).map_err(|e| e.to_string())?;
    let result = measure(&runtime, &config, count).await;
    // Whatever happened, nothing stays behind.
    let cleanup = runtime.stop_all().await;
    let (summary, json) = result?;
    cleanup.map_err(|e| e.to_string())?;
    std::fs::create_dir_all(out).map_err(|e| e.to_string())?;
    let date = time::OffsetDateTime::now_utc().date();
    let file = out.join(format!("sandboxes-{date}.json"));
    std::fs::write(
        &file,
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    )
    .map_err(|e| e.to_string())?;
    Ok(format!("{summary}\nwritten to {}", file.display()))
}

async fn measure(
    runtime: &Runtime,
    config: &SandboxConfig,
    count: usize,
) -> Result<(String, serde_json::Value), String> {
    let mut start = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    let mut stop = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    let ids: Vec<String> = (0..count).map(|i| format!("bench{i}")).collect();
    let mut failures = Vec::new();
    let mut support = None;
    for id in &ids {
        let t = Instant::now();
        match runtime.start(id, None).await {
            Ok(started) => {
                start
                    .record(t.elapsed().as_micros() as u64)
                    .map_err(|e| e.to_string())?;
                support = Some(started.support);
            }
            Err(e) => failures.push(format!("start {id}: {e}")),
        }
    }
    // All up at once: each answers a command, and its memory is measured idle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let http = HttpClient::default();
    let mut pss = Vec::new();
    for id in &ids {
        let Ok((agent, token)) = cordon_controller::sandbox::agent_endpoint(config, id) else {
            continue;
        };
        let request = cordon_sandbox_agent_request();
        match cordon_controller::agent::exec(&http, agent, &token, &request, |_, _| {}).await {
            Ok(outcome) if outcome.exit_status() == 0 => {}
            Ok(outcome) => failures.push(format!("exec in {id}: {outcome:?}")),
            Err(e) => failures.push(format!("exec in {id}: {e}")),
        }
        let bundle = config.state_dir.join("sessions").join(id).join("bundle");
        pss.push(pss_kib(&bundle.display().to_string()));
    }
    let concurrent = runtime
        .list()
        .map_err(|e| e.to_string())?
        .iter()
        .filter(|s| s.state == "running")
        .count();
    for id in &ids {
        let t = Instant::now();
        match runtime.stop(id).await {
            Ok(()) => stop
                .record(t.elapsed().as_micros() as u64)
                .map_err(|e| e.to_string())?,
            Err(e) => failures.push(format!("stop {id}: {e}")),
        }
    }
    pss.sort_unstable();
    let pss_median = pss.get(pss.len() / 2).copied().unwrap_or(0) as f64 / 1024.0;
    let pss_mean = pss.iter().sum::<u64>() as f64 / pss.len().max(1) as f64 / 1024.0;
    let json = serde_json::json!({
        "sessions": count,
        "concurrent_running": concurrent,
        "failures": failures,
        "network_mode": support.map(|s| s.network.as_str()),
        "cgroups": support.map(|s| s.cgroups),
        "start_ms": {"p50": percentile(&start, 0.5), "p99": percentile(&start, 0.99), "max": start.max() as f64 / 1000.0},
        "stop_ms": {"p50": percentile(&stop, 0.5), "p99": percentile(&stop, 0.99), "max": stop.max() as f64 / 1000.0},
        "idle_pss_mib": {"median": pss_median, "mean": pss_mean},
        "machine": {"cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)},
    });
    let summary = format!(
        "{count} sandboxes ({} running at once, {} failure(s)), network {}:\n  start p50 {:.0} ms, p99 {:.0} ms\n  stop  p50 {:.0} ms, p99 {:.0} ms\n  idle memory (PSS) median {pss_median:.1} MiB, mean {pss_mean:.1} MiB per sandbox",
        concurrent,
        failures.len(),
        support.map_or("?", |s| s.network.as_str()),
        percentile(&start, 0.5),
        percentile(&start, 0.99),
        percentile(&stop, 0.5),
        percentile(&stop, 0.99),
    );
    if failures.is_empty() {
        Ok((summary, json))
    } else {
        Err(format!("{summary}\nfailures:\n  {}", failures.join("\n  ")))
    }
}

fn cordon_sandbox_agent_request() -> cordon_controller::agent::ExecRequest {
    cordon_controller::agent::ExecRequest {
        argv: vec!["true".into()],
        cwd: None,
        env: Default::default(),
        timeout_ms: Some(10_000),
        stdin: None,
    }
}

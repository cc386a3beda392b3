//! Sandbox start and stop latency, memory per idle sandbox, and many sandboxes at once.
//!
//! Starts a fresh proxy and `count` sandboxes one after another through the controller's
//! library API (the same calls the CLI makes), checks every one answers while all are up,
//! measures each sandbox's memory (PSS of its runsc processes, so shared pages are split
//! rather than counted once per sandbox), then stops them one by one. Latency is the library
//! call's wall time: for start, from the call to the agent answering its health check; the
//! CLI adds its own process start (a few milliseconds) on top.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cordon_controller::config::SandboxConfig;
use cordon_controller::http::HttpClient;
use cordon_controller::sandbox::Runtime;
use hdrhistogram::Histogram;

use crate::fixture::{ProxyProcess, free_port, images_dir, percentile};

const POLICY: &str = "package cordon.egress\nimport rego.v1\ndefault decision := false\n";

/// PSS in KiB of the processes whose command line names `marker` (a session's bundle path).
pub(crate) fn pss_kib(marker: &str) -> u64 {
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

/// Removes every workspace the runs made: `stop_all` keeps them (mounted, as for sessions
/// that resume), and the temporary state directory cannot go while they are mounted.
pub(crate) fn remove_workspaces(runtime: &Runtime) -> Result<(), String> {
    let workspaces = runtime.workspaces();
    let failed: Vec<String> = workspaces
        .list()
        .into_iter()
        .filter_map(|id| workspaces.remove(&id).err().map(|e| e.to_string()))
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("workspaces left: {}", failed.join("; ")))
    }
}

/// Runs the measurements; returns a human summary, writes JSON under `out` and, with `doc`,
/// the figures against their targets into that Markdown file.
pub async fn run(count: usize, out: &Path, doc: Option<&Path>) -> Result<String, String> {
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
             address_pool = \"10.236.0.0/22\"\nmemory_mb = 256\n\
             images_dir = \"{}\"\n",
            pid % 100_000,
            images_dir().display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let _proxy = ProxyProcess::start(&config_path, &[admin]).await?;
    let config = SandboxConfig::load(&config_path).map_err(|e| e.to_string())?;
    let mut report = Report::default();
    // Cold, concurrent and resume phases on one runtime; the warm pool on a second one (the
    // controller lock allows one runtime per state directory at a time).
    {
        let mut runtime = Runtime::open(config.clone()).map_err(|e| e.to_string())?;
        // As serve runs them.
        runtime.detach_sandboxes().map_err(|e| e.to_string())?;
        let result = async {
            cold(&runtime, &config, count, &mut report).await?;
            resume(&runtime, &config, 5, &mut report).await?;
            concurrent(&runtime, count, &mut report).await
        }
        .await;
        let cleanup = runtime.stop_all().await;
        let unmounted = remove_workspaces(&runtime);
        result?;
        cleanup.map_err(|e| e.to_string())?;
        unmounted?;
    }
    {
        let warm_config = SandboxConfig {
            warm: 1,
            ..config.clone()
        };
        let mut runtime = Runtime::open(warm_config.clone()).map_err(|e| e.to_string())?;
        runtime.detach_sandboxes().map_err(|e| e.to_string())?;
        let result = warm(&runtime, &warm_config, 10, &mut report).await;
        let cleanup = runtime.stop_all().await;
        let unmounted = remove_workspaces(&runtime);
        result?;
        cleanup.map_err(|e| e.to_string())?;
        unmounted?;
    }
    let (summary, json) = report.finish(count);
    let file = crate::doc::write_figures(out, "sandboxes", &json)?;
    if let Some(doc) = doc
        && report.failures.is_empty()
    {
        crate::doc::write_section(doc, "sandboxes", &report.markdown(count, &file))?;
    }
    if report.failures.is_empty() {
        Ok(format!("{summary}\nwritten to {}", file.display()))
    } else {
        Err(format!(
            "{summary}\nfailures:\n  {}",
            report.failures.join("\n  ")
        ))
    }
}

/// Everything measured, in microseconds unless named otherwise.
struct Report {
    network: Option<&'static str>,
    cgroups: Option<bool>,
    cold_start: Histogram<u64>,
    cold_first_call: Histogram<u64>,
    stop: Histogram<u64>,
    cold_pss_kib: Vec<u64>,
    concurrent_all_answering: Option<Duration>,
    concurrent_stop_all: Option<Duration>,
    resume_first_call: Histogram<u64>,
    /// Fresh sessions started in the resume phase, under the same conditions: its baseline.
    fresh_first_call: Histogram<u64>,
    warm_first_call: Histogram<u64>,
    warm_claimed: usize,
    warm_pss_kib: Vec<u64>,
    failures: Vec<String>,
}

impl Default for Report {
    fn default() -> Self {
        let h =
            || Histogram::<u64>::new(3).unwrap_or_else(|_| unreachable!("3 is a valid precision"));
        Self {
            network: None,
            cgroups: None,
            cold_start: h(),
            cold_first_call: h(),
            stop: h(),
            cold_pss_kib: Vec::new(),
            concurrent_all_answering: None,
            concurrent_stop_all: None,
            resume_first_call: h(),
            fresh_first_call: h(),
            warm_first_call: h(),
            warm_claimed: 0,
            warm_pss_kib: Vec::new(),
            failures: Vec::new(),
        }
    }
}

fn record(h: &mut Histogram<u64>, elapsed: Duration) {
    let _ = h.record(elapsed.as_micros() as u64);
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    percentile(h, q)
}

fn mib(kib: &[u64]) -> f64 {
    let mut sorted = kib.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied().unwrap_or(0) as f64 / 1024.0
}

impl Report {
    fn finish(&self, count: usize) -> (String, serde_json::Value) {
        let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
        let json = serde_json::json!({
            "sessions": count,
            "failures": self.failures,
            "network_mode": self.network,
            "cgroups": self.cgroups,
            "cold_start_ms": {"p50": ms(&self.cold_start, 0.5), "p99": ms(&self.cold_start, 0.99), "max": self.cold_start.max() as f64 / 1000.0},
            "cold_first_call_ms": {"p50": ms(&self.cold_first_call, 0.5), "p99": ms(&self.cold_first_call, 0.99)},
            "stop_ms": {"p50": ms(&self.stop, 0.5), "p99": ms(&self.stop, 0.99)},
            "idle_pss_mib": {"cold_median": mib(&self.cold_pss_kib), "warm_median": mib(&self.warm_pss_kib)},
            "concurrent": {"sessions": count, "all_answering_s": secs(self.concurrent_all_answering), "all_stopped_s": secs(self.concurrent_stop_all)},
            "resume_100mib_first_call_ms": {"p50": ms(&self.resume_first_call, 0.5), "max": self.resume_first_call.max() as f64 / 1000.0},
            "fresh_first_call_same_phase_ms": {"p50": ms(&self.fresh_first_call, 0.5), "max": self.fresh_first_call.max() as f64 / 1000.0},
            "warm_claim_first_call_ms": {"claims": self.warm_claimed, "p50": ms(&self.warm_first_call, 0.5), "max": self.warm_first_call.max() as f64 / 1000.0},
            "machine": {"cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)},
        });
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        let summary = format!(
            "sandboxes on {} cpu(s), network {}, {} failure(s):\n\
             \x20 cold start (call to agent answering)   p50 {:.0} ms, p99 {:.0} ms\n\
             \x20 cold start to first call answered     p50 {:.0} ms\n\
             \x20 warm claim to first call answered     p50 {:.1} ms ({} claims; {:.3}x cold)\n\
             \x20 resume with 100 MiB workspace, call   p50 {:.0} ms ({:.2}x a fresh start beside it)\n\
             \x20 {count} started at once, all answering   {:.2} s; all stopped {:.2} s\n\
             \x20 stop                                  p50 {:.0} ms, p99 {:.0} ms\n\
             \x20 idle memory (PSS) per sandbox          cold {:.1} MiB, warm {:.1} MiB (median)",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            self.network.unwrap_or("?"),
            self.failures.len(),
            ms(&self.cold_start, 0.5),
            ms(&self.cold_start, 0.99),
            ms(&self.cold_first_call, 0.5),
            ms(&self.warm_first_call, 0.5),
            self.warm_claimed,
            ratio(
                ms(&self.warm_first_call, 0.5),
                ms(&self.cold_first_call, 0.5)
            ),
            ms(&self.resume_first_call, 0.5),
            ratio(
                ms(&self.resume_first_call, 0.5),
                ms(&self.fresh_first_call, 0.5)
            ),
            secs(self.concurrent_all_answering).unwrap_or(0.0),
            secs(self.concurrent_stop_all).unwrap_or(0.0),
            ms(&self.stop, 0.5),
            ms(&self.stop, 0.99),
            mib(&self.cold_pss_kib),
            mib(&self.warm_pss_kib),
        );
        (summary, json)
    }
}

impl Report {
    /// The figures against the targets of issue 14, as the Markdown section of the benchmarks
    /// document.
    fn markdown(&self, count: usize, json: &Path) -> String {
        let met = |ok: bool| if ok { "yes" } else { "no" };
        let cold = ms(&self.cold_start, 0.5);
        let cold_call = ms(&self.cold_first_call, 0.5);
        let warm = ms(&self.warm_first_call, 0.5);
        let resume = ms(&self.resume_first_call, 0.5);
        let fresh = ms(&self.fresh_first_call, 0.5);
        let many = self
            .concurrent_all_answering
            .map_or(0.0, |d| d.as_secs_f64());
        let pss = mib(&self.cold_pss_kib);
        let date = time::OffsetDateTime::now_utc().date();
        format!(
            "{begin}\n## Sandboxes\n\n\
             Written by `cordon-bench sandboxes --count {count} --doc docs/BENCHMARKS.md` (root; \
             the release build) from [`{json}`](../{json}) on {date}, {cpus} CPUs, network mode \
             {network}. The library calls `serve` makes; times from the call until the agent \
             answers (start) or until a first command (`true`) is answered (first call).\n\n\
             | figure | target | measured | met |\n|---|---|---|---|\n\
             | cold start, call to agent answering, p50 | <= 300 ms | {cold:.0} ms (p99 {cold99:.0} ms; the first includes the runsc probe) | {m1} |\n\
             | warm claim to first call answered, p50 | <= 50 ms | {warm:.1} ms ({ratio_warm:.2}x the cold start to first call, {cold_call:.0} ms) | {m2} |\n\
             | {count} sessions started at once (cold), all answering | <= 3 s | {many:.2} s | {m3} |\n\
             | idle memory per sandbox, PSS, median of {count} | <= 16 MiB | {pss:.1} MiB | {m4} |\n\
             | workspace restore on resume (100 MiB in 100 files): resume to a call listing them, minus a fresh start to first call beside it, p50 | <= 200 ms | {restore} (resume {resume:.0} ms, fresh {fresh:.0} ms: {ratio_resume:.2}x; the workspace stays mounted while the session lives, so nothing is copied) | {m5} |\n\
             | stop, p50 | | {stop:.0} ms | |\n\n\
             {end}",
            begin = crate::doc::begin("sandboxes"),
            end = crate::doc::end("sandboxes"),
            json = json.display(),
            cpus = std::thread::available_parallelism().map_or(0, |n| n.get()),
            network = self.network.unwrap_or("?"),
            cold99 = ms(&self.cold_start, 0.99),
            m1 = met(cold <= 300.0),
            ratio_warm = if cold_call > 0.0 {
                warm / cold_call
            } else {
                0.0
            },
            m2 = met(warm <= 50.0),
            m3 = met(many <= 3.0),
            m4 = met(pss <= 16.0),
            ratio_resume = if fresh > 0.0 { resume / fresh } else { 0.0 },
            restore = if resume > fresh {
                format!("{:.0} ms", resume - fresh)
            } else {
                "none measurable".to_string()
            },
            m5 = met(resume - fresh <= 200.0),
            stop = ms(&self.stop, 0.5),
        )
    }
}

/// Runs `script` in session `id`'s sandbox; an error unless it exits 0.
async fn call(config: &SandboxConfig, id: &str, script: &str) -> Result<(), String> {
    let (agent, token) =
        cordon_controller::sandbox::agent_endpoint(config, id).map_err(|e| format!("{id}: {e}"))?;
    let request = shell_request(script);
    match cordon_controller::agent::exec(&HttpClient::default(), agent, &token, &request, |_, _| {})
        .await
    {
        Ok(outcome) if outcome.exit_status() == 0 => Ok(()),
        Ok(outcome) => Err(format!("{id}: {script:?} ended {outcome:?}")),
        Err(e) => Err(format!("{id}: {e}")),
    }
}

/// Sessions started one after another: start latency, first call, idle memory, stop.
async fn cold(
    runtime: &Runtime,
    config: &SandboxConfig,
    count: usize,
    report: &mut Report,
) -> Result<(), String> {
    let ids: Vec<String> = (0..count).map(|i| format!("cold{i}")).collect();
    for id in &ids {
        let t = Instant::now();
        match runtime.start(id, None).await {
            Ok(started) => {
                record(&mut report.cold_start, t.elapsed());
                report.network = Some(started.support.network.as_str());
                report.cgroups = Some(started.support.cgroups);
                match call(config, id, "true").await {
                    Ok(()) => record(&mut report.cold_first_call, t.elapsed()),
                    Err(e) => report.failures.push(e),
                }
            }
            Err(e) => report.failures.push(format!("start {id}: {e}")),
        }
    }
    // All up at once and idle: memory per sandbox.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for id in &ids {
        let bundle = config.state_dir.join("sessions").join(id).join("bundle");
        report
            .cold_pss_kib
            .push(pss_kib(&bundle.display().to_string()));
    }
    for id in &ids {
        let t = Instant::now();
        match runtime.stop(id).await {
            Ok(()) => record(&mut report.stop, t.elapsed()),
            Err(e) => report.failures.push(format!("stop {id}: {e}")),
        }
    }
    Ok(())
}

/// `count` sessions started at the same moment (cold): the time until every one answers.
async fn concurrent(runtime: &Runtime, count: usize, report: &mut Report) -> Result<(), String> {
    let ids: Vec<String> = (0..count).map(|i| format!("many{i}")).collect();
    let t = Instant::now();
    let started =
        futures_util::future::join_all(ids.iter().map(|id| runtime.start(id, None))).await;
    report.concurrent_all_answering = Some(t.elapsed());
    for (id, result) in ids.iter().zip(started) {
        if let Err(e) = result {
            report.failures.push(format!("start {id} (at once): {e}"));
        }
    }
    let t = Instant::now();
    let stopped = futures_util::future::join_all(ids.iter().map(|id| runtime.stop(id))).await;
    report.concurrent_stop_all = Some(t.elapsed());
    for (id, result) in ids.iter().zip(stopped) {
        if let Err(e) = result {
            report.failures.push(format!("stop {id} (at once): {e}"));
        }
    }
    Ok(())
}

/// A session idles (its sandbox stopped) with 100 MiB in 100 files in its workspace, then
/// resumes: from the start call to a call that lists the files answered. Each round also
/// starts a fresh session the same way right after, the baseline the resume is compared with.
async fn resume(
    runtime: &Runtime,
    config: &SandboxConfig,
    rounds: usize,
    report: &mut Report,
) -> Result<(), String> {
    for i in 0..rounds {
        let (id, fresh) = (format!("resume{i}"), format!("fresh{i}"));
        runtime.start(&id, None).await.map_err(|e| e.to_string())?;
        call(
            config,
            &id,
            "for i in $(seq 100); do head -c 1048576 /dev/urandom > /workspace/f$i; done",
        )
        .await?;
        runtime.stop(&id).await.map_err(|e| e.to_string())?;
        // A session idles for max_idle_ms (a minute by default) before its sandbox stops:
        // the 100 MiB just written are on disk by the time it resumes.
        let _ = Command::new("sync").status();
        tokio::time::sleep(Duration::from_secs(1)).await;
        for (session, check, into) in [
            (
                &id,
                "test $(ls /workspace | wc -l) = 100",
                &mut report.resume_first_call,
            ),
            (
                &fresh,
                "test $(ls /workspace | wc -l) = 0",
                &mut report.fresh_first_call,
            ),
        ] {
            let t = Instant::now();
            runtime
                .start(session, None)
                .await
                .map_err(|e| e.to_string())?;
            match call(config, session, check).await {
                Ok(()) => record(into, t.elapsed()),
                Err(e) => report.failures.push(e),
            }
        }
        for session in [&id, &fresh] {
            runtime.end(session).await.map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// The warm pool (one sandbox, refilled between claims, untimed): from a new session's start
/// call to its first call answered; and a waiting warm sandbox's idle memory.
async fn warm(
    runtime: &Runtime,
    config: &SandboxConfig,
    claims: usize,
    report: &mut Report,
) -> Result<(), String> {
    for i in 0..claims {
        let problems = runtime.fill_warm().await;
        if !problems.is_empty() {
            report.failures.extend(problems);
            continue;
        }
        if i == 0 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            for view in runtime.list().map_err(|e| e.to_string())? {
                if view.state == "warm" {
                    let bundle = config
                        .state_dir
                        .join("sessions")
                        .join(&view.id)
                        .join("bundle");
                    report
                        .warm_pss_kib
                        .push(pss_kib(&bundle.display().to_string()));
                }
            }
        }
        let id = format!("warm{i}");
        let t = Instant::now();
        match runtime.start(&id, None).await {
            Ok(started) if started.warm => match call(config, &id, "true").await {
                Ok(()) => {
                    record(&mut report.warm_first_call, t.elapsed());
                    report.warm_claimed += 1;
                }
                Err(e) => report.failures.push(e),
            },
            Ok(_) => report
                .failures
                .push(format!("{id} started cold with a warm sandbox waiting")),
            Err(e) => report.failures.push(format!("start {id}: {e}")),
        }
        if let Err(e) = runtime.stop(&id).await {
            report.failures.push(format!("stop {id}: {e}"));
        }
    }
    Ok(())
}

fn shell_request(script: &str) -> cordon_controller::agent::ExecRequest {
    cordon_controller::agent::ExecRequest {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        cwd: None,
        env: Default::default(),
        timeout_ms: Some(60_000),
        stdin: None,
    }
}

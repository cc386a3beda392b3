//! The side-by-side run: starts the fake upstream (nginx with a test CA), then each system
//! under test in turn with an equivalent allow rule, runs the scenarios' load through it, and
//! collects the figures, the system's CPU time and memory into [`results::Results`].

mod git;
pub(crate) mod machine;
pub(crate) mod pki;
pub(crate) mod process;
mod profile;
pub mod results;
pub mod scenarios;
mod stream;
pub mod systems;
mod template;
mod upstream;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::load::{self, ConnectionReuse, Protocol, Route, client_tls};
use process::Process;
use results::{IdleResult, Results, Row, ScenarioResult, Settings};
use scenarios::{LARGE_BYTES, Scenario, Tls};
use systems::{Env, Running, System, Variant};

/// Everything a comparison run is told.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    pub systems: Vec<System>,
    pub scenarios: Vec<Scenario>,
    pub settings: Settings,
    /// How long building up the idle connections may take per system.
    pub idle_timeout: Duration,
    pub repo: PathBuf,
    pub peers: PathBuf,
    pub cordon_bin: PathBuf,
    pub nginx_bin: PathBuf,
    pub squid_bin: PathBuf,
    pub mitmdump_bin: PathBuf,
    /// Keep the work directory (configs, logs) instead of removing it.
    pub keep_work: bool,
    /// Record a `perf` profile (DWARF call graphs) of each system under test during each
    /// measured run, into this directory as `<system>-<scenario>.perf`.
    pub perf_dir: Option<PathBuf>,
    pub commands: Vec<String>,
}

pub async fn run(options: &CompareOptions) -> anyhow::Result<Results> {
    let started_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .context("formatting the date")?;
    let work_dir = tempfile::Builder::new()
        .prefix("cordon-bench.")
        .tempdir()
        .context("work dir")?;
    let work = work_dir.path().to_path_buf();
    if options.keep_work {
        eprintln!("cordon-bench: work directory {} (kept)", work.display());
    }
    // Squid runs as the `proxy` user and must reach its config and certificates here.
    std::fs::set_permissions(&work, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .context("chmod work dir")?;
    let pki = pki::create(&work)?;
    let (upstream, upstream_port) = start_upstream(
        &options.peers,
        &options.nginx_bin,
        options.settings.load_cpus.as_deref(),
        &work,
        &pki,
    )
    .await?;
    // Scenarios 9 and 10's upstreams live in this process (on the load CPUs, like nginx).
    let wants = |s| options.scenarios.contains(&s);
    let llm = match wants(Scenario::LlmStream) {
        true => Some(stream::start(&pki).await?),
        false => None,
    };
    let (forge, repo) = match wants(Scenario::GitClone) {
        true => {
            let repo = git::repository(&cache_dir())?;
            (Some(git::start(&pki, repo.clone()).await?), Some(repo))
        }
        false => (None, None),
    };
    let env = Env {
        llm_port: llm.as_ref().map(|u| u.port),
        git_port: forge.as_ref().map(|u| u.port),
        work: work.clone(),
        peers: options.peers.clone(),
        repo: options.repo.clone(),
        pki,
        upstream_port,
        unique_hosts: options.settings.unique_hosts,
        proxy_cpus: options.settings.proxy_cpus.clone(),
        cordon_bin: options.cordon_bin.clone(),
        squid_bin: options.squid_bin.clone(),
        mitmdump_bin: options.mitmdump_bin.clone(),
    };
    write_hosts(&work, options.settings.unique_hosts)?;
    let ticks = process::ticks_per_second();
    let mut results: Vec<ScenarioResult> = options
        .scenarios
        .iter()
        .map(|s| ScenarioResult {
            number: s.number(),
            key: s.key().into(),
            title: s.title(&options.settings),
            unit: s.unit().into(),
            higher_is_better: s.higher_is_better(),
            rows: Vec::new(),
        })
        .collect();
    for &system in &options.systems {
        for variant in [Variant::Bench, Variant::AgentEgress] {
            let scenarios: Vec<(usize, Scenario)> = options
                .scenarios
                .iter()
                .copied()
                .enumerate()
                .filter(|(_, s)| system.variant(*s) == variant)
                .collect();
            if scenarios.is_empty() {
                continue;
            }
            let mut running: Option<Running> = None;
            for (index, scenario) in scenarios {
                let row = if let Some(why) = system.skips(scenario) {
                    skipped(system, why)
                } else {
                    if running.is_none() {
                        eprintln!(
                            "cordon-bench: starting {} ({variant:?} policy)",
                            system.name()
                        );
                        running = Some(systems::start(system, variant, &env).await?);
                    }
                    let Some(r) = running.as_ref() else { continue };
                    eprintln!(
                        "cordon-bench: scenario {} on {}",
                        scenario.number(),
                        system.name()
                    );
                    let profile = match (&options.perf_dir, r.process.as_ref()) {
                        (Some(dir), Some(p)) => Some(profile::start(
                            p.pid(),
                            &dir.join(format!("{}-{}.perf", system.name(), scenario.key())),
                            options.settings.duration_s,
                        )?),
                        _ => None,
                    };
                    let row = match scenario {
                        Scenario::LlmStream => {
                            measure_stream(system, r, &env, &options.settings, ticks).await
                        }
                        Scenario::GitClone => {
                            measure_clone(
                                system,
                                r,
                                &env,
                                repo.as_deref(),
                                &options.settings,
                                ticks,
                            )
                            .await
                        }
                        _ => {
                            measure(
                                system,
                                scenario,
                                r,
                                &upstream,
                                &options.settings,
                                options.idle_timeout,
                                upstream_port,
                                ticks,
                            )
                            .await
                        }
                    };
                    if let Some(profile) = profile {
                        profile.finish()?;
                    }
                    row.unwrap_or_else(|e| skipped(system, &format!("failed: {e:#}")))
                };
                results[index].rows.push(row);
            }
        }
    }
    drop((upstream, llm, forge));
    let machine = machine::describe(
        &options.repo,
        &[
            ("nginx", &options.nginx_bin, &["-v"]),
            ("squid", &options.squid_bin, &["-v"]),
            ("mitmdump", &options.mitmdump_bin, &["--version"]),
            ("openssl", Path::new("openssl"), &["version"]),
            ("git", Path::new("git"), &["--version"]),
        ],
    );
    if options.keep_work {
        let _ = work_dir.keep();
    }
    Ok(Results {
        started_at,
        machine,
        settings: options.settings.clone(),
        commands: options.commands.clone(),
        scenarios: results,
    })
}

fn skipped(system: System, why: &str) -> Row {
    Row {
        note: Some(why.into()),
        ..empty_row(system)
    }
}

/// A row with no figures yet.
fn empty_row(system: System) -> Row {
    Row {
        system: system.name().into(),
        figure: None,
        proxy_cpu_s: None,
        per_proxy_cpu_s: None,
        load: None,
        idle: None,
        note: None,
    }
}

#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename these
async fn measure(
    system: System,
    scenario: Scenario,
    running: &Running,
    upstream: &Process,
    settings: &Settings,
    idle_timeout: Duration,
    upstream_port: u16,
    ticks: f64,
) -> anyhow::Result<Row> {
    let tls = Tls {
        http1: client_tls(&running.roots, Protocol::Http1)?,
        http2: client_tls(&running.roots, Protocol::Http2)?,
    };
    // Warm up: the leaf for bench.test is minted and the upstream pool filled before any
    // measured run, so scenario 2 measures a warm certificate cache.
    let mut warm = Scenario::KeepAlive.load(running.route, upstream_port, settings, &tls);
    warm.requests = Some(200);
    warm.reuse = ConnectionReuse::PerRequest;
    load::run(&warm).await.context("warm-up")?;
    let config = {
        let mut c = scenario.load(running.route, upstream_port, settings, &tls);
        if scenario == Scenario::Idle {
            c.duration = idle_timeout;
        }
        c
    };
    // The direct row's "system" is the upstream itself: its memory is what the idle scenario
    // reports, but its CPU time is not a proxy's and is not reported.
    let measured = running.process.as_ref();
    let cpu_before = measured.map(|p| p.cpu_seconds(ticks));
    let mut row = empty_row(system);
    if scenario == Scenario::Idle {
        let memory_of = measured.unwrap_or(upstream);
        let rss_before = memory_of.rss_bytes();
        let held = load::hold(&config, settings.idle_connections).await?;
        // Let the systems settle (buffers released after the one request) before measuring.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss_after = memory_of.rss_bytes();
        let per =
            (rss_after.saturating_sub(rss_before)) as f64 / held.count().max(1) as f64 / 1024.0;
        row.figure = (held.count() > 0).then_some(per);
        if held.count() < settings.idle_connections {
            row.note = Some(format!(
                "held {} of {} within {} s",
                held.count(),
                settings.idle_connections,
                idle_timeout.as_secs()
            ));
        }
        row.idle = Some(IdleResult {
            held: held.count(),
            failed: held.failed,
            error_samples: held.error_samples.clone(),
            open_seconds: held.elapsed.as_secs_f64(),
            rss_before_bytes: rss_before,
            rss_after_bytes: rss_after,
        });
        drop(held);
    } else {
        let report = load::run(&config).await?;
        row.figure = (report.ok > 0).then(|| scenario.figure(&report));
        if report.errors > 0 {
            row.note = Some(format!(
                "{} errors: {}",
                report.errors,
                report.error_samples.join("; ")
            ));
        }
        if scenario == Scenario::LargeDownload
            && report.ok > 0
            && report.body_bytes != report.ok * LARGE_BYTES
        {
            row.note = Some("body sizes differ from 10 MiB".into());
        }
        if let (Some(before), Some(p)) = (cpu_before, measured) {
            let used = p.cpu_seconds(ticks) - before;
            row.proxy_cpu_s = Some(used);
            row.per_proxy_cpu_s = (used > 0.0).then(|| scenario.work(&report) / used);
        }
        row.load = Some(report);
    }
    Ok(row)
}

/// Starts nginx (bench/peers/nginx.conf) on a free port with the run's upstream certificate,
/// under `taskset -c cpus` when set; its process and port.
pub(crate) async fn start_upstream(
    peers: &Path,
    nginx_bin: &Path,
    cpus: Option<&str>,
    work: &Path,
    pki: &pki::Pki,
) -> anyhow::Result<(Process, u16)> {
    let port = process::free_port()?;
    let body = vec![0x5au8; usize::try_from(LARGE_BYTES).context("size")?];
    std::fs::write(work.join("10m.bin"), body).context("writing the 10 MiB body")?;
    let config = template::render(
        &peers.join("nginx.conf"),
        &[
            ("PORT", port.to_string()),
            ("WORK", work.display().to_string()),
            ("CERT", pki.upstream_cert.display().to_string()),
            ("KEY", pki.upstream_key.display().to_string()),
        ],
    )?;
    let path = work.join("nginx.conf");
    std::fs::write(&path, config).context("writing nginx.conf")?;
    let mut nginx = Process::spawn(
        "nginx",
        cpus,
        nginx_bin,
        &[
            "-c".into(),
            path.display().to_string(),
            "-e".into(),
            work.join("nginx-error.log").display().to_string(),
        ],
        &[],
        work,
    )?;
    nginx
        .wait_listening(std::net::SocketAddr::from(([127, 0, 0, 1], port)), work)
        .await?;
    Ok((nginx, port))
}

/// Squid's hosts_file: every bench name on loopback.
fn write_hosts(work: &Path, unique_hosts: u64) -> anyhow::Result<()> {
    let mut hosts = format!(
        "127.0.0.1 {} {} {} {} {}\n",
        scenarios::BENCH_HOST,
        scenarios::API_HOST,
        scenarios::BODY_HOST,
        scenarios::LLM_HOST,
        scenarios::GIT_HOST
    );
    for n in 0..unique_hosts {
        hosts.push_str(&format!("127.0.0.1 h{n}.bench.test\n"));
    }
    std::fs::write(work.join("hosts"), hosts).context("writing the hosts file")
}

/// Where generated fixtures are kept between runs: `~/.cache/cordon`.
fn cache_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache/cordon")
}

/// The CPU seconds `running`'s process used while `work` ran, and `work`'s output.
async fn with_cpu<T>(
    running: &Running,
    ticks: f64,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<(T, Option<f64>)> {
    let process = running.process.as_ref();
    let before = process.map(|p| p.cpu_seconds(ticks));
    let out = work.await?;
    let used = before.zip(process).map(|(b, p)| p.cpu_seconds(ticks) - b);
    Ok((out, used))
}

/// Scenario 9 (`stream.rs`): the figure is the p99 event delay, the latency columns the time
/// to first event.
async fn measure_stream(
    system: System,
    running: &Running,
    env: &Env,
    settings: &Settings,
    ticks: f64,
) -> anyhow::Result<Row> {
    let port = env
        .llm_port
        .context("the model API upstream is not running")?;
    let tls = client_tls(&running.roots, Protocol::Http1)?;
    // Direct means the model API itself, not nginx.
    let route = match (system, running.route) {
        (System::Direct, Route::Direct(a)) => Route::Direct(SocketAddr::new(a.ip(), port)),
        (_, route) => route,
    };
    let (report, cpu) = with_cpu(
        running,
        ticks,
        stream::run(route, port, &tls, settings.connections),
    )
    .await?;
    let mut row = empty_row(system);
    let delay = &report.event_delay_us;
    row.figure = Some(delay.value_at_quantile(0.99) as f64);
    row.proxy_cpu_s = cpu;
    row.note = Some(format!(
        "{} events, delay p50 {} us, p99 {} us, max {} us; time to first event over {} answers{}",
        report.events,
        delay.value_at_quantile(0.5),
        delay.value_at_quantile(0.99),
        delay.max(),
        report.first_event_us.len(),
        match report.errors.first() {
            Some(e) => format!("; {} errors: {e}", report.errors.len()),
            None => String::new(),
        }
    ));
    row.load = Some(report.load());
    Ok(row)
}

/// Scenario 10 (`git.rs`): clones back to back for the run's duration (at least two); the
/// figure is the pack's MiB over the median clone time.
async fn measure_clone(
    system: System,
    running: &Running,
    env: &Env,
    repo: Option<&Path>,
    settings: &Settings,
    ticks: f64,
) -> anyhow::Result<Row> {
    let port = env.git_port.context("the git forge is not running")?;
    let repo = repo.context("no repository")?;
    let scratch = tempfile::Builder::new()
        .prefix("cordon-bench-clone.")
        .tempdir()
        .context("clone directory")?;
    let password = running.git_password.as_deref().unwrap_or(git::GIT_TOKEN);
    let via = git::CloneRoute {
        route: running.route,
        port,
        roots: &running.roots,
        password,
    };
    // One clone first, unmeasured: the forge's pack files and git's own files are then in the
    // page cache for every system alike.
    git::clone_once(&via, scratch.path()).await?;
    let budget = Duration::from_secs_f64(settings.duration_s);
    let (times, cpu) = with_cpu(running, ticks, async {
        let started = std::time::Instant::now();
        let mut times = Vec::new();
        while times.len() < 2 || started.elapsed() < budget {
            times.push(git::clone_once(&via, scratch.path()).await?);
        }
        anyhow::Ok(times)
    })
    .await?;
    let mib = git::pack_mib(repo);
    let mut sorted: Vec<f64> = times.iter().map(Duration::as_secs_f64).collect();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let total: f64 = sorted.iter().sum();
    let mut row = empty_row(system);
    row.figure = Some(mib / median);
    row.proxy_cpu_s = cpu;
    row.per_proxy_cpu_s = cpu
        .filter(|c| *c > 0.0)
        .map(|c| mib * times.len() as f64 / c);
    row.note = Some(format!(
        "{} clones of {mib:.1} MiB, median {median:.2} s (fastest {:.2} s, slowest {:.2} s)",
        times.len(),
        sorted[0],
        sorted[sorted.len() - 1],
    ));
    let micros = |s: f64| (s * 1e6) as u64;
    row.load = Some(crate::load::LoadReport {
        ok: times.len() as u64,
        errors: 0,
        error_samples: Vec::new(),
        statuses: Default::default(),
        connections: 0,
        body_bytes: (mib * 1024.0 * 1024.0) as u64 * times.len() as u64,
        elapsed_s: total,
        requests_per_s: times.len() as f64 / total,
        connections_per_s: 0.0,
        body_bytes_per_s: mib * 1024.0 * 1024.0 * times.len() as f64 / total,
        latency: crate::load::LatencySummary {
            p50_us: micros(median),
            p90_us: micros(sorted[(sorted.len() * 9 / 10).min(sorted.len() - 1)]),
            p99_us: micros(sorted[sorted.len() - 1]),
            max_us: micros(sorted[sorted.len() - 1]),
            mean_us: total / sorted.len() as f64 * 1e6,
        },
    });
    Ok(row)
}

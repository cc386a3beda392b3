//! The soak run (issue 19): Cordon started as `compare` starts it, on the agent-egress policy
//! with a credential store, behind the same fake upstream; a few hundred sessions registered
//! on their own loopback addresses, some coming and going; mixed traffic from those addresses
//! at a target rate for minutes; the proxy's descriptors, memory, connections and sessions
//! sampled throughout, and judged for leaks by the rules in [`verdict`].

mod sample;
mod traffic;
mod verdict;

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::admin::AdminClient;
use crate::compare::results::Machine;
use crate::compare::scenarios::API_HOST;
use crate::compare::systems::{self, Env, System, Variant};
use crate::compare::{machine, pki, start_upstream};
use crate::load::{ConnectionReuse, LoadConfig, Protocol, client_tls};
pub use sample::{Phase, Sample};
pub use traffic::{Kind, KindReport};
pub use verdict::Check;

/// The secret whose placeholder the `placeholder` requests carry (bench/peers/cordon).
const PLACEHOLDER_SECRET: &str = "github";

/// Everything a soak run is told.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    pub rate: f64,
    pub duration: Duration,
    pub sessions: usize,
    /// Samples taken this long after the load starts are not judged (caches, pools, arenas).
    pub warmup: Duration,
    /// How long the proxy is watched after the load stops.
    pub cooldown: Duration,
    pub sample_every: Duration,
    /// One churn event this often: alternately a session updated in place, and a session
    /// deregistered for `churn_gap` and registered again under a new id.
    pub churn_every: Duration,
    pub churn_gap: Duration,
    pub proxy_cpus: Option<String>,
    pub load_cpus: Option<String>,
    pub repo: PathBuf,
    pub cordon_bin: PathBuf,
    pub nginx_bin: PathBuf,
    pub keep_work: bool,
    pub command: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SoakSettings {
    pub target_rate: f64,
    pub duration_s: f64,
    pub sessions: usize,
    pub warmup_s: f64,
    pub cooldown_s: f64,
    pub sample_every_s: f64,
    pub churn_every_s: f64,
    pub churn_gap_s: f64,
    pub policy: String,
    pub proxy_cpus: Option<String>,
    pub load_cpus: Option<String>,
    pub cordon_bin: String,
    /// Each kind's share of the target rate.
    pub mix: Vec<(Kind, f64)>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Churn {
    pub updates: u64,
    pub reregistrations: u64,
    pub failures: u64,
    pub failure_samples: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SoakResult {
    pub started_at: String,
    pub machine: Machine,
    pub command: String,
    pub settings: SoakSettings,
    pub requests: u64,
    pub load_seconds: f64,
    pub achieved_rate: f64,
    pub unexpected_errors: u64,
    pub kinds: Vec<KindReport>,
    pub churn: Churn,
    pub sessions_before: Option<usize>,
    pub nft_tables_before: Option<usize>,
    pub nft_tables_after: Option<usize>,
    pub samples: Vec<Sample>,
    pub checks: Vec<Check>,
    pub passed: bool,
}

/// The address of soak session `index`: 127.0.1.1, 127.0.1.2, ... 127.0.1.254, 127.0.2.1, ...
pub fn source_address(index: usize) -> IpAddr {
    let (high, low) = (1 + index / 254, 1 + index % 254);
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        u8::try_from(high).unwrap_or(u8::MAX),
        u8::try_from(low).unwrap_or(u8::MAX),
    ))
}

pub async fn run(options: &SoakOptions) -> anyhow::Result<SoakResult> {
    anyhow::ensure!(
        options.sessions > 0 && options.sessions <= 254 * 254,
        "sessions must be 1 to {}",
        254 * 254
    );
    anyhow::ensure!(
        options.rate > 0.0 && options.rate.is_finite(),
        "the rate must be positive"
    );
    let started_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .context("formatting the date")?;
    let work_dir = tempfile::Builder::new()
        .prefix("cordon-soak.")
        .tempdir()
        .context("work dir")?;
    let work = work_dir.path().to_path_buf();
    let peers = options.repo.join("bench/peers");
    let pki = pki::create(&work)?;
    let (upstream, upstream_port) = start_upstream(
        &peers,
        &options.nginx_bin,
        options.load_cpus.as_deref(),
        &work,
        &pki,
    )
    .await?;
    let env = Env {
        work: work.clone(),
        peers,
        repo: options.repo.clone(),
        pki,
        upstream_port,
        llm_port: None,
        git_port: None,
        unique_hosts: 0,
        proxy_cpus: options.proxy_cpus.clone(),
        cordon_bin: options.cordon_bin.clone(),
        squid_bin: PathBuf::new(),
        mitmdump_bin: PathBuf::new(),
    };
    eprintln!(
        "cordon-soak: starting cordon (agent-egress policy) in {}",
        work.display()
    );
    let running = systems::start(System::Cordon, Variant::AgentEgress, &env).await?;
    let process = running.process.as_ref().context("cordon has no process")?;
    let pid = process.pid();
    let admin = running.admin.context("cordon has no admin API")?;
    let sessions_before = admin.session_count().await.ok();
    let nft_before = sample::nft_tables();

    eprintln!("cordon-soak: registering {} sessions", options.sessions);
    let mut sources = Vec::with_capacity(options.sessions);
    for index in 0..options.sessions {
        let address = source_address(index);
        let session = format!("sesn_soak_{index}_0");
        let placeholder = register(&admin, &session, address).await?;
        sources.push(Arc::new(traffic::Source {
            address,
            session: RwLock::new(session),
            registered: AtomicBool::new(true),
            generation: AtomicU64::new(0),
            placeholder: RwLock::new(placeholder),
        }));
    }
    let base = LoadConfig {
        route: running.route,
        source: None,
        host: API_HOST.into(),
        port: upstream_port,
        path: "/".into(),
        method: http::Method::GET,
        body: bytes::Bytes::new(),
        headers: Vec::new(),
        protocol: Protocol::Http1,
        reuse: ConnectionReuse::KeepAlive,
        connections: 1,
        streams: 1,
        duration: options.duration,
        requests: None,
        tls: client_tls(&running.roots, Protocol::Http1)?,
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut samples = vec![sample::take(pid, running.metrics, &admin, 0.0, Phase::Idle, 0).await];

    eprintln!(
        "cordon-soak: {} req/s for {} s",
        options.rate,
        options.duration.as_secs()
    );
    let load_started = Instant::now();
    let traffic = Arc::new(traffic::Traffic {
        base,
        sources,
        counters: traffic::Counters::new()?,
        deadline: load_started + options.duration,
    });
    let load = tokio::spawn(traffic::run(traffic.clone(), options.rate));
    let churner = tokio::spawn(churn(admin, traffic.clone(), options.clone()));
    let mut next = load_started + options.sample_every;
    while next <= traffic.deadline {
        tokio::time::sleep_until(next.into()).await;
        let t = load_started.elapsed().as_secs_f64();
        let phase = match t < options.warmup.as_secs_f64() {
            true => Phase::Warmup,
            false => Phase::Load,
        };
        let done = traffic.counters.done.load(Ordering::Relaxed);
        let sample = with_rate(
            sample::take(pid, running.metrics, &admin, t, phase, done).await,
            samples.last(),
        );
        eprintln!("cordon-soak: {}", progress(&sample));
        samples.push(sample);
        next += options.sample_every;
    }
    load.await.context("the load panicked")??;
    let load_seconds = load_started.elapsed().as_secs_f64();
    let churn = churner.await.context("the churn panicked")?;
    let requests = traffic.counters.done.load(Ordering::Relaxed);

    // Cool-down: the clients have closed every connection; watch the proxy let go.
    let cooldown_started = Instant::now();
    while cooldown_started.elapsed() < options.cooldown {
        tokio::time::sleep(options.sample_every.min(options.cooldown)).await;
        let t = load_started.elapsed().as_secs_f64();
        let sample = sample::take(pid, running.metrics, &admin, t, Phase::Cooldown, requests).await;
        eprintln!("cordon-soak: {}", progress(&sample));
        samples.push(sample);
    }
    for source in &traffic.sources {
        let session = source.session.read().map(|s| s.clone()).unwrap_or_default();
        admin.deregister(&session).await?;
    }
    let t = load_started.elapsed().as_secs_f64();
    samples.push(
        sample::take(
            pid,
            running.metrics,
            &admin,
            t,
            Phase::Deregistered,
            requests,
        )
        .await,
    );
    let nft_after = sample::nft_tables();

    let unexpected_errors = traffic.counters.unexpected.load(Ordering::Relaxed);
    let checks = verdict::judge(
        &samples,
        verdict::Outcome {
            requests,
            unexpected_errors,
            sessions_before,
            nft_before,
            nft_after,
        },
    );
    drop(running);
    drop(upstream);
    if options.keep_work {
        let _ = work_dir.keep();
    }
    let machine = machine::describe(&options.repo, &[("nginx", &options.nginx_bin, &["-v"])]);
    Ok(SoakResult {
        started_at,
        machine,
        command: options.command.clone(),
        settings: SoakSettings {
            target_rate: options.rate,
            duration_s: options.duration.as_secs_f64(),
            sessions: options.sessions,
            warmup_s: options.warmup.as_secs_f64(),
            cooldown_s: options.cooldown.as_secs_f64(),
            sample_every_s: options.sample_every.as_secs_f64(),
            churn_every_s: options.churn_every.as_secs_f64(),
            churn_gap_s: options.churn_gap.as_secs_f64(),
            policy: "examples/policies/agent-egress".into(),
            proxy_cpus: options.proxy_cpus.clone(),
            load_cpus: options.load_cpus.clone(),
            cordon_bin: options.cordon_bin.display().to_string(),
            mix: Kind::ALL.iter().map(|k| (*k, k.share())).collect(),
        },
        requests,
        load_seconds,
        achieved_rate: requests as f64 / load_seconds,
        unexpected_errors,
        kinds: traffic.counters.report(),
        churn,
        sessions_before,
        nft_tables_before: nft_before,
        nft_tables_after: nft_after,
        passed: checks.iter().all(|c| c.pass),
        samples,
        checks,
    })
}

/// Registers `session` on `address`; its placeholder for the `github` secret.
async fn register(admin: &AdminClient, session: &str, address: IpAddr) -> anyhow::Result<String> {
    admin
        .register(session, &address.to_string(), "soak")
        .await?;
    admin
        .placeholders(session, &[PLACEHOLDER_SECRET])
        .await?
        .remove(PLACEHOLDER_SECRET)
        .context("no placeholder minted")
}

/// Sessions coming and going until the load's deadline, as sandboxes do in production; every
/// session is registered again when it returns.
async fn churn(admin: AdminClient, traffic: Arc<traffic::Traffic>, options: SoakOptions) -> Churn {
    let mut churn = Churn::default();
    let count = traffic.sources.len();
    let mut event = 0usize;
    let mut ticker = tokio::time::interval(options.churn_every);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        if Instant::now() + options.churn_gap >= traffic.deadline {
            break;
        }
        // A stride coprime with most counts walks every session in turn.
        let index = (event * 37 + 11) % count;
        let Some(source) = traffic.sources.get(index) else {
            break;
        };
        let old = source.session.read().map(|s| s.clone()).unwrap_or_default();
        let result = if event.is_multiple_of(2) {
            churn.updates += 1;
            admin
                .register(&old, &source.address.to_string(), "soak-updated")
                .await
        } else {
            churn.reregistrations += 1;
            replace(
                &admin,
                source,
                &old,
                &format!("sesn_soak_{index}_{event}"),
                options.churn_gap,
            )
            .await
        };
        if let Err(e) = result {
            churn.failures += 1;
            if churn.failure_samples.len() < 5 {
                churn.failure_samples.push(format!("{e:#}"));
            }
        }
        event += 1;
    }
    churn
}

/// Deregisters `old`, waits `gap` (requests from the address are refused meanwhile), and
/// registers `new` on the same address with a fresh placeholder.
async fn replace(
    admin: &AdminClient,
    source: &traffic::Source,
    old: &str,
    new: &str,
    gap: Duration,
) -> anyhow::Result<()> {
    source.registered.store(false, Ordering::Release);
    source.generation.fetch_add(1, Ordering::AcqRel);
    admin.deregister(old).await?;
    tokio::time::sleep(gap).await;
    let placeholder = register(admin, new, source.address).await?;
    if let Ok(mut p) = source.placeholder.write() {
        *p = placeholder;
    }
    if let Ok(mut s) = source.session.write() {
        *s = new.to_owned();
    }
    source.generation.fetch_add(1, Ordering::AcqRel);
    source.registered.store(true, Ordering::Release);
    Ok(())
}

fn with_rate(mut sample: Sample, previous: Option<&Sample>) -> Sample {
    if let Some(p) = previous.filter(|p| p.phase != Phase::Idle && sample.t_s > p.t_s) {
        sample.requests_per_s = Some((sample.requests - p.requests) as f64 / (sample.t_s - p.t_s));
    } else if sample.t_s > 0.0 {
        sample.requests_per_s = Some(sample.requests as f64 / sample.t_s);
    }
    sample
}

fn progress(s: &Sample) -> String {
    format!(
        "t={:.0}s {:?}: {} fds, {:.1} MiB RSS, {} active, {} sessions, {} req/s",
        s.t_s,
        s.phase,
        show(s.fds),
        s.rss_bytes.map_or(0.0, |b| b as f64 / 1048576.0),
        show(s.active_connections),
        show(s.sessions),
        s.requests_per_s.map_or("-".into(), |r| format!("{r:.0}")),
    )
}

fn show<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// Writes the result as `<out>/soak-<date>.json`; its path.
pub fn write_json(result: &SoakResult, out: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let date = result.started_at.get(..10).unwrap_or("undated");
    let path = out.join(format!("soak-{date}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(result)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The docs/BENCHMARKS.md section (markers included).
pub fn markdown(r: &SoakResult) -> String {
    let s = &r.settings;
    let mut md = format!("{}\n## Soak\n\n", crate::doc::begin("soak"));
    let _ = writeln!(
        md,
        "{} sessions, each on its own loopback address, registered through the admin API; one \
         session updated in place or deregistered for {:.0} s and registered again under a new id \
         every {:.0} s ({} updates, {} re-registrations, {} failed). Mixed traffic from those \
         addresses through the explicit listener for {:.0} s on the agent-egress policy with a \
         credential store; target {:.0} req/s, achieved **{:.0} req/s** ({} requests). Proxy \
         pinned to CPU {}, load generator and upstream to CPU {}. Samples every {:.0} s; the \
         first {:.0} s are warm-up and not judged. Run {}.\n",
        s.sessions,
        s.churn_gap_s,
        s.churn_every_s,
        r.churn.updates,
        r.churn.reregistrations,
        r.churn.failures,
        s.duration_s,
        s.target_rate,
        r.achieved_rate,
        r.requests,
        s.proxy_cpus.as_deref().unwrap_or("any"),
        s.load_cpus.as_deref().unwrap_or("any"),
        s.sample_every_s,
        s.warmup_s,
        r.started_at.get(..10).unwrap_or("undated"),
    );
    if r.achieved_rate < 0.95 * s.target_rate {
        let _ = writeln!(
            md,
            "The target rate was not reached: the machine (proxy, generator and upstream on \
             its CPUs) topped out at {:.0} req/s.\n",
            r.achieved_rate
        );
    }
    let _ = writeln!(md, "```sh\n{}\n```\n", r.command);
    md.push_str("| check | rule | observed | verdict |\n|---|---|---|---|\n");
    for c in &r.checks {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            c.name,
            c.rule,
            c.observed,
            if c.pass { "PASS" } else { "FAIL" }
        );
    }
    md.push_str(
        "\n| kind | share | sent | as expected | failures by class | p50 | p99 |\n|---|---|---|---|---|---|---|\n",
    );
    for k in &r.kinds {
        let share = s
            .mix
            .iter()
            .find(|(kind, _)| *kind == k.kind)
            .map_or(0.0, |m| m.1);
        let errors = if k.errors.is_empty() {
            "none".to_owned()
        } else {
            k.errors
                .iter()
                .map(|(class, n)| format!("{class} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            md,
            "| {} | {:.0}% | {} | {} | {errors} | {} us | {} us |",
            k.kind.name(),
            share * 100.0,
            k.sent,
            k.ok,
            k.latency.p50_us,
            k.latency.p99_us
        );
    }
    md.push_str(
        "\n`denied` expects the policy's 403; `churn` failures are requests from an address whose \
         session was away or replaced while they ran (refused, as they must be). A replaced \
         session's connections are closed, as a stopped sandbox's are: the proxy keeps the session \
         a connection was accepted under (docs/PROXY.md), so an old connection would send the new \
         session's placeholder and be refused as `exfiltration`.\n\n\
         | t (s) | phase | open fds | RSS (MiB) | threads | active connections | sessions | req/s |\n|---|---|---|---|---|---|---|---|\n",
    );
    let every = (60.0 / s.sample_every_s).round().max(1.0) as usize;
    for (i, x) in r.samples.iter().enumerate() {
        let keep = (x.phase != Phase::Load && x.phase != Phase::Warmup)
            || i % every == 0
            || r.samples.get(i + 1).is_none_or(|n| n.phase != x.phase);
        if keep {
            let _ = writeln!(
                md,
                "| {:.0} | {:?} | {} | {} | {} | {} | {} | {} |",
                x.t_s,
                x.phase,
                show(x.fds),
                x.rss_bytes
                    .map_or("-".into(), |b| format!("{:.1}", b as f64 / 1048576.0)),
                show(x.threads),
                show(x.active_connections),
                show(x.sessions),
                x.requests_per_s.map_or("-".into(), |v| format!("{v:.0}")),
            );
        }
    }
    let _ = writeln!(
        md,
        "\nnftables tables: {} before, {} after. Every sample (one per {:.0} s) is in \
         bench/results/soak-{}.json.\n{}",
        show(r.nft_tables_before),
        show(r.nft_tables_after),
        s.sample_every_s,
        r.started_at.get(..10).unwrap_or("undated"),
        crate::doc::end("soak")
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_distinct_loopback_addresses() {
        assert_eq!(source_address(0).to_string(), "127.0.1.1");
        assert_eq!(source_address(199).to_string(), "127.0.1.200");
        assert_eq!(source_address(254).to_string(), "127.0.2.1");
        let all: std::collections::HashSet<_> = (0..600).map(source_address).collect();
        assert_eq!(all.len(), 600);
        assert!(all.iter().all(IpAddr::is_loopback));
    }
}

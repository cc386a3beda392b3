//! `cordon-bench compare`: the side-by-side run, written to bench/results/<date>.json.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use cordon_bench::compare::results::Settings;
use cordon_bench::compare::scenarios::{self, Scenario};
use cordon_bench::compare::systems::{self, System};
use cordon_bench::compare::{CompareOptions, run};

#[derive(Debug, Args)]
pub(crate) struct CompareArgs {
    /// Seconds per measured run.
    #[arg(long, default_value_t = 6.0)]
    duration: f64,
    /// Connections for scenarios 1, 2, 3 and 5.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// New host names (certificates to mint) in scenario 3.
    #[arg(long, default_value_t = 4000)]
    unique_hosts: u64,
    /// Idle connections held in scenario 7.
    #[arg(long, default_value_t = 10_000)]
    idle_connections: usize,
    /// Seconds each system may take to open the idle connections.
    #[arg(long, default_value_t = 40)]
    idle_timeout: u64,
    #[arg(long, default_value_t = 2)]
    h2_connections: usize,
    #[arg(long, default_value_t = 32)]
    h2_streams: usize,
    /// Systems, comma-separated: direct,cordon,cordon-transparent,squid,mitmproxy.
    #[arg(
        long,
        default_value = "direct,cordon,cordon-transparent,squid,mitmproxy"
    )]
    systems: String,
    /// Scenario numbers, comma-separated (1-7).
    #[arg(long, default_value = "1,2,3,4,5,6,7")]
    scenarios: String,
    /// CPUs the systems under test run on (`taskset -c`); "" to leave them unpinned.
    #[arg(long, default_value = "1")]
    proxy_cpus: String,
    /// CPUs the fake upstream runs on, recorded with the load generator's (run cordon-bench
    /// itself under `taskset -c` with the same list, as `make bench` does).
    #[arg(long, default_value = "0")]
    load_cpus: String,
    #[arg(long)]
    cordon_bin: PathBuf,
    #[arg(long, default_value = "/usr/sbin/nginx")]
    nginx_bin: PathBuf,
    #[arg(long, default_value = "/usr/sbin/squid")]
    squid_bin: PathBuf,
    #[arg(long)]
    mitmdump_bin: PathBuf,
    /// The repository root (policies, bench/peers).
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// Where the JSON result goes: a file named by the date in this directory.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Keep the work directory (generated configs and logs of every system).
    #[arg(long)]
    keep_work: bool,
    /// Profile each proxy with `perf record` during each run, into this directory.
    #[arg(long)]
    perf_dir: Option<PathBuf>,
}

impl CompareArgs {
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        let options = self.options()?;
        let results = run(&options).await?;
        std::fs::create_dir_all(&self.out)
            .with_context(|| format!("creating {}", self.out.display()))?;
        let date = results.started_at.get(..10).unwrap_or("undated");
        let path = self.out.join(format!("{date}.json"));
        std::fs::write(&path, serde_json::to_string_pretty(&results)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
        Ok(())
    }

    fn options(&self) -> anyhow::Result<CompareOptions> {
        if !(self.duration > 0.0 && self.duration.is_finite()) {
            bail!("--duration must be a positive number of seconds");
        }
        let systems = self
            .systems
            .split(',')
            .map(|name| {
                System::from_name(name.trim()).with_context(|| {
                    format!(
                        "unknown system {name:?}; known: {}",
                        systems::ALL.map(System::name).join(", ")
                    )
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let scenarios = self
            .scenarios
            .split(',')
            .map(|n| {
                n.trim()
                    .parse::<u8>()
                    .ok()
                    .and_then(Scenario::from_number)
                    .with_context(|| {
                        format!(
                            "unknown scenario {n:?}; scenarios are 1 to {}",
                            scenarios::ALL.len()
                        )
                    })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        // Configs are written elsewhere and resolve relative paths against themselves.
        let repo = std::fs::canonicalize(&self.repo)
            .with_context(|| format!("repository {}", self.repo.display()))?;
        let cpus = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let mut commands = vec![std::env::args().collect::<Vec<_>>().join(" ")];
        if let Some(cpus) = cpus(&self.load_cpus) {
            commands[0] = format!("taskset -c {cpus} {}", commands[0]);
        }
        Ok(CompareOptions {
            systems,
            scenarios,
            settings: Settings {
                duration_s: self.duration,
                connections: self.connections,
                unique_hosts: self.unique_hosts,
                idle_connections: self.idle_connections,
                h2_connections: self.h2_connections,
                h2_streams: self.h2_streams,
                proxy_cpus: cpus(&self.proxy_cpus),
                load_cpus: cpus(&self.load_cpus),
            },
            idle_timeout: Duration::from_secs(self.idle_timeout),
            peers: repo.join("bench/peers"),
            repo,
            cordon_bin: self.cordon_bin.clone(),
            nginx_bin: self.nginx_bin.clone(),
            squid_bin: self.squid_bin.clone(),
            mitmdump_bin: self.mitmdump_bin.clone(),
            keep_work: self.keep_work,
            perf_dir: self.perf_dir.clone(),
            commands,
        })
    }
}

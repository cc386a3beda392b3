//! `cordon-bench soak`: the leak soak, written to bench/results/soak-<date>.json and
//! optionally to docs/BENCHMARKS.md's "Soak" section.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use cordon_bench::soak::{SoakOptions, markdown, run, write_json};

#[derive(Debug, Args)]
pub(crate) struct SoakArgs {
    /// Requests per second, all kinds together (what the machine cannot reach is reported).
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    /// Seconds of load.
    #[arg(long, default_value_t = 600)]
    duration: u64,
    /// Sessions, each on its own loopback address from 127.0.1.1.
    #[arg(long, default_value_t = 200)]
    sessions: usize,
    /// Seconds at the start of the load that are not judged.
    #[arg(long, default_value_t = 60)]
    warmup: u64,
    /// Seconds the proxy is watched after the load stops.
    #[arg(long, default_value_t = 30)]
    cooldown: u64,
    #[arg(long, default_value_t = 10)]
    sample_every: u64,
    /// Seconds between churn events (a session updated, or replaced after a gap).
    #[arg(long, default_value_t = 2.0)]
    churn_every: f64,
    /// Seconds a replaced session's address has no session.
    #[arg(long, default_value_t = 1.0)]
    churn_gap: f64,
    /// CPUs the proxy runs on (`taskset -c`); "" to leave it unpinned.
    #[arg(long, default_value = "1")]
    proxy_cpus: String,
    /// CPUs the fake upstream runs on, recorded with the load generator's (run cordon-bench
    /// itself under `taskset -c` with the same list, as `make bench-soak` does).
    #[arg(long, default_value = "0")]
    load_cpus: String,
    /// The proxy binary; default: cordon-proxy next to this binary.
    #[arg(long)]
    cordon_bin: Option<PathBuf>,
    #[arg(long, default_value = "/usr/sbin/nginx")]
    nginx_bin: PathBuf,
    /// The repository root (policies, bench/peers).
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// A Markdown file (docs/BENCHMARKS.md) whose soak section is rewritten.
    #[arg(long)]
    doc: Option<PathBuf>,
    /// Keep the work directory (configs, the proxy's log and audit log).
    #[arg(long)]
    keep_work: bool,
}

impl SoakArgs {
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        let options = self.options()?;
        let result = run(&options).await?;
        let path = write_json(&result, &self.out)?;
        for check in &result.checks {
            println!(
                "{} {}: {} (rule: {})",
                if check.pass { "PASS" } else { "FAIL" },
                check.name,
                check.observed,
                check.rule
            );
        }
        println!(
            "{:.0} req/s achieved of {:.0} targeted; {} requests, {} unexpected failures",
            result.achieved_rate,
            result.settings.target_rate,
            result.requests,
            result.unexpected_errors
        );
        println!("{}", path.display());
        if let Some(doc) = &self.doc {
            cordon_bench::doc::write_section(doc, "soak", &markdown(&result))
                .map_err(anyhow::Error::msg)?;
        }
        if !result.passed {
            bail!("the soak found a leak or failed (see the FAIL lines)");
        }
        Ok(())
    }

    fn options(&self) -> anyhow::Result<SoakOptions> {
        let seconds = |s: f64, name: &str| {
            if s > 0.0 && s.is_finite() {
                Ok(Duration::from_secs_f64(s))
            } else {
                bail!("--{name} must be a positive number of seconds")
            }
        };
        let repo = std::fs::canonicalize(&self.repo)
            .with_context(|| format!("repository {}", self.repo.display()))?;
        let cordon_bin = match &self.cordon_bin {
            Some(path) => path.clone(),
            None => std::env::current_exe()
                .context("locating cordon-bench")?
                .with_file_name("cordon-proxy"),
        };
        let cpus = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let mut command = std::env::args().collect::<Vec<_>>().join(" ");
        if let Some(cpus) = cpus(&self.load_cpus) {
            command = format!("taskset -c {cpus} {command}");
        }
        Ok(SoakOptions {
            rate: self.rate,
            duration: seconds(self.duration as f64, "duration")?,
            sessions: self.sessions,
            warmup: Duration::from_secs(self.warmup),
            cooldown: seconds(self.cooldown as f64, "cooldown")?,
            sample_every: seconds(self.sample_every as f64, "sample-every")?,
            churn_every: seconds(self.churn_every, "churn-every")?,
            churn_gap: seconds(self.churn_gap, "churn-gap")?,
            proxy_cpus: cpus(&self.proxy_cpus),
            load_cpus: cpus(&self.load_cpus),
            repo,
            cordon_bin,
            nginx_bin: self.nginx_bin.clone(),
            keep_work: self.keep_work,
            command,
        })
    }
}

//! The JSON a comparison run writes (bench/results/<date>.json) and the report reads back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::load::LoadReport;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    /// UTC date and time the run started (RFC 3339).
    pub started_at: String,
    pub machine: Machine,
    pub settings: Settings,
    /// The command lines that produced these results.
    pub commands: Vec<String>,
    pub scenarios: Vec<ScenarioResult>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub os: String,
    /// Program name to its version line (nginx, squid, mitmdump, rustc, cordon commit).
    pub versions: BTreeMap<String, String>,
    /// 1-minute load average when the run started: other work on the machine shows here.
    pub load_average_at_start: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    pub duration_s: f64,
    pub connections: usize,
    pub unique_hosts: u64,
    pub idle_connections: usize,
    pub h2_connections: usize,
    pub h2_streams: usize,
    /// CPUs the systems under test were pinned to (`taskset -c`), if any.
    pub proxy_cpus: Option<String>,
    /// CPUs the load generator and the fake upstream were pinned to, if any.
    pub load_cpus: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioResult {
    pub number: u8,
    pub key: String,
    pub title: String,
    /// What the figure counts: `req/s`, `connections/s`, `MiB/s`, `KiB/connection`.
    pub unit: String,
    pub higher_is_better: bool,
    pub rows: Vec<Row>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub system: String,
    /// The scenario's figure; None when the system could not run it (see `note`).
    pub figure: Option<f64>,
    /// CPU seconds the system under test used during the measured run.
    pub proxy_cpu_s: Option<f64>,
    /// Work per CPU-second of the system under test: requests (or connections, or MiB).
    pub per_proxy_cpu_s: Option<f64>,
    pub load: Option<LoadReport>,
    pub idle: Option<IdleResult>,
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdleResult {
    pub held: usize,
    pub failed: u64,
    pub error_samples: Vec<String>,
    pub open_seconds: f64,
    pub rss_before_bytes: u64,
    pub rss_after_bytes: u64,
}

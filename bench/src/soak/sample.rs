//! What is sampled from the proxy while the soak runs: open file descriptors and resident
//! memory from /proc, the active-connections gauge from its metrics endpoint, registered
//! sessions from its admin API; and nftables tables on the host.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::admin::{AdminClient, scrape_gauge};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Sessions registered, no traffic yet: the baseline.
    Idle,
    /// Within the warm-up at the start of the load (caches and pools fill).
    Warmup,
    Load,
    /// The load has stopped and its connections are closed.
    Cooldown,
    /// Every soak session deregistered.
    Deregistered,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the load started (negative before).
    pub t_s: f64,
    pub phase: Phase,
    pub fds: Option<u64>,
    pub rss_bytes: Option<u64>,
    pub threads: Option<u64>,
    /// `cordon_proxy_active_connections`.
    pub active_connections: Option<f64>,
    pub sessions: Option<usize>,
    /// Requests the soak had completed by then, and the rate since the previous sample.
    pub requests: u64,
    pub requests_per_s: Option<f64>,
}

/// Reads one sample of process `pid`.
pub(crate) async fn take(
    pid: u32,
    metrics: Option<SocketAddr>,
    admin: &AdminClient,
    t_s: f64,
    phase: Phase,
    requests: u64,
) -> Sample {
    let active_connections = match metrics {
        Some(address) => scrape_gauge(address, "cordon_proxy_active_connections")
            .await
            .ok(),
        None => None,
    };
    Sample {
        t_s,
        phase,
        fds: open_fds(pid),
        rss_bytes: status_field(pid, "VmRSS:").map(|kib| kib * 1024),
        threads: status_field(pid, "Threads:"),
        active_connections,
        sessions: admin.session_count().await.ok(),
        requests,
        requests_per_s: None,
    }
}

fn open_fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// A numeric field of /proc/<pid>/status (`VmRSS:` is in KiB).
fn status_field(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// `nft list tables`: how many tables exist (None when nft is missing or not permitted).
pub(crate) fn nft_tables() -> Option<usize> {
    let output = std::process::Command::new("nft")
        .args(["list", "tables"])
        .output()
        .ok()?;
    output.status.success().then(|| {
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| l.starts_with("table "))
            .count()
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn reads_its_own_descriptors_memory_and_threads() {
        let me = std::process::id();
        assert!(open_fds(me).unwrap() >= 3);
        assert!(status_field(me, "VmRSS:").unwrap() > 0);
        assert!(status_field(me, "Threads:").unwrap() >= 1);
    }
}

//! The leak rules the soak is judged by, each a named check with its rule and what was seen.

use serde::{Deserialize, Serialize};

use super::sample::{Phase, Sample};

/// Descriptors the proxy may legitimately hold after the load beyond its idle baseline:
/// Pingora's upstream keep-alive pool (`upstream_keepalive_pool_size`, 128 by default) keeps
/// idle connections to the upstream for reuse, plus a few for the runtime's own (timers, logs).
pub(crate) const FD_SLACK: u64 = 128 + 16;
/// Under steady load the descriptor count may wander with connections in flight; a leak is a
/// trend. The least-squares trend over the measured load, extrapolated across it, may not
/// exceed this share of the mean count (or `FD_TREND_FLOOR` descriptors, for small counts).
pub(crate) const FD_TREND_SHARE: f64 = 0.05;
pub(crate) const FD_TREND_FLOOR: f64 = 32.0;
/// Resident memory may grow by at most this share over the second half of the measured load
/// (after the warm-up, caches and pools are full and the allocator has its arenas).
pub(crate) const RSS_LAST_HALF_SHARE: f64 = 0.05;
/// Failures that are neither the policy's expected 403s nor churn, as a share of requests.
pub(crate) const UNEXPECTED_ERROR_SHARE: f64 = 0.001;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub rule: String,
    pub observed: String,
    pub pass: bool,
}

/// Everything a verdict needs besides the samples.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outcome {
    pub requests: u64,
    pub unexpected_errors: u64,
    pub sessions_before: Option<usize>,
    pub nft_before: Option<usize>,
    pub nft_after: Option<usize>,
}

pub(crate) fn judge(samples: &[Sample], outcome: Outcome) -> Vec<Check> {
    let in_phase = |p: Phase| samples.iter().filter(move |s| s.phase == p);
    let load: Vec<&Sample> = in_phase(Phase::Load).collect();
    let baseline = in_phase(Phase::Idle).next_back();
    let cooled = in_phase(Phase::Cooldown).next_back();
    let deregistered = in_phase(Phase::Deregistered).next_back();
    let mut checks = Vec::new();

    let points: Vec<(f64, f64)> = load
        .iter()
        .filter_map(|s| Some((s.t_s, s.fds? as f64)))
        .collect();
    checks.push(match (slope(&points), points.first(), points.last()) {
        (Some(slope), Some(first), Some(last)) => {
            let mean = points.iter().map(|p| p.1).sum::<f64>() / points.len() as f64;
            let growth = slope * (last.0 - first.0);
            let allowed = (mean * FD_TREND_SHARE).max(FD_TREND_FLOOR);
            Check {
                name: "fds_steady_under_load".into(),
                rule: format!(
                    "the open-fd trend across the measured load is at most {:.0}% of the mean or {FD_TREND_FLOOR:.0}",
                    FD_TREND_SHARE * 100.0
                ),
                observed: format!(
                    "{:.0} -> {:.0} fds, trend {slope:+.3} fd/s = {growth:+.0} over {:.0} s (mean {mean:.0}, allowed {allowed:.0})",
                    first.1,
                    last.1,
                    last.0 - first.0
                ),
                pass: growth <= allowed,
            }
        }
        _ => missing("fds_steady_under_load", "fewer than two load samples"),
    });

    checks.push(
        match (baseline.and_then(|s| s.fds), cooled.and_then(|s| s.fds)) {
            (Some(before), Some(after)) => Check {
                name: "fds_return_after_load".into(),
                rule: format!(
                    "after the load stops and its connections close, open fds are within {FD_SLACK} of the idle baseline (Pingora's upstream pool of 128, and 16)"
                ),
                observed: format!(
                    "{before} before, {after} after ({:+})",
                    after as i64 - before as i64
                ),
                pass: after <= before + FD_SLACK,
            },
            _ => missing("fds_return_after_load", "no baseline or cool-down sample"),
        },
    );

    let rss: Vec<(f64, u64)> = load
        .iter()
        .filter_map(|s| Some((s.t_s, s.rss_bytes?)))
        .collect();
    checks.push(match (rss.first(), rss.last()) {
        (Some(first), Some(last)) if rss.len() >= 3 => {
            let middle_t = (first.0 + last.0) / 2.0;
            let middle = rss
                .iter()
                .min_by(|a, b| (a.0 - middle_t).abs().total_cmp(&(b.0 - middle_t).abs()))
                .unwrap_or(first);
            let growth = last.1 as f64 / middle.1 as f64 - 1.0;
            let float: Vec<(f64, f64)> = rss.iter().map(|(t, b)| (*t, *b as f64)).collect();
            let per_minute = slope(&float).unwrap_or(0.0) * 60.0 / 1024.0 / 1024.0;
            Check {
                name: "rss_flat_last_half".into(),
                rule: format!(
                    "resident memory grows less than {:.0}% over the second half of the measured load",
                    RSS_LAST_HALF_SHARE * 100.0
                ),
                observed: format!(
                    "{:.1} MiB at {:.0} s (first measured), {:.1} MiB at {:.0} s (middle), {:.1} MiB at {:.0} s (last): {:+.2}%; trend {per_minute:+.3} MiB/min",
                    mib(first.1),
                    first.0,
                    mib(middle.1),
                    middle.0,
                    mib(last.1),
                    last.0,
                    growth * 100.0
                ),
                pass: growth < RSS_LAST_HALF_SHARE,
            }
        }
        _ => missing("rss_flat_last_half", "fewer than three load samples"),
    });

    checks.push(match cooled.and_then(|s| s.active_connections) {
        Some(active) => Check {
            name: "connections_drain".into(),
            rule: "cordon_proxy_active_connections reads 0 once the clients have closed".into(),
            observed: format!("{active}"),
            pass: active == 0.0,
        },
        None => missing("connections_drain", "the metrics endpoint was not read"),
    });

    checks.push(
        match (outcome.sessions_before, deregistered.and_then(|s| s.sessions)) {
            (Some(before), Some(after)) => Check {
                name: "sessions_return".into(),
                rule: "once every soak session is deregistered, the registry holds what it held before".into(),
                observed: format!("{before} before, {after} after"),
                pass: before == after,
            },
            _ => missing("sessions_return", "the admin API was not read"),
        },
    );

    checks.push(match (outcome.nft_before, outcome.nft_after) {
        (Some(before), Some(after)) => Check {
            name: "nft_tables_unchanged".into(),
            rule: "`nft list tables` counts as many tables after the run as before".into(),
            observed: format!("{before} before, {after} after"),
            pass: before == after,
        },
        _ => missing("nft_tables_unchanged", "nft could not be run"),
    });

    let share = outcome.unexpected_errors as f64 / outcome.requests.max(1) as f64;
    checks.push(Check {
        name: "unexpected_errors".into(),
        rule: format!(
            "failures other than the policy's 403s and churn are under {}% of requests",
            UNEXPECTED_ERROR_SHARE * 100.0
        ),
        observed: format!(
            "{} of {} ({:.4}%)",
            outcome.unexpected_errors,
            outcome.requests,
            share * 100.0
        ),
        pass: outcome.requests > 0 && share < UNEXPECTED_ERROR_SHARE,
    });
    checks
}

fn missing(name: &str, why: &str) -> Check {
    Check {
        name: name.into(),
        rule: "not measured".into(),
        observed: why.into(),
        pass: false,
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1024.0 / 1024.0
}

/// The least-squares slope of `points` (y per unit of x); None for fewer than two x values.
pub(crate) fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    (points.len() >= 2 && sxx > 0.0).then(|| sxy / sxx)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn sample(t_s: f64, phase: Phase, fds: u64, rss_mib: u64) -> Sample {
        Sample {
            t_s,
            phase,
            fds: Some(fds),
            rss_bytes: Some(rss_mib * 1024 * 1024),
            threads: Some(4),
            active_connections: Some(if phase == Phase::Load { 900.0 } else { 0.0 }),
            sessions: Some(if phase == Phase::Deregistered { 1 } else { 201 }),
            requests: 0,
            requests_per_s: None,
        }
    }

    fn outcome() -> Outcome {
        Outcome {
            requests: 1_000_000,
            unexpected_errors: 10,
            sessions_before: Some(1),
            nft_before: Some(0),
            nft_after: Some(0),
        }
    }

    fn run(fds_per_sample: u64, rss_per_sample: u64, fds_after: u64) -> Vec<Check> {
        let mut samples = vec![sample(-1.0, Phase::Idle, 40, 30)];
        for i in 0..10u64 {
            samples.push(sample(
                60.0 + 10.0 * i as f64,
                Phase::Load,
                1900 + fds_per_sample * i,
                100 + rss_per_sample * i,
            ));
        }
        samples.push(sample(200.0, Phase::Cooldown, fds_after, 100));
        samples.push(sample(210.0, Phase::Deregistered, fds_after, 100));
        judge(&samples, outcome())
    }

    fn passed(checks: &[Check], name: &str) -> bool {
        checks.iter().find(|c| c.name == name).unwrap().pass
    }

    #[test]
    fn a_flat_run_passes_every_check() {
        let checks = run(0, 0, 100);
        assert!(checks.iter().all(|c| c.pass), "{checks:#?}");
    }

    #[test]
    fn growing_descriptors_fail_the_steady_and_return_checks() {
        let checks = run(50, 0, 40 + FD_SLACK + 1);
        assert!(!passed(&checks, "fds_steady_under_load"));
        assert!(!passed(&checks, "fds_return_after_load"));
        assert!(passed(&checks, "rss_flat_last_half"));
    }

    #[test]
    fn memory_that_keeps_growing_fails() {
        let checks = run(0, 3, 100);
        assert!(!passed(&checks, "rss_flat_last_half"));
    }

    #[test]
    fn slope_is_least_squares() {
        assert_eq!(slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]), Some(2.0));
        assert_eq!(slope(&[(1.0, 1.0)]), None);
    }
}

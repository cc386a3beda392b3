//! The targets Cordon must show (issue 7), checked against one run's results.

use crate::compare::results::{Results, Row, ScenarioResult};

#[derive(Debug, Clone)]
pub struct Target {
    pub name: &'static str,
    pub wanted: String,
    /// What was measured, in words; None when a figure it needs is missing.
    pub measured: Option<String>,
    pub met: Option<bool>,
}

fn scenario<'a>(results: &'a Results, key: &str) -> Option<&'a ScenarioResult> {
    results.scenarios.iter().find(|s| s.key == key)
}

fn row<'a>(s: &'a ScenarioResult, system: &str) -> Option<&'a Row> {
    s.rows.iter().find(|r| r.system == system)
}

pub fn check(results: &Results) -> Vec<Target> {
    let mut targets = Vec::new();
    let keep_alive = scenario(results, "keepalive_small");
    let per_cpu = |system| keep_alive.and_then(|s| row(s, system)?.per_proxy_cpu_s);
    let (cordon, squid) = (per_cpu("cordon"), per_cpu("squid"));
    targets.push(Target {
        name: "keep-alive requests per proxy CPU-second",
        wanted: ">= 2x Squid".into(),
        measured: cordon
            .zip(squid)
            .map(|(c, s)| format!("Cordon {c:.0}, Squid {s:.0}: {:.2}x", c / s)),
        met: cordon.zip(squid).map(|(c, s)| c >= 2.0 * s),
    });
    let ratio_to_direct = |key, wanted: f64, name, wanted_text: &str| {
        let s = scenario(results, key);
        let c = s.and_then(|s| row(s, "cordon")?.figure);
        let d = s.and_then(|s| row(s, "direct")?.figure);
        Target {
            name,
            wanted: wanted_text.into(),
            measured: c
                .zip(d)
                .map(|(c, d)| format!("Cordon {c:.0}, direct {d:.0}: {:.0}%", 100.0 * c / d)),
            met: c.zip(d).map(|(c, d)| c >= wanted * d),
        }
    };
    targets.push(ratio_to_direct(
        "new_connection",
        0.9,
        "new TLS connections per second",
        ">= 90% of direct",
    ));
    targets.push(ratio_to_direct(
        "large_download",
        0.5,
        "single-connection interception throughput",
        ">= 50% of direct",
    ));
    let p50 = |system| {
        keep_alive
            .and_then(|s| row(s, system)?.load.as_ref())
            .map(|l| l.latency.p50_us as f64)
    };
    let (c, d) = (p50("cordon"), p50("direct"));
    targets.push(Target {
        name: "added p50 latency at 8 connections",
        wanted: "<= 150 us".into(),
        measured: c
            .zip(d)
            .map(|(c, d)| format!("Cordon {c:.0} us, direct {d:.0} us: +{:.0} us", c - d)),
        met: c.zip(d).map(|(c, d)| c - d <= 150.0),
    });
    targets
}

//! Per-decision latency of the example policies: the RVM fast path against the interpreter and
//! against naive `regorus::Engine` reuse, measured in the same run.
//!
//! `cargo bench -p cordon-policy --bench decision` runs criterion (means with confidence
//! intervals) and then a percentile pass that times decisions one by one into an HDR histogram
//! and prints p50/p99 per path, with the ratio of each to the fast path. The percentile table is
//! also written as JSON to `$CARGO_TARGET_DIR/criterion/cordon-policy-percentiles.json`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cordon_policy::bundle::Bundle;
use cordon_policy::input::ConnectionDocument;
use cordon_policy::{
    ConnectionInput, EvalLimits, Generation, HttpProtocol, ListenerMode, PolicyInput, RequestInput,
    SessionInput, Stage, Transport,
};
use criterion::Criterion;

/// One benchmark case: a bundle, its query and a representative request.
struct Case {
    name: &'static str,
    bundle: &'static str,
    query: &'static str,
    input: PolicyInput,
    /// Built once, as the proxy builds it once per connection.
    connection: ConnectionDocument,
}

impl Case {
    fn new(
        name: &'static str,
        bundle: &'static str,
        query: &'static str,
        input: PolicyInput,
    ) -> Self {
        let connection = ConnectionDocument::new(&input.connection, &input.session);
        Self {
            name,
            bundle,
            query,
            input,
            connection,
        }
    }
}

fn request(host: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> PolicyInput {
    let mut session = SessionInput::named("sesn_01bench");
    session.agent_id = Some("agent_01bench".into());
    session.labels.insert("team".into(), "platform".into());
    PolicyInput {
        stage: Stage::Request,
        connection: ConnectionInput {
            mode: ListenerMode::Transparent,
            transport: Transport::Tls,
            source: "10.200.0.2:51000".parse().unwrap(),
            original_destination: Some("192.0.2.10:443".parse().unwrap()),
            sni: Some(host.into()),
            connect_target: None,
            dns_name: None,
        },
        session,
        request: Some(RequestInput {
            id: Some("req-bench".into()),
            method: method.into(),
            scheme: "https".into(),
            authority: host.into(),
            path: path.into(),
            protocol: HttpProtocol::Http11,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .chain([
                    ("user-agent".to_string(), "git/2.47.3".to_string()),
                    ("accept".to_string(), "*/*".to_string()),
                    ("accept-encoding".to_string(), "gzip".to_string()),
                ])
                .collect(),
        }),
    }
}

fn cases() -> Vec<Case> {
    vec![
        Case::new(
            "agent-egress/github-api-inject",
            "agent-egress",
            "data.cordon.egress.decision",
            request(
                "api.github.com",
                "GET",
                "/repos/acme/widgets/pulls?state=open&per_page=50",
                &[],
            ),
        ),
        Case::new(
            "agent-egress/registry-read",
            "agent-egress",
            "data.cordon.egress.decision",
            request("pypi.org", "GET", "/simple/requests/", &[]),
        ),
        Case::new(
            "agent-egress/unlisted-deny",
            "agent-egress",
            "data.cordon.egress.decision",
            request("exfil.example", "POST", "/upload", &[]),
        ),
        Case::new(
            "opa-envoy/rbac",
            "opa-envoy",
            "data.envoy.authz.allow",
            request(
                "people.example",
                "GET",
                "/people",
                &[("authorization", "Basic YWxpY2U6cGFzc3dvcmQ=")],
            ),
        ),
    ]
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies")
}

fn load(case: &Case) -> (Generation, regorus::Engine) {
    let bundle = Bundle::load(&examples_dir().join(case.bundle)).expect("example bundle loads");
    let generation = Generation::compile(&bundle, case.query, EvalLimits::default()).unwrap();
    // The naive baseline: one regorus Engine holding the bundle, `set_input` + `eval_rule` per
    // request, as most embedders start out.
    let mut engine = regorus::Engine::new();
    engine.set_rego_v0(bundle.manifest.rego_v0());
    for module in bundle.modules.iter().filter(|m| !m.is_test()) {
        engine
            .add_policy(module.path.clone(), module.source.clone())
            .unwrap();
    }
    engine.add_data(bundle.data.clone()).unwrap();
    (generation, engine)
}

/// The evaluation paths compared, each including the building of the input document.
const PATHS: [&str; 4] = [
    "rvm + connection document",
    "rvm + whole document",
    "interpreter",
    "naive engine reuse",
];

fn decide(path: usize, generation: &Generation, engine: &mut regorus::Engine, case: &Case) -> bool {
    match path {
        0 => generation
            .decide_request(&case.connection, case.input.request.as_ref().unwrap())
            .is_allowed(),
        1 => generation.decide(&case.input).is_allowed(),
        2 => generation.decide_interpreted(&case.input).is_allowed(),
        _ => {
            engine.set_input(case.input.to_value());
            engine.eval_rule(case.query.to_string()).is_ok()
        }
    }
}

fn criterion_benches(c: &mut Criterion, cases: &[Case]) {
    for case in cases {
        let (generation, mut engine) = load(case);
        let mut group = c.benchmark_group(case.name);
        for (index, path) in PATHS.iter().enumerate() {
            group.bench_function(*path, |b| {
                b.iter(|| black_box(decide(index, &generation, &mut engine, black_box(case))))
            });
        }
        group.bench_function("input document only (whole)", |b| {
            b.iter(|| black_box(black_box(&case.input).to_value()))
        });
        let request = case.input.request.as_ref().unwrap();
        group.bench_function("input document only (per request)", |b| {
            b.iter(|| black_box(case.connection.request(black_box(request))))
        });
        let prebuilt = case.input.to_value();
        group.bench_function("policy only (input prebuilt)", |b| {
            b.iter(|| black_box(generation.decide_value(black_box(prebuilt.clone()))))
        });
        group.finish();
    }
}

struct Percentiles {
    case: String,
    path: String,
    p50_us: f64,
    p99_us: f64,
}

fn percentile_pass(cases: &[Case], per_path: Duration) -> Vec<Percentiles> {
    let mut rows = Vec::new();
    for case in cases {
        let (generation, mut engine) = load(case);
        for (index, path) in PATHS.iter().enumerate() {
            let mut histogram = hdrhistogram::Histogram::<u64>::new(3).unwrap();
            // Warm the thread's VM and caches.
            for _ in 0..1_000 {
                black_box(decide(index, &generation, &mut engine, case));
            }
            let started = Instant::now();
            while started.elapsed() < per_path {
                let t = Instant::now();
                black_box(decide(index, &generation, &mut engine, case));
                histogram.record(t.elapsed().as_nanos() as u64).unwrap();
            }
            rows.push(Percentiles {
                case: case.name.to_string(),
                path: path.to_string(),
                p50_us: histogram.value_at_quantile(0.50) as f64 / 1000.0,
                p99_us: histogram.value_at_quantile(0.99) as f64 / 1000.0,
            });
        }
    }
    rows
}

fn main() {
    let cases = cases();
    // Sanity: the fast path and the interpreter must agree before their speed means anything.
    for case in &cases {
        let (generation, _) = load(case);
        assert_eq!(
            generation.decide(&case.input),
            generation.decide_interpreted(&case.input),
            "{}: fast path and interpreter disagree",
            case.name
        );
    }

    let mut criterion = Criterion::default().configure_from_args();
    criterion_benches(&mut criterion, &cases);
    criterion.final_summary();

    let per_path = std::env::var("CORDON_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .map_or(Duration::from_secs(2), Duration::from_secs_f64);
    let rows = percentile_pass(&cases, per_path);
    println!("\nper-decision latency (one decision per sample, {per_path:?} per path):");
    println!(
        "{:<34} {:<24} {:>9} {:>9} {:>12}",
        "case", "path", "p50 us", "p99 us", "p50 vs rvm"
    );
    let mut json = Vec::new();
    for row in &rows {
        let fast = rows
            .iter()
            .find(|r| r.case == row.case && r.path == PATHS[0])
            .map_or(row.p50_us, |r| r.p50_us);
        let ratio = row.p50_us / fast;
        println!(
            "{:<34} {:<24} {:>9.2} {:>9.2} {:>11.2}x",
            row.case, row.path, row.p50_us, row.p99_us, ratio
        );
        json.push(serde_json::json!({
            "case": row.case, "path": row.path, "p50_us": row.p50_us, "p99_us": row.p99_us,
            "p50_ratio_to_rvm": ratio,
        }));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let out = target.join("criterion/cordon-policy-percentiles.json");
    if std::fs::create_dir_all(out.parent().unwrap()).is_ok() {
        let _ = std::fs::write(&out, serde_json::to_string_pretty(&json).unwrap());
        println!("written to {}", out.display());
    }
}

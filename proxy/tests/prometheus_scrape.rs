//! A real scraper: Debian's `prometheus` server scrapes the proxy's `metrics_listen`, requests
//! go through the proxy, and `cordon_proxy_requests_total` is read back through Prometheus's
//! HTTP query API. That checks the exposition the way a monitoring stack consumes it (content
//! type, parsing, labels), not by a text match on the endpoint. Everything stays on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{Proxy, free_port, spawn_upstream, test_pki, text};

const PROMETHEUS: &str = "/usr/bin/prometheus";

/// One element of an instant-query result vector: its labels and its value.
type Sample = (BTreeMap<String, String>, f64);

const POLICY: &str = r#"package cordon.egress
import rego.v1

default decision := {"allowed": false, "reason": "default deny"}

decision := {"allowed": true, "reason": "connect"} if input.connection.stage == "connect"

decision := {"allowed": true, "reason": "listed"} if {
	input.connection.stage == "request"
	input.destination.host == "allowed.test"
	input.attributes.request.http.method == "GET"
}

decision := {"allowed": false, "reason": "posting is not allowed here", "http_status": 451} if {
	input.connection.stage == "request"
	input.attributes.request.http.method == "POST"
}
"#;

/// A `prometheus` server scraping one target, killed (by its own pid) when dropped.
struct Prometheus {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus with a single 1 s scrape job `cordon` for `127.0.0.1:<metrics>`, its
    /// API on a loopback port, its storage in a temp dir, and no remote write, alerting or
    /// rule files; waits until it reports ready.
    fn start(metrics: u16) -> Prometheus {
        assert!(
            Path::new(PROMETHEUS).exists(),
            "{PROMETHEUS} is missing: run scripts/install-deps.sh (it installs Debian's \
             `prometheus`, a declared test dependency)"
        );
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: cordon\n    static_configs:\n      \
             - targets: [\"127.0.0.1:{metrics}\"]\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let child = Command::new(PROMETHEUS)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            // Keep it hermetic: no console templates from /etc.
            .arg(format!(
                "--web.console.templates={}",
                dir.path().join("consoles").display()
            ))
            .arg(format!(
                "--web.console.libraries={}",
                dir.path().join("console_libraries").display()
            ))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            // Files, not pipes nobody reads.
            .stdout(std::fs::File::create(dir.path().join("prometheus.out")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .unwrap();
        let mut prometheus = Prometheus { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = prometheus.child.try_wait().unwrap() {
                panic!("prometheus exited ({status}):\n{}", prometheus.log());
            }
            let out = Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
                .arg(prometheus.url("/-/ready"))
                .output()
                .expect("curl is installed by scripts/install-deps.sh");
            if text(&out) == "200" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus did not become ready:\n{}",
                prometheus.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        prometheus
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("prometheus.log")).unwrap_or_default()
    }

    /// An instant query through `/api/v1/query`: the result vector as (labels, value) pairs.
    fn query(&self, promql: &str) -> Result<Vec<Sample>, String> {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "5", "-G"])
            .arg(self.url("/api/v1/query"))
            .arg("--data-urlencode")
            .arg(format!("query={promql}"))
            .output()
            .expect("curl is installed by scripts/install-deps.sh");
        let body = text(&out);
        let json: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("{e}: {body:?}"))?;
        if json["status"] != "success" || json["data"]["resultType"] != "vector" {
            return Err(body);
        }
        let result = json["data"]["result"]
            .as_array()
            .ok_or_else(|| body.clone())?;
        result
            .iter()
            .map(|sample| {
                let labels = sample["metric"]
                    .as_object()
                    .ok_or_else(|| body.clone())?
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect();
                let value = sample["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .ok_or_else(|| body.clone())?;
                Ok((labels, value))
            })
            .collect()
    }

    /// Polls `promql` until `done` accepts the result; panics with the last answer and the
    /// server's log after `within`.
    fn wait_for(
        &self,
        promql: &str,
        within: Duration,
        done: impl Fn(&[Sample]) -> bool,
    ) -> Vec<Sample> {
        let deadline = Instant::now() + within;
        loop {
            let answer = self.query(promql);
            if let Ok(result) = &answer
                && done(result)
            {
                return result.clone();
            }
            assert!(
                Instant::now() < deadline,
                "`{promql}` did not reach the expected value within {within:?}; last answer: \
                 {answer:?}\nprometheus log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// The value of the sample whose `label` is `value`, if any.
fn sample(result: &[Sample], label: &str, value: &str) -> Option<f64> {
    result
        .iter()
        .find(|(labels, _)| labels.get(label).map(String::as_str) == Some(value))
        .map(|(_, v)| *v)
}

/// The HTTP status of the last response head in curl's `-i` output.
fn status(out: &std::process::Output) -> String {
    text(out)
        .lines()
        .rfind(|l| l.starts_with("HTTP/"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn prometheus_scrapes_request_counters() {
    let started = Instant::now();
    let pki = test_pki(&["allowed.test"]);
    let upstream = spawn_upstream(&pki);
    let proxy = Proxy::start(POLICY, upstream, &pki.ca_pem, &["allowed.test"], "");
    let prometheus = Prometheus::start(proxy.metrics);

    // The target is up before any traffic: the exposition parses for a real scraper.
    let up = prometheus.wait_for("up{job=\"cordon\"}", Duration::from_secs(30), |r| {
        sample(r, "job", "cordon") == Some(1.0)
    });
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!(
        up[0].0.get("instance").map(String::as_str),
        Some(format!("127.0.0.1:{}", proxy.metrics).as_str()),
        "{up:?}"
    );

    // Three allowed, two denied by policy.
    for i in 0..3 {
        let out = proxy.curl(&[&format!("https://allowed.test/ok/{i}")]);
        assert_eq!(status(&out), "200", "{}", text(&out));
    }
    for i in 0..2 {
        let out = proxy.curl(&["-X", "POST", &format!("https://allowed.test/upload/{i}")]);
        assert_eq!(status(&out), "451", "{}", text(&out));
        assert!(text(&out).contains("posting is not allowed here"));
    }

    let query = "sum by (decision) (cordon_proxy_requests_total)";
    let result = prometheus.wait_for(query, Duration::from_secs(30), |r| {
        sample(r, "decision", "allow") == Some(3.0) && sample(r, "decision", "deny") == Some(2.0)
    });
    // Every decision's series exists from the start (at zero), as Prometheus advises.
    assert_eq!(
        sample(&result, "decision", "error"),
        Some(0.0),
        "{result:?}"
    );

    // The per-series labels survived scraping, and the target is still healthy.
    let by_protocol = prometheus
        .query("cordon_proxy_requests_total{job=\"cordon\",decision=\"allow\"}")
        .unwrap();
    assert!(
        by_protocol
            .iter()
            .all(|(labels, _)| matches!(labels["protocol"].as_str(), "http1" | "http2")),
        "{by_protocol:?}"
    );
    let up = prometheus.query("up{job=\"cordon\"}").unwrap();
    assert_eq!(sample(&up, "job", "cordon"), Some(1.0), "{up:?}");

    eprintln!("prometheus read back {result:?} in {:?}", started.elapsed());
}

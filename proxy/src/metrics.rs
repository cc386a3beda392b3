//! Prometheus metrics (names per docs/METRICS.md: `cordon_<subsystem>_<thing>_<unit>`).
//!
//! Label values come from closed sets (decision, protocol, mode, outcome, direction); host names
//! and session ids are never labels.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::intercept::leaf_cache::LeafCacheMetrics;

/// Every metric the proxy exports, registered in its own registry.
#[derive(Debug, Clone)]
pub struct ProxyMetrics {
    pub registry: Registry,
    /// `decision` = allow | deny | error; `protocol` = http1 | http2.
    pub requests: IntCounterVec,
    /// Connections, counted when they end: `mode` = explicit | transparent; `outcome` =
    /// intercepted | spliced | denied | failed.
    pub connections: IntCounterVec,
    pub active_connections: IntGauge,
    pub policy_eval: Histogram,
    pub upstream_duration: Histogram,
    pub tls_handshake: Histogram,
    pub certs_minted: IntCounter,
    pub cert_cache_hits: IntCounter,
    /// `direction` = upstream (sent by the sandbox) | downstream (sent to the sandbox).
    pub bytes: IntCounterVec,
    /// `generation`, `evaluator` (rvm | interpreter): 1 for the serving generation.
    pub policy_generation: IntGaugeVec,
    pub policy_reloads: IntCounterVec,
    /// `action` = injected | swapped | scrubbed | refused | exfiltration: credential events
    /// (secret names are never labels).
    pub credentials: IntCounterVec,
    /// `outcome` = answered | refused: queries to the sandboxes' DNS stub.
    pub dns_queries: IntCounterVec,
    /// `stage` = connect | request: denials let through because the policy only reports
    /// (`[policy] mode = "report"`, or a session's `policy_mode` label).
    pub would_deny: IntCounterVec,
    /// Children counted on every request, resolved once: `with_label_values` hashes its
    /// labels and takes a lock on each call.
    pub bytes_upstream: IntCounter,
    pub bytes_downstream: IntCounter,
    /// `requests` by decision (allow, deny, error) and protocol (http1, http2).
    requests_by: [[IntCounter; 2]; 3],
}

const DECISIONS: [&str; 3] = ["allow", "deny", "error"];
const PROTOCOLS: [&str; 2] = ["http1", "http2"];

/// Decision-latency buckets: microseconds to milliseconds.
const EVAL_BUCKETS: &[f64] = &[
    0.000_005, 0.000_01, 0.000_02, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.005, 0.025, 0.1,
];
/// Network-latency buckets: a millisecond to a minute.
const NET_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

impl ProxyMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "cordon_proxy_requests_total",
                "HTTP requests decided, by decision and protocol",
            ),
            &["decision", "protocol"],
        )?;
        let connections = IntCounterVec::new(
            Opts::new(
                "cordon_proxy_connections_total",
                "Connections accepted, by listener mode and outcome",
            ),
            &["mode", "outcome"],
        )?;
        let active_connections =
            IntGauge::new("cordon_proxy_active_connections", "Connections open now")?;
        let policy_eval = Histogram::with_opts(
            HistogramOpts::new(
                "cordon_proxy_policy_eval_seconds",
                "Time to build the input and evaluate the policy",
            )
            .buckets(EVAL_BUCKETS.to_vec()),
        )?;
        let upstream_duration = Histogram::with_opts(
            HistogramOpts::new(
                "cordon_proxy_upstream_duration_seconds",
                "Time from forwarding a request to the end of its response",
            )
            .buckets(NET_BUCKETS.to_vec()),
        )?;
        let tls_handshake = Histogram::with_opts(
            HistogramOpts::new(
                "cordon_proxy_tls_handshake_seconds",
                "Downstream TLS handshake time (interception)",
            )
            .buckets(NET_BUCKETS.to_vec()),
        )?;
        let certs_minted = IntCounter::new(
            "cordon_proxy_certs_minted_total",
            "Leaf certificates minted",
        )?;
        let cert_cache_hits = IntCounter::new(
            "cordon_proxy_cert_cache_hits_total",
            "Leaf certificates served from the cache",
        )?;
        let bytes = IntCounterVec::new(
            Opts::new(
                "cordon_proxy_bytes_total",
                "Body bytes proxied, by direction",
            ),
            &["direction"],
        )?;
        let policy_generation = IntGaugeVec::new(
            Opts::new(
                "cordon_policy_generation_info",
                "The serving policy generation (value 1)",
            ),
            &["generation", "evaluator"],
        )?;
        let policy_reloads = IntCounterVec::new(
            Opts::new("cordon_policy_reloads_total", "Policy reloads, by outcome"),
            &["outcome"],
        )?;
        let credentials = IntCounterVec::new(
            Opts::new(
                "cordon_proxy_credentials_total",
                "Credential events: injected, placeholder swapped, echoed value scrubbed, refused, exfiltration attempt",
            ),
            &["action"],
        )?;
        let dns_queries = IntCounterVec::new(
            Opts::new(
                "cordon_dns_queries_total",
                "Queries to the sandboxes' DNS stub, by outcome",
            ),
            &["outcome"],
        )?;
        let would_deny = IntCounterVec::new(
            Opts::new(
                "cordon_proxy_would_deny_total",
                "Policy denials let through in report mode, by stage",
            ),
            &["stage"],
        )?;
        for stage in ["connect", "request"] {
            would_deny.with_label_values(&[stage]);
        }
        let build_info = IntGaugeVec::new(
            Opts::new("cordon_build_info", "Build information (value 1)"),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(connections.clone()),
            Box::new(active_connections.clone()),
            Box::new(policy_eval.clone()),
            Box::new(upstream_duration.clone()),
            Box::new(tls_handshake.clone()),
            Box::new(certs_minted.clone()),
            Box::new(cert_cache_hits.clone()),
            Box::new(bytes.clone()),
            Box::new(policy_generation.clone()),
            Box::new(policy_reloads.clone()),
            Box::new(credentials.clone()),
            Box::new(dns_queries.clone()),
            Box::new(would_deny.clone()),
            Box::new(build_info),
        ] {
            registry.register(collector)?;
        }
        let bytes_upstream = bytes.with_label_values(&["upstream"]);
        let bytes_downstream = bytes.with_label_values(&["downstream"]);
        let requests_by =
            DECISIONS.map(|decision| PROTOCOLS.map(|p| requests.with_label_values(&[decision, p])));
        Ok(Self {
            bytes_upstream,
            bytes_downstream,
            requests_by,
            registry,
            requests,
            connections,
            active_connections,
            policy_eval,
            upstream_duration,
            tls_handshake,
            certs_minted,
            cert_cache_hits,
            bytes,
            policy_generation,
            policy_reloads,
            credentials,
            dns_queries,
            would_deny,
        })
    }

    /// Counts a decided request.
    pub fn count_request(&self, decision: &str, protocol: &str) {
        match (
            DECISIONS.iter().position(|d| *d == decision),
            PROTOCOLS.iter().position(|p| *p == protocol),
        ) {
            (Some(d), Some(p)) => self.requests_by[d][p].inc(),
            _ => self.requests.with_label_values(&[decision, protocol]).inc(),
        }
    }

    pub fn leaf_cache(&self) -> LeafCacheMetrics {
        LeafCacheMetrics {
            minted: self.certs_minted.clone(),
            hits: self.cert_cache_hits.clone(),
        }
    }

    /// Marks `generation` as the serving one (and no other).
    pub fn set_generation(&self, info: &cordon_policy::GenerationInfo) {
        self.policy_generation.reset();
        let evaluator = match info.path {
            cordon_policy::EvalPath::Vm => "rvm",
            cordon_policy::EvalPath::Interpreter { .. } => "interpreter",
        };
        self.policy_generation
            .with_label_values(&[&*info.id, evaluator])
            .set(1);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let encoder = prometheus::TextEncoder::new();
        encoder
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# error encoding metrics: {e}\n"))
    }
}

//! The outcome of a load run, as numbers and as JSON.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatencySummary {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl LatencySummary {
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        Self {
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
            mean_us: h.mean(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadReport {
    /// Requests answered 2xx with their whole body read.
    pub ok: u64,
    /// Requests that failed: a non-2xx status, or a connection, TLS or protocol error.
    pub errors: u64,
    /// The first few error messages, to say why.
    pub error_samples: Vec<String>,
    pub statuses: BTreeMap<u16, u64>,
    /// TLS connections opened (and verified).
    pub connections: u64,
    /// Response body bytes read.
    pub body_bytes: u64,
    pub elapsed_s: f64,
    pub requests_per_s: f64,
    pub connections_per_s: f64,
    pub body_bytes_per_s: f64,
    /// Of successful requests; with a new connection per request it includes the handshake.
    pub latency: LatencySummary,
}

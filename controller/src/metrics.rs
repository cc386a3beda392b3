//! The controller's Prometheus metrics (docs/METRICS.md, "Controller"), served on the admin
//! listener's `GET /metrics`. Label values come from closed sets; session ids and tool inputs
//! are never labels.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Every metric the controller exports, in its own registry.
#[derive(Debug, Clone)]
pub struct ControllerMetrics {
    pub registry: Registry,
    /// Sessions being served now (sandbox started, work item held).
    pub sessions_active: IntGauge,
    /// From claiming a work item to its sandbox's agent answering.
    pub session_start: Histogram,
    /// `tool` = bash | read | write | edit | glob | grep | other; `outcome` = ok | error.
    pub tool_calls: IntCounterVec,
    /// `outcome` = accepted | duplicate | unauthorized | bad_request | error.
    pub webhook_deliveries: IntCounterVec,
    /// Leases another worker took, or that lapsed without a successful heartbeat.
    pub lease_losses: IntCounter,
    /// Work items ended, by `end` = terminated | idle | stop_requested | lease_lost |
    /// stopped_by_operator | failed.
    pub work_items: IntCounterVec,
    /// Sandboxes a session started on, by `kind` = warm (claimed from the pool) | cold.
    pub sandbox_starts: IntCounterVec,
    /// Tool calls a resource limit stopped, by `limit` = memory | pids | workspace_disk.
    pub sandbox_limit_hits: IntCounterVec,
}

/// The limits `sandbox_limit_hits` counts.
pub const LIMITS: [&str; 3] = ["memory", "pids", "workspace_disk"];

const START_BUCKETS: &[f64] = &[0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0];

/// The tool label: the toolset's names, anything else as `other` (names come from the model).
pub fn tool_label(name: &str) -> &'static str {
    match name {
        "bash" => "bash",
        "read" => "read",
        "write" => "write",
        "edit" => "edit",
        "glob" => "glob",
        "grep" => "grep",
        _ => "other",
    }
}

impl ControllerMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let sessions_active = IntGauge::new(
            "cordon_controller_sessions_active",
            "Sessions being served now",
        )?;
        let session_start = Histogram::with_opts(
            HistogramOpts::new(
                "cordon_controller_session_start_seconds",
                "From claiming a session's work item to its sandbox agent answering",
            )
            .buckets(START_BUCKETS.to_vec()),
        )?;
        let tool_calls = IntCounterVec::new(
            Opts::new(
                "cordon_controller_tool_calls_total",
                "Tool calls answered, by tool and outcome",
            ),
            &["tool", "outcome"],
        )?;
        let webhook_deliveries = IntCounterVec::new(
            Opts::new(
                "cordon_controller_webhook_deliveries_total",
                "Webhook deliveries received, by outcome",
            ),
            &["outcome"],
        )?;
        let lease_losses = IntCounter::new(
            "cordon_controller_lease_losses_total",
            "Work-item leases lost (412, or no successful heartbeat for a whole TTL)",
        )?;
        let work_items = IntCounterVec::new(
            Opts::new(
                "cordon_controller_work_items_total",
                "Work items ended, by how they ended",
            ),
            &["end"],
        )?;
        let sandbox_starts = IntCounterVec::new(
            Opts::new(
                "cordon_controller_sandbox_starts_total",
                "Sandboxes sessions started on, by kind: warm (claimed from the pool) or cold",
            ),
            &["kind"],
        )?;
        let sandbox_limit_hits = IntCounterVec::new(
            Opts::new(
                "cordon_controller_sandbox_limit_hits_total",
                "Tool calls stopped by a sandbox resource limit, by limit",
            ),
            &["limit"],
        )?;
        registry.register(Box::new(sandbox_starts.clone()))?;
        registry.register(Box::new(sandbox_limit_hits.clone()))?;
        for kind in ["warm", "cold"] {
            sandbox_starts.with_label_values(&[kind]);
        }
        for limit in LIMITS {
            sandbox_limit_hits.with_label_values(&[limit]);
        }
        registry.register(Box::new(sessions_active.clone()))?;
        registry.register(Box::new(session_start.clone()))?;
        registry.register(Box::new(tool_calls.clone()))?;
        registry.register(Box::new(webhook_deliveries.clone()))?;
        registry.register(Box::new(lease_losses.clone()))?;
        registry.register(Box::new(work_items.clone()))?;
        // Every label value is known up front, so a scrape shows zeros rather than nothing.
        for tool in ["bash", "read", "write", "edit", "glob", "grep", "other"] {
            for outcome in ["ok", "error"] {
                tool_calls.with_label_values(&[tool, outcome]);
            }
        }
        for outcome in [
            "accepted",
            "duplicate",
            "unauthorized",
            "bad_request",
            "error",
        ] {
            webhook_deliveries.with_label_values(&[outcome]);
        }
        for end in [
            "terminated",
            "idle",
            "stop_requested",
            "lease_lost",
            "stopped_by_operator",
            "failed",
        ] {
            work_items.with_label_values(&[end]);
        }
        Ok(Self {
            registry,
            sessions_active,
            session_start,
            tool_calls,
            webhook_deliveries,
            lease_losses,
            work_items,
            sandbox_starts,
            sandbox_limit_hits,
        })
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# error encoding metrics: {e}\n"))
    }
}

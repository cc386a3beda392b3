//! The controller's Prometheus metrics (docs/METRICS.md, "Controller"), served on the admin
//! listener's `GET /metrics`. Label values come from closed sets; session ids and tool inputs
//! are never labels.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

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
    /// Sessions registered with the proxy again after it lost them (it restarted).
    pub registrations_restored: IntCounter,
    /// Custom tool calls, by `tool` (a name tools.toml declares, or `undeclared`) and
    /// `outcome` (see [`CUSTOM_TOOL_OUTCOMES`]).
    pub custom_tool_calls: IntCounterVec,
    /// A custom tool call's wall time, from the call to its result, by `tool`.
    pub custom_tool_duration: HistogramVec,
    /// The state database's failed writes (`cordon_controller_store_write_errors_total`, by
    /// `kind` = disk_full | other) and whether its disk is full now
    /// (`cordon_controller_store_disk_full`); every store the controller opens reports here.
    pub store: crate::store::StoreHealth,
    /// `cordon_controller_dashboard_logins_total{outcome}`: dashboard password logins.
    pub dashboard_logins: IntCounterVec,
    /// Local sessions' model requests and runs (docs/OPEN-MODELS.md).
    pub local: LocalMetrics,
}

/// How a local session's model request ended: `ok`, or the kind of its failure.
pub const MODEL_OUTCOMES: [&str; 6] = [
    "ok",
    "model_unreachable",
    "model_refused_by_proxy",
    "model_status",
    "model_response",
    "model_timeout",
];

/// Why a local session's run stopped (`session.status_idle`'s `stop_reason`).
pub const RUN_ENDS: [&str; 6] = [
    "end_turn",
    "requires_action",
    "interrupted",
    "max_turns",
    "max_run_time",
    "retries_exhausted",
];

/// The local loop's metrics.
#[derive(Debug, Clone)]
pub struct LocalMetrics {
    /// `cordon_controller_model_requests_total{outcome}` (each attempt, [`MODEL_OUTCOMES`]).
    pub model_requests: IntCounterVec,
    /// `cordon_controller_model_request_duration_seconds`: one attempt, sent to answered.
    pub model_duration: Histogram,
    /// `cordon_controller_model_tokens_total{direction}` = input | output, from `usage`.
    pub model_tokens: IntCounterVec,
    /// `cordon_controller_local_runs_total{stop_reason}` ([`RUN_ENDS`]).
    pub runs: IntCounterVec,
    /// `cordon_controller_local_sessions_active`: local sessions whose loop is live.
    pub sessions: IntGauge,
}

impl LocalMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let model_requests = IntCounterVec::new(
            Opts::new(
                "cordon_controller_model_requests_total",
                "Local sessions' model requests (each attempt), by outcome",
            ),
            &["outcome"],
        )?;
        let model_duration = Histogram::with_opts(
            HistogramOpts::new(
                "cordon_controller_model_request_duration_seconds",
                "A local session's model request, from sent to answered (each attempt)",
            )
            .buckets(TOOL_BUCKETS.to_vec()),
        )?;
        let model_tokens = IntCounterVec::new(
            Opts::new(
                "cordon_controller_model_tokens_total",
                "Tokens the model endpoints reported in usage, by direction",
            ),
            &["direction"],
        )?;
        let runs = IntCounterVec::new(
            Opts::new(
                "cordon_controller_local_runs_total",
                "Local sessions' runs ended, by stop reason",
            ),
            &["stop_reason"],
        )?;
        let sessions = IntGauge::new(
            "cordon_controller_local_sessions_active",
            "Local sessions whose loop is live",
        )?;
        registry.register(Box::new(model_requests.clone()))?;
        registry.register(Box::new(model_duration.clone()))?;
        registry.register(Box::new(model_tokens.clone()))?;
        registry.register(Box::new(runs.clone()))?;
        registry.register(Box::new(sessions.clone()))?;
        for outcome in MODEL_OUTCOMES {
            model_requests.with_label_values(&[outcome]);
        }
        for direction in ["input", "output"] {
            model_tokens.with_label_values(&[direction]);
        }
        for end in RUN_ENDS {
            runs.with_label_values(&[end]);
        }
        Ok(Self {
            model_requests,
            model_duration,
            model_tokens,
            runs,
            sessions,
        })
    }
}

/// How a custom tool call ended: `ok`; `error` (the handler answered with an error, exited
/// non-zero or its service answered non-2xx); `timeout`; `invalid_input` (refused by the
/// tool's schema, nothing ran); `refused` (the egress policy refused an http tool's request);
/// `failed` (Cordon could not run the handler); `undeclared` (the agent called a tool
/// tools.toml does not declare).
pub const CUSTOM_TOOL_OUTCOMES: [&str; 7] = [
    "ok",
    "error",
    "timeout",
    "invalid_input",
    "refused",
    "failed",
    "undeclared",
];

const TOOL_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0, 600.0,
];

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
        let registrations_restored = IntCounter::new(
            "cordon_controller_proxy_registrations_restored_total",
            "Running sessions registered with the proxy again after it lost them (it restarted)",
        )?;
        registry.register(Box::new(registrations_restored.clone()))?;
        let custom_tool_calls = IntCounterVec::new(
            Opts::new(
                "cordon_controller_custom_tool_calls_total",
                "Custom tool calls, by tool and outcome",
            ),
            &["tool", "outcome"],
        )?;
        let custom_tool_duration = HistogramVec::new(
            HistogramOpts::new(
                "cordon_controller_custom_tool_duration_seconds",
                "Custom tool calls' wall time, from the call to its result, by tool",
            )
            .buckets(TOOL_BUCKETS.to_vec()),
            &["tool"],
        )?;
        registry.register(Box::new(custom_tool_calls.clone()))?;
        registry.register(Box::new(custom_tool_duration.clone()))?;
        let store_write_errors = IntCounterVec::new(
            Opts::new(
                "cordon_controller_store_write_errors_total",
                "Writes to the state database that failed and were rolled back, by kind",
            ),
            &["kind"],
        )?;
        let store_disk_full = IntGauge::new(
            "cordon_controller_store_disk_full",
            "1 while the state database's disk is full (its writes are refused), else 0",
        )?;
        registry.register(Box::new(store_write_errors.clone()))?;
        registry.register(Box::new(store_disk_full.clone()))?;
        let store = crate::store::StoreHealth::new(store_write_errors, store_disk_full);
        custom_tool_calls.with_label_values(&["undeclared", "undeclared"]);
        let dashboard_logins = IntCounterVec::new(
            Opts::new(
                "cordon_controller_dashboard_logins_total",
                "Dashboard password logins, by outcome: ok, wrong (name or password), limited",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(dashboard_logins.clone()))?;
        for outcome in ["ok", "wrong", "limited"] {
            dashboard_logins.with_label_values(&[outcome]);
        }
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
            sessions_active,
            session_start,
            tool_calls,
            webhook_deliveries,
            lease_losses,
            work_items,
            sandbox_starts,
            sandbox_limit_hits,
            registrations_restored,
            custom_tool_calls,
            custom_tool_duration,
            store,
            dashboard_logins,
            local: LocalMetrics::new(&registry)?,
            registry,
        })
    }

    /// Shows every outcome of each declared custom tool as zero from the start.
    pub fn declare_custom_tools<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        for name in names {
            for outcome in CUSTOM_TOOL_OUTCOMES.iter().filter(|o| **o != "undeclared") {
                self.custom_tool_calls.with_label_values(&[name, outcome]);
            }
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# error encoding metrics: {e}\n"))
    }
}

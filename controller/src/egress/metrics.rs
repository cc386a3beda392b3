//! The ingester's metrics. Built here and registered by the caller into the controller's
//! registry ([`EgressMetrics::register`]), so the ingester needs no field in
//! `ControllerMetrics` and works (and is tested) unregistered.

use prometheus::{Gauge, IntCounter, Registry};

#[derive(Debug, Clone)]
pub struct EgressMetrics {
    /// `cordon_controller_egress_records_ingested_total`: decisions stored.
    pub records_ingested: IntCounter,
    /// `cordon_controller_egress_malformed_lines_total`: audit lines skipped (not JSON, a
    /// field missing or mistyped, a bad time, too long, or unfinished in a rotated file).
    pub malformed_lines: IntCounter,
    /// `cordon_controller_egress_ingest_lag_seconds`: how old the newest decision of the last
    /// stored batch was when it was stored (the proxy's flush interval plus the poll).
    pub ingest_lag: Gauge,
    /// `cordon_controller_egress_rows_pruned_total`: decisions deleted by retention.
    pub rows_pruned: IntCounter,
}

impl EgressMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        Ok(Self {
            records_ingested: IntCounter::new(
                "cordon_controller_egress_records_ingested_total",
                "Egress decisions read from the proxy's audit log and stored",
            )?,
            malformed_lines: IntCounter::new(
                "cordon_controller_egress_malformed_lines_total",
                "Audit log lines the controller could not read as a record and skipped",
            )?,
            ingest_lag: Gauge::new(
                "cordon_controller_egress_ingest_lag_seconds",
                "Age of the newest egress decision of the last stored batch, when stored",
            )?,
            rows_pruned: IntCounter::new(
                "cordon_controller_egress_rows_pruned_total",
                "Egress decisions deleted by retention (age or row count)",
            )?,
        })
    }

    /// Adds these metrics to `registry` (the controller's, served on `GET /metrics`).
    pub fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.records_ingested.clone()))?;
        registry.register(Box::new(self.malformed_lines.clone()))?;
        registry.register(Box::new(self.ingest_lag.clone()))?;
        registry.register(Box::new(self.rows_pruned.clone()))?;
        Ok(())
    }
}

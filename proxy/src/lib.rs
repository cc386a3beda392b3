//! Cordon's gateway data plane.
//!
//! A transparent and explicit (CONNECT) TLS-intercepting proxy on Pingora that asks
//! `cordon-policy` for a decision on every connection and request, injects credentials the
//! sandbox never holds, refuses internal destinations, and records every decision (audit log,
//! Prometheus metrics). Modules follow the request: [`gateway`] (listeners, classification,
//! connect-stage decision), [`intercept`] (CA, leaves, ClientHello), [`relay`] (plain HTTP/1.1
//! requests; the rest go to Pingora's proxy), [`coalesce`] (joins a client connection's small
//! writes), [`authorize`] (the per-request phases both paths share), [`credentials`],
//! [`upstream`] (resolution, SSRF guard), [`respond`] (refusals), [`audit`], [`metrics`],
//! [`dns`] (the sandboxes' DNS stub), [`admin`]; [`server`] assembles them and `main.rs` is the
//! binary.

pub mod admin;
pub mod audit;
pub mod authorize;
pub mod coalesce;
pub mod config;
pub mod connection;
pub mod credentials;
pub mod dns;
pub mod gateway;
pub mod intercept;
pub mod metrics;
pub mod relay;
pub mod respond;
pub mod server;
pub mod sessions;
pub mod state;
pub mod upstream;

/// Entry points for the fuzz targets in `fuzz/`: the parsers of untrusted input that are not
/// public API, callable with raw bytes. Not for other use.
#[doc(hidden)]
pub mod fuzzing {
    /// The relay's classification of a request head (`relay/head.rs`).
    pub fn relay_head(bytes: &[u8]) {
        let _ = crate::relay::head::classify(bytes);
    }

    /// An explicit listener's CONNECT (or absolute-form) head (`gateway/preamble.rs`). Returns
    /// the normalised tunnel target of a complete CONNECT head.
    pub fn connect_head(bytes: &[u8]) -> Option<String> {
        match crate::gateway::preamble::parse(bytes) {
            crate::gateway::preamble::Preamble::Connect { target, consumed } => {
                assert!(consumed <= bytes.len(), "the head is inside what was read");
                Some(target)
            }
            _ => None,
        }
    }
}

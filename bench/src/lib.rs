//! Measurements of Cordon: the HTTPS load generator ([`load`]), the side-by-side comparison
//! with the peers that drives it ([`compare`]), the report and plots written from its results
//! ([`report`]), and sandbox start/stop latency and memory ([`sandboxes`]).

pub mod compare;
pub mod load;
pub mod report;
pub mod sandboxes;

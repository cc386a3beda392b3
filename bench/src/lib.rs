//! Measurements of Cordon: the HTTPS load generator ([`load`]), the side-by-side comparison
//! with the peers that drives it ([`compare`]), the report and plots written from its results
//! ([`report`]), sandbox start/stop latency and memory ([`sandboxes`]), and the overhead of
//! custom tool calls ([`tools`]), and the soak run that watches the proxy for leaks under
//! hours-like load ([`soak`]).

pub mod admin;
pub mod browser;
pub mod compare;
pub mod doc;
mod fixture;
pub mod load;
pub mod local;
pub mod report;
pub mod sandboxes;
pub mod soak;
pub mod tools;

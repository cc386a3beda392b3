//! The load generator: HTTPS requests over HTTP/1.1 or HTTP/2, on keep-alive connections or a
//! new TLS connection per request, at a fixed concurrency for a duration or a request count,
//! directly to an address (the upstream itself, or a transparent listener reached with SNI) or
//! through an explicit proxy (HTTP CONNECT). Certificates are always verified against the roots
//! given; latency goes into an HDR histogram.

mod budget;
mod config;
mod connect;
mod idle;
mod report;
mod run;
mod sender;

pub use config::{ConnectionReuse, LoadConfig, Protocol, Route, client_tls};
pub use connect::{open_tls, open_tls_from};
pub use idle::{Held, hold};
pub use report::{LatencySummary, LoadReport};
pub use run::run;
pub(crate) use sender::Sender;

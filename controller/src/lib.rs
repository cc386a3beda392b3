//! The control plane. Built so far: the sandbox runtime (per-session gVisor sandboxes whose
//! only route out is the proxy) and its CLI. CMA webhooks and the work queue come next.

pub mod admin;
pub mod agent;
pub mod cma;
pub mod command;
pub mod config;
pub mod egress;
pub mod http;
pub mod image;
pub mod metrics;
pub mod proxy_admin;
pub mod sandbox;
pub mod store;
pub mod tools;

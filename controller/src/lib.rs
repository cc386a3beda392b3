//! The control plane: CMA's webhooks and work queue, one gVisor sandbox per session whose only
//! route out is the proxy, the session runner, sandbox images and workspaces, custom tools,
//! and the web dashboard (with the proxy's egress decisions indexed for it). Not the data
//! plane: requests are decided by the proxy, which the controller reaches over its admin API.

pub mod admin;
pub mod agent;
pub mod cma;
pub mod command;
pub mod config;
pub mod dashboard;
pub mod egress;
pub mod files;
pub mod http;
pub mod image;
pub mod local;
pub mod metrics;
pub mod proxy_admin;
pub mod sandbox;
pub mod store;
pub mod tools;

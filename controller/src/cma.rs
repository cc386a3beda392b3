//! Claude Managed Agents: what the controller speaks to CMA (../shared/CMA.md). Built so far:
//! webhook verification and the receiver, and the work-queue client. The session runner and
//! the simulator come next.

pub mod agent_tools;
pub mod client;
pub mod deliveries;
pub mod events;
pub mod receiver;
pub mod runner;
pub mod service;
pub mod tools;
pub mod webhooks;

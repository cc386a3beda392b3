//! Claude Managed Agents: what the controller speaks to CMA (../shared/CMA.md). Built so far:
//! webhook verification and the webhook receiver. The work-queue client and the session
//! runner come next.

pub mod receiver;
pub mod webhooks;

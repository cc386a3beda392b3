//! The control plane: CMA webhooks and work queue, per-session gVisor sandboxes whose only route out is the proxy.
//!
//! Not built yet: this crate is a skeleton so the workspace layout is in place. Its open issue in
//! the tracker describes what it will do; nothing here pretends to do it.

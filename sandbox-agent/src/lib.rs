//! The process inside each sandbox: executes the CMA toolset for the controller over an authenticated local RPC.
//!
//! Not built yet: this crate is a skeleton so the workspace layout is in place. Its open issue in
//! the tracker describes what it will do; nothing here pretends to do it.

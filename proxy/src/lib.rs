//! The gateway data plane: transparent and CONNECT TLS interception on Pingora, a Rego decision per request, credential injection, metrics and audit.
//!
//! Not built yet: this crate is a skeleton so the workspace layout is in place. Its open issue in
//! the tracker describes what it will do; nothing here pretends to do it.

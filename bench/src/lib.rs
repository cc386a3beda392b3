//! Load generation and side-by-side comparison of Cordon with its peers.
//!
//! Not built yet: this crate is a skeleton so the workspace layout is in place. Its open issue in
//! the tracker describes what it will do; nothing here pretends to do it.

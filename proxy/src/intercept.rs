//! TLS interception: the CA, minted leaves, and reading a ClientHello without consuming it.

pub mod ca;
pub mod client_hello;
pub mod leaf_cache;

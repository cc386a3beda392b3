//! Cordon's gateway data plane.
//!
//! A transparent and explicit (CONNECT) TLS-intercepting proxy on Pingora that asks
//! `cordon-policy` for a decision on every connection and request. This crate is being built
//! up issue by issue; today it holds the interception CA, leaf minting and connection
//! classification.

pub mod admin;
pub mod audit;
pub mod authorize;
pub mod config;
pub mod connection;
pub mod credentials;
pub mod gateway;
pub mod intercept;
pub mod metrics;
pub mod respond;
pub mod server;
pub mod sessions;
pub mod state;
pub mod upstream;

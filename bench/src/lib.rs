//! Measurements of Cordon. Built so far: sandbox start and stop latency, memory per idle
//! sandbox, and concurrent sandboxes ([`sandboxes`]). Proxy load generation against the peers
//! is the benchmarks issue's.

pub mod sandboxes;

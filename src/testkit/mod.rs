//! Tooling for the tests, the demo, the benchmarks and the fuzzers; no
//! daemon uses it.
pub mod echo_backend;
pub mod hostile_input;
pub mod loadgen;
pub mod local_cluster;
pub mod sim_agent;

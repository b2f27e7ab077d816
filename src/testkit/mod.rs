//! Tooling for the tests, the demo, the benchmarks and the fuzzers; no
//! daemon uses it (`tests/module_graph.rs` checks).
//!
//! [`loadgen`] is client load against an ODP's SQL port, counted by outcome
//! (refused, reset, cut), served by an [`echo_backend`]; [`local_cluster`]
//! runs agents, stand-ins and a coordinator on loopback; [`metadb_server`]
//! a throwaway MariaDB for coordinators sharing a metadb; [`sim_agent`] is a
//! simulated agent for scale; [`hostile_input`] is what no input may do to
//! the daemons (run by the fuzzers); [`fixed_port`] gives listeners ports
//! outside the kernel's ephemeral range.
pub mod echo_backend;
pub mod fixed_port;
pub mod hostile_input;
pub mod loadgen;
pub mod local_cluster;
pub mod metadb_server;
pub mod sim_agent;

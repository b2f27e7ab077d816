//! odp-agent: a host agent that controls one obproxy (ODP) over gRPC.
//!
//! Layout:
//! - [`config_file`] loads TOML with errors naming file, key and reason;
//!   [`config`] is the agent's typed configuration.
//! - [`listeners`] binds and holds the SQL listening sockets handed to obproxy.
//! - [`obproxy`] is the process itself: its command line, version, pidfd,
//!   `/proc` facts and the long-lived thread it is forked from.
//! - [`signals`] catches what obproxy sends its parent (SIGUSR1 ready,
//!   SIGUSR2 exit) and the agent's own SIGTERM/SIGINT.
//! - [`supervisor`] is the one owner of listeners, processes and the
//!   [`operation`] log; [`operations`] are the start/stop/restart scripts
//!   that drive it step by step.
//! - [`agent_service`] translates gRPC to supervisor calls; [`agent`] wires
//!   the daemon; [`proto`] holds the generated code.
//! - [`loadgen`] is client load against an ODP's SQL port, counted by outcome
//!   (refused, reset, cut), for the load tests and `odp-bench`.
pub mod agent;
pub mod agent_service;
pub mod config;
pub mod config_file;
pub mod listeners;
pub mod loadgen;
pub mod obproxy;
pub mod operation;
pub mod operations;
pub mod proto;
pub mod signals;
pub mod supervisor;
pub mod telemetry;

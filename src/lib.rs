//! odp-agent: a host agent that controls one obproxy (ODP) over gRPC, and a
//! coordinator that runs cluster-wide operations across agents.
//!
//! # Layout
//!
//! Five folders, by role. [`agent`] is everything the daemon on an ODP host
//! runs: its configuration, the gRPC service, the supervisor (the one owner
//! of the listeners and the obproxy processes, with its pure process table
//! and the protocol the rest of the agent talks to it in), the operations it
//! runs step by step, obproxy itself (launch, version, pidfd, `/proc`), admin
//! SQL, the state file, re-adoption, signals, sampling and metrics.
//! [`coordinator`] is the other daemon: agent clients, tasks with their
//! runner, rules and store, its service and metrics. [`common`] is what both
//! share: configuration loading, the gRPC server, the metrics endpoint,
//! request validation, obproxy versions, systemd, logs, panics, `--check`
//! and the programs' command lines. [`security`] is TLS, roles, callers, the
//! guard and the audit log. [`testkit`] is for the tests, the demo, the
//! benchmarks and the fuzzers (load generator, echo backend, local cluster,
//! simulated agent, hostile-input properties); no daemon uses it. [`proto`]
//! holds the generated gRPC code. Imports run one way:
//! `tests/module_graph.rs` fails on a cycle between modules, on shared code
//! importing a daemon, and on the coordinator importing the agent.
pub mod agent;
pub mod common;
pub mod coordinator;
pub mod proto;
pub mod security;
pub mod testkit;

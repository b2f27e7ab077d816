//! odp-agent: a host agent that controls one obproxy (ODP) over gRPC.
//!
//! Layout:
//! - [`config_file`] loads TOML with errors naming file, key and reason;
//!   [`config`] is the agent's typed configuration.
//! - [`admin_sql`] is obproxy's admin SQL as `root@proxysys` (drain window,
//!   native restart, what the binary reports).
//! - [`listeners`] binds and holds the SQL listening sockets handed to obproxy.
//! - [`obproxy`] is the process itself: its command line, version, pidfd,
//!   `/proc` facts and the long-lived thread it is forked from.
//! - [`signals`] catches what obproxy sends its parent (SIGUSR1 ready,
//!   SIGUSR2 exit) and the agent's own SIGTERM/SIGINT.
//! - [`supervisor`] is the one owner of listeners, processes and the
//!   [`operation`] log; [`operations`] are the start/stop/restart scripts
//!   that drive it step by step. [`sampling`] observes the processes (CPU,
//!   memory, sessions) on a thread of its own; [`status_report`] joins the
//!   supervisor's published status with those samples. [`change_feed`] lets
//!   every watcher of an operation or a task see every change.
//! - [`error_chain`] renders an error with its causes on one line;
//!   [`redact`] masks the secrets obproxy's arguments may carry.
//! - [`agent_service`] translates gRPC to supervisor calls; [`agent`] wires
//!   the daemon; [`proto`] holds the generated code.
//! - [`state_file`] is what the agent remembers on disk; [`adoption`]
//!   re-adopts the obproxy processes a previous agent left running.
//! - [`coordinator`] runs cluster-wide operations across agents.
//! - [`security`] is TLS, callers' roles and the audit log;
//!   [`hostile_input`] is what no input may do to the daemons (run by the
//!   fuzzers).
//! - [`command_line`] is the three programs' command lines (clap), with
//!   their shell completions and man pages; [`preflight`] is the daemons'
//!   `--check`.
//! - [`container_init`] is the minimal init the agent leaves behind when it
//!   is started as PID 1 (a container's entrypoint).
//! - [`systemd`] is what systemd is told (ready, stopping, watchdog);
//!   [`metrics`] owns the Prometheus registries and the `/metrics` endpoint;
//!   [`telemetry`] sets up the logs (a lost log line never hurts the
//!   daemon); [`panics`] makes a panic in any thread end the process.
//! - [`grpc_server`] is how both daemons serve gRPC: TLS, the local socket,
//!   and the bounds on connections, streams and calls in flight.
//! - [`loadgen`] is client load against an ODP's SQL port, counted by outcome
//!   (refused, reset, cut), for the load tests and `odp-bench`;
//!   [`local_cluster`] runs agents, stand-ins and a coordinator on loopback
//!   for the demo and benchmarks; [`sim`] is a simulated agent for scale.
pub mod agent;
pub mod common;
pub mod coordinator;
pub mod proto;
pub mod security;
pub mod testkit;

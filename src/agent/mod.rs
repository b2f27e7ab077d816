//! The agent: the daemon on each ODP host that holds obproxy's listeners,
//! runs obproxy on them and restarts it when asked over gRPC.
//!
//! [`daemon`] wires it; [`config`] is its typed configuration; [`service`]
//! translates gRPC into calls on the supervisor (checking each request in
//! `service::requests`). [`supervisor`] is the one owner of the
//! [`listeners`], the processes ([`process_table`], pure) and the
//! [`operation_log`]; everyone talks to it in [`supervisor_protocol`]. The
//! [`operations`] are the start/stop/restart scripts that drive it step by
//! step. [`obproxy`] is the process itself (command line, executable,
//! version, pidfd, `/proc`, the spawner thread); [`admin_sql`] is obproxy's
//! admin SQL as `root@proxysys`. [`state_file`] is what the agent remembers
//! on disk and [`adoption`] re-adopts what a previous agent left running.
//! [`signals`] catches what obproxy sends its parent and the agent's own
//! SIGTERM; [`sampling`] observes the processes on a thread of its own and
//! [`status_report`] joins those samples with the supervisor's status;
//! [`metrics`] is its Prometheus registry; [`preflight`] its `--check`;
//! [`container_init`] the init it leaves behind as PID 1.
pub(crate) mod admin_sql;
pub(crate) mod adoption;
pub mod config;
pub mod container_init;
pub mod daemon;
pub mod listeners;
pub(crate) mod metrics;
pub mod obproxy;
pub(crate) mod operation_log;
pub(crate) mod operations;
pub mod preflight;
pub(crate) mod process_table;
pub mod sampling;
pub(crate) mod service;
pub(crate) mod signals;
pub mod state_file;
pub(crate) mod status_report;
pub(crate) mod supervisor;
pub(crate) mod supervisor_protocol;

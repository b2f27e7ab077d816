//! The coordinator: cluster-wide Stop All, Start All and Restart All across
//! the agents, run as persistent tasks.
//!
//! [`config`] (clusters and agents), [`agents`] (clients with deadlines),
//! [`live_status`] (every agent's status as it pushes it, over
//! [`status_stream`]s),
//! [`rules`] (the console's preconditions), [`task`] (the task model),
//! [`store`] (SQLite persistence), [`runner`] (one task's batches),
//! [`task_manager`] (create, resume, cancel, retry), [`service`] (gRPC
//! translation), [`metrics`] (its Prometheus registry), [`preflight`]
//! (`--check`), [`daemon`] (wiring).
pub mod agents;
pub mod config;
pub mod daemon;
pub mod live_status;
pub mod metrics;
pub mod preflight;
pub mod rules;
pub mod runner;
pub mod service;
pub mod status_stream;
pub mod store;
pub mod task;
pub mod task_manager;

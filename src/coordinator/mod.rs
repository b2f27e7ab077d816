//! The coordinator: cluster-wide Stop All, Start All and Restart All across
//! the agents, run as persistent tasks.
//!
//! [`config`] (clusters and agents), [`agents`] (clients with deadlines),
//! [`live_status`] (every agent's status as it pushes it, over
//! [`status_stream`]s),
//! [`rules`] (the console's preconditions), [`task`] (the task model),
//! [`store`] (SQLite persistence), [`runner`] (one task's batches),
//! [`health_gate`] (an ODP done only when it shows it),
//! [`tasks`] (create, resume, cancel, retry), [`upgrade`] (Upgrade All's
//! checks and rollback), [`service`] (gRPC translation), [`daemon`]
//! (wiring).
pub mod agents;
pub mod config;
pub mod daemon;
pub mod health_gate;
pub mod live_status;
pub mod rules;
pub mod runner;
pub mod service;
pub mod status_stream;
pub mod store;
pub mod task;
pub mod tasks;
pub mod upgrade;

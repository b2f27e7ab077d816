//! The coordinator: cluster-wide Stop All, Start All and Restart All across
//! the agents, run as persistent tasks.
//!
//! [`config`] (clusters and agents), [`agent_pool`] (clients with deadlines),
//! [`load_balancer`] (each ODP's server taken out and put back),
//! [`live_status`] (every agent's status as it pushes it, over
//! [`status_stream`]s),
//! [`rules`] (the console's preconditions), [`task`] (the task model),
//! [`store`] (SQLite or a shared metadb), [`leadership`] (the metadb's
//! lease: which coordinator runs tasks), [`runner`] (one task's batches),
//! [`task_manager`] (create, resume, cancel, retry), [`upgrade_plan`]
//! (Upgrade All's checks before anything moves), [`service`] (gRPC translation), [`metrics`]
//! (its Prometheus registry), [`preflight`] (`--check`), [`web`] (the
//! console's pages over the same service), [`web_config`] (its `[web]`
//! section), [`daemon`] (wiring).
pub(crate) mod agent_pool;
pub mod config;
pub mod daemon;
pub(crate) mod leadership;
pub(crate) mod live_status;
pub(crate) mod load_balancer;
pub(crate) mod metrics;
pub mod preflight;
pub(crate) mod rules;
pub(crate) mod runner;
pub(crate) mod service;
pub(crate) mod status_stream;
pub(crate) mod store;
pub(crate) mod task;
pub(crate) mod task_manager;
pub(crate) mod upgrade_plan;
pub mod web;
pub mod web_config;

//! The agent: the daemon on each ODP host that holds obproxy's listeners,
//! runs obproxy on them and restarts it when asked over gRPC.
pub mod admin_sql;
pub mod adoption;
pub mod config;
pub mod container_init;
pub mod daemon;
pub mod listeners;
pub mod metrics;
pub mod obproxy;
pub mod operation_log;
pub mod operations;
pub mod preflight;
pub mod process_table;
pub mod sampling;
pub mod service;
pub mod signals;
pub mod state_file;
pub mod status_report;
pub mod supervisor;
pub mod supervisor_protocol;

//! The integration tests of one agent and its obproxy: operations, recovery and the audit
//! guarantee, faults, callers and security, and the stand-in's fidelity to each obproxy line.
//!
//! One test binary for many files (`Cargo.toml`, `autotests = false`): every binary links the
//! library, tokio and tonic again, and one per file was most of CI's build. Each file is a
//! module, so a test is named `FILE::NAME` (`cargo test --test agent hot_restart::`), and
//! libtest runs them in name order, two at a time on two cores: mostly beside a test of the
//! same file, as when each file was a binary of its own.
mod common;

mod admin_sql;
mod agent_lifecycle;
mod agent_recovery;
mod agent_responsiveness;
mod audit_guarantee;
mod config_check;
mod config_errors;
mod faults;
mod faults_disk;
mod faults_frozen;
mod grpc_bounds;
mod grpcurl;
mod hostile_files;
mod hot_restart;
mod hot_restart_load;
mod json_logs;
mod local_callers;
mod metrics;
mod native_restart;
mod pid1;
mod secrets;
mod security;
mod security_roles;
mod standin_admin;
mod standin_native;
mod standin_profiles;
mod systemd_notify;
mod take_over;
mod version_matrix;

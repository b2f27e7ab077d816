//! The integration tests of a fleet: the coordinator and its tasks, cluster status, the
//! console over HTTP, the load balancer, Upgrade All, the shared metadb, odpctl and the
//! benchmarks' smoke runs.
//!
//! One test binary for many files (`Cargo.toml`, `autotests = false`): every binary links the
//! library, tokio and tonic again, and one per file was most of CI's build. Each file is a
//! module, so a test is named `FILE::NAME` (`cargo test --test cluster coordinator::`), and
//! libtest runs them in name order, two at a time on two cores: mostly beside a test of the
//! same file, as when each file was a binary of its own.
mod common;

mod bench_smoke;
mod cluster_status_view;
mod console_http;
mod coordinator;
mod coordinator_guarantees;
mod coordinator_memory;
mod faults_netns;
mod hostile_status_streams;
mod load_balancer;
mod load_balancer_command;
mod metadb;
mod metadb_failover;
mod odpctl;
mod upgrade_all;
mod upgrade_balanced;
mod upgrade_lines;

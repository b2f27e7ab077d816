//! What both daemons share: configuration loading, the gRPC server, the
//! metrics endpoint, systemd, logs, panics and small utilities.
pub mod change_feed;
pub mod command_line;
pub mod config_file;
pub mod error_chain;
pub mod grpc_server;
pub mod metrics_endpoint;
pub mod obproxy_version;
pub mod panics;
pub mod preflight;
pub mod redact;
pub mod rpc_validate;
pub mod systemd;
pub mod telemetry;

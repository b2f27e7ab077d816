//! What both daemons share; it imports neither.
//!
//! [`config_file`] loads TOML with errors naming file, key and reason;
//! [`grpc_server`] is how both serve gRPC (TLS, the local socket, bounds on
//! connections, streams and calls); [`metrics_endpoint`] serves `/metrics`;
//! [`rpc_validate`] checks the request fields both services take alike;
//! [`obproxy_version`] parses and compares obproxy's versions;
//! [`change_feed`] lets every watcher see every change; [`systemd`] is what
//! systemd is told; [`telemetry`] sets up the logs; [`panics`] makes a panic
//! in any thread end the process; [`error_chain`] renders an error with its
//! causes on one line; [`redact`] masks secrets in obproxy's arguments;
//! [`preflight`] is the shared part of `--check`; [`command_line`] is the
//! programs' clap definitions, with their completions and man pages.
pub(crate) mod change_feed;
pub mod command_line;
pub mod config_file;
pub mod error_chain;
pub(crate) mod grpc_server;
pub(crate) mod metrics_endpoint;
pub(crate) mod obproxy_version;
pub mod panics;
pub mod preflight;
pub(crate) mod redact;
pub(crate) mod rpc_validate;
pub(crate) mod systemd;
pub mod telemetry;

//! Who may do what: TLS (with client certificates) on the daemons' gRPC
//! ports, callers' roles from their certificate or a bearer token, and the
//! audit log of every mutating call.
//!
//! [`config`] (the `[tls]`, `[auth]`, `[audit]` sections), [`tls`] (rustls
//! server and client settings), [`roles`] (identifying callers and checking
//! their role), [`audit`] (the append-only log), [`guard`] (what a service
//! handler calls: admit, then record), [`files`] (the daemons' private files
//! and the permission checks on what they trust).
pub mod audit;
pub mod callers;
pub mod config;
pub mod files;
pub mod guard;
pub mod role;
pub mod tls;

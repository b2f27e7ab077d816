//! Who may do what: TLS (with client certificates) on the daemons' gRPC
//! ports, callers' roles from their certificate or a bearer token, and the
//! audit log of every mutating call.
//!
//! [`config`] (the `[tls]`, `[auth]`, `[audit]` sections), [`tls`] (rustls
//! server and client settings), [`role`] (the two roles and the rules that
//! grant them), [`callers`] (identifying callers and checking their role),
//! [`audit`] (the append-only log), [`guard`] (what a service handler calls:
//! admit, then record; built from the config), [`files`] (the daemons'
//! private files and the permission checks on what they trust).
pub(crate) mod audit;
pub(crate) mod callers;
pub(crate) mod config;
pub mod files;
pub(crate) mod guard;
pub(crate) mod role;
pub mod tls;

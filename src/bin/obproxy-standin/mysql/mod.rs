//! The MySQL protocol as the stand-in speaks and watches it: packet framing (`codec`), the login (`auth`), and the passive tracker that follows a forwarded session to its transaction boundaries (`tracker`).

pub mod auth;
pub mod codec;
pub mod tracker;

pub use tracker::Session;

/// `SERVER_STATUS_IN_TRANS`: a transaction is open on the server.
pub const IN_TRANS: u16 = 0x0001;
/// `SERVER_MORE_RESULTS_EXISTS`: another result of the same command follows.
pub const MORE_RESULTS: u16 = 0x0008;
/// `SERVER_STATUS_CURSOR_EXISTS`: a prepared statement opened a cursor; rows come by COM_STMT_FETCH.
pub const CURSOR_EXISTS: u16 = 0x0040;

pub const CLIENT_COMPRESS: u32 = 1 << 5;
pub const CLIENT_PROTOCOL_41: u32 = 1 << 9;
pub const CLIENT_SSL: u32 = 1 << 11;
pub const CLIENT_DEPRECATE_EOF: u32 = 1 << 24;
/// MySQL 8's optional metadata puts a flag byte where a result would otherwise start.
pub const CLIENT_OPTIONAL_RESULTSET_METADATA: u32 = 1 << 25;

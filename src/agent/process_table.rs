//! The processes the supervisor holds, as data: each one's record and role,
//! and the state of the proxy they make up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyState {
    Running,
    Stopped,
    Starting,
    Stopping,
    Restarting,
    Upgrading,
    Unavailable,
}

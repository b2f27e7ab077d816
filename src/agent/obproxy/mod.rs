//! The obproxy process as the agent sees it: how it is launched, how its
//! version and digest are read, how it is watched and signalled, what `/proc` says
//! about it, and how one the agent did not start is found.
pub mod digest;
pub mod discovery;
pub mod executable;
pub mod launch;
pub mod pidfd;
pub mod posix_spawn;
pub mod procfs;
pub mod sock_diag;
pub mod spawner;
pub mod version;

//! The obproxy process as the agent sees it: how it is launched, how its
//! version is read, how it is watched and signalled, and what `/proc` says
//! about it.
pub mod executable;
pub mod launch;
pub mod pidfd;
pub mod procfs;
pub mod sock_diag;
pub mod spawner;
pub mod version;

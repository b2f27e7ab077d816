//! What an Upgrade All adds to the task model: the binary it moves every
//! ODP onto (with its canary and, once it rolls back, why), and each ODP's
//! side of it (what it ran before, its rollback target), stored with the
//! task so a restarted coordinator resumes the upgrade or its rollback.
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What an Upgrade All moves the ODPs onto, as stored with its task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upgrade {
    /// As asked: every agent resolves it (home-relative or absolute).
    pub binary: String,
    pub sha256: String,
    /// What every agent's `-V` of the binary reported.
    pub version: String,
    pub canary_size: u32,
    pub canary_wait: Duration,
    pub allow_downgrade: bool,
    /// Why the task rolls back, written down before the first rollback
    /// call: a coordinator restarted after that resumes the rollback.
    pub rollback: Option<String>,
}

/// One ODP's side of an upgrade, recorded before anything moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OdpUpgrade {
    /// The binary it served from before the task (its rollback target), as
    /// its agent reported it.
    pub previous_binary: String,
    /// The same file as its agent resolves it: what a restart onto it runs,
    /// and so the path its status shows after the rollback.
    pub rollback_binary: String,
    /// It is the agent's configured binary: a restart onto it names none.
    pub previous_configured: bool,
    pub previous_version: String,
    pub previous_sha256: String,
    /// The upgrade's binary as this agent resolved it.
    pub target_binary: String,
    /// The version the ODP reported as last seen.
    pub version: String,
    /// The agent's operation that moved it back.
    pub rollback_operation_id: Option<String>,
    /// Its rollback failed: a person must look at it.
    pub rollback_failed: bool,
    /// The rollback dealt with it (back, never moved, or failed).
    pub rollback_ended: bool,
}

/// What an Upgrade All asks, beyond the rollout (validated by the service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRequest {
    pub binary: String,
    pub sha256: String,
    pub canary_size: u32,
    pub canary_wait: Duration,
    pub allow_downgrade: bool,
}

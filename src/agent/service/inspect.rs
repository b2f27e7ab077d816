//! InspectBinary: what a binary a hot upgrade could move onto is (its path
//! as the agent resolves it, its SHA-256, its `-V` version), so a caller can
//! confirm every host holds the same file before anything moves. The file is
//! resolved as a hot upgrade's `binary` is (inside `upgrade_dir`, no
//! symlink, not writable by others), or is the configured binary.
use tonic::Status;

use super::requests::{self, normalized};
use crate::{
    agent::{
        config::ObproxyConfig,
        obproxy::{digest, executable::Executable, version},
    },
    common::error_chain::describe,
    proto::agent as pb,
};

/// The file `raw` names, opened, and whether it is the configured binary.
/// Empty names the configured binary. Errors are INVALID_ARGUMENT naming
/// `binary`.
pub fn resolve(config: &ObproxyConfig, raw: &str) -> Result<(Executable, bool), Status> {
    let configured = || {
        Executable::open(&config.binary)
            .map(|exe| (exe, true))
            .map_err(|e| Status::invalid_argument(format!("binary: {}", describe(&e))))
    };
    // The configured binary need not lie inside upgrade_dir: named by its
    // own path it is what a restart without `binary` runs.
    if raw.is_empty() || normalized(&config.home.join(raw)) == normalized(&config.binary) {
        return configured();
    }
    match requests::binary(config, raw)? {
        Some(exe) => Ok((exe, false)),
        None => configured(),
    }
}

/// Its digest and version (each read once per file and kept).
pub async fn inspect(
    config: &ObproxyConfig,
    exe: Executable,
    configured: bool,
) -> Result<pb::BinaryInspection, Status> {
    let refused =
        |e: &dyn std::error::Error| Status::failed_precondition(format!("binary: {}", describe(e)));
    let sha256 = digest::of(&exe).await.map_err(|e| refused(&e))?;
    let version = version::of(&exe, &config.home)
        .await
        .map_err(|e| refused(&e))?;
    Ok(pb::BinaryInspection {
        binary: exe.path().display().to_string(),
        sha256,
        version,
        configured,
    })
}

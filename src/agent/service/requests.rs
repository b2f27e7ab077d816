//! What a request to the agent may carry, checked field by field before
//! anything is done; every refusal is INVALID_ARGUMENT and starts with the
//! field's name. Public so that the fuzz targets run exactly what the
//! service runs.
use std::{
    path::{Component, Path, PathBuf},
    time::Duration,
};

use tonic::Status;

use crate::{
    agent::{
        config::ObproxyConfig,
        obproxy::executable::Executable,
        operation_log::{self, Kind},
    },
    common::{
        error_chain::describe,
        rpc_validate::{MAX_EXIT_TIMEOUT, duration, request_id},
    },
    proto::agent as pb,
};

pub const MAX_OPERATION_ID: usize = 64;
/// Linux's PATH_MAX: nothing longer names a file.
const MAX_PATH: usize = 4096;

pub fn start(r: &pb::StartRequest) -> Result<operation_log::Request, Status> {
    Ok(operation_log::Request {
        kind: Kind::Start,
        request_id: request_id(&r.request_id)?,
        exit_timeout: None,
        binary: None,
    })
}

pub fn stop(r: &pb::StopRequest) -> Result<operation_log::Request, Status> {
    Ok(operation_log::Request {
        kind: Kind::Stop,
        request_id: request_id(&r.request_id)?,
        exit_timeout: None,
        binary: None,
    })
}

pub fn restart(
    r: &pb::RestartRequest,
    config: &ObproxyConfig,
) -> Result<operation_log::Request, Status> {
    let kind = match pb::RestartMode::try_from(r.mode) {
        Ok(pb::RestartMode::Hot) => Kind::RestartHot,
        Ok(pb::RestartMode::Force) => Kind::RestartForce,
        _ => {
            return Err(Status::invalid_argument(format!(
                "mode: {} is not RESTART_MODE_HOT (1) or RESTART_MODE_FORCE (2)",
                r.mode
            )));
        }
    };
    let request_id = request_id(&r.request_id)?;
    if kind == Kind::RestartForce && (r.exit_timeout.is_some() || !r.binary.is_empty()) {
        return Err(Status::invalid_argument(
            "exit_timeout, binary: only a RESTART_MODE_HOT restart drains or changes binary",
        ));
    }
    let exit_timeout = r
        .exit_timeout
        .map(|d| duration("exit_timeout", d, MAX_EXIT_TIMEOUT))
        .transpose()?;
    let binary = if r.binary.is_empty() {
        None
    } else {
        binary(config, &r.binary)?
    };
    Ok(operation_log::Request {
        kind,
        request_id,
        exit_timeout,
        binary,
    })
}

/// An operation id as the agent makes them (`op-` and a UUID).
pub fn operation_id(raw: &str) -> Result<String, Status> {
    if raw.is_empty() {
        return Err(Status::invalid_argument("id: required"));
    }
    if raw.len() > MAX_OPERATION_ID || !raw.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(Status::invalid_argument(format!(
            "id: {:?} is not an operation id",
            shown(raw)
        )));
    }
    Ok(raw.to_string())
}

/// WatchStatus's heartbeat when the request names none.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);
const MIN_HEARTBEAT: Duration = Duration::from_secs(1);
const MAX_HEARTBEAT: Duration = Duration::from_secs(3600);

/// WatchStatus's heartbeat: 1 s to 1 h (a shorter one would make the agent
/// sample its processes for a watcher many times a second).
pub fn heartbeat(r: &pb::WatchStatusRequest) -> Result<Duration, Status> {
    let Some(d) = r.heartbeat else {
        return Ok(DEFAULT_HEARTBEAT);
    };
    let d = duration("heartbeat", d, MAX_HEARTBEAT)?;
    if d < MIN_HEARTBEAT {
        return Err(Status::invalid_argument(format!(
            "heartbeat: {} is shorter than the {} minimum",
            humantime::format_duration(d),
            humantime::format_duration(MIN_HEARTBEAT)
        )));
    }
    Ok(d)
}

/// The binary of a hot upgrade: relative to home or absolute, naming a file
/// inside the configured upgrade directory, opened there component by
/// component with no symlink followed, and only if it is an executable file
/// that root or the agent's user owns and nobody else may write. Anything
/// else would let a caller (or whoever can write into the directory) run
/// any program on the host as the agent's user. None: it is the configured
/// binary.
///
/// The file opened here is the one whose version is read and that is
/// executed, so nothing swapped on disk afterwards changes what runs.
pub fn binary(config: &ObproxyConfig, raw: &str) -> Result<Option<Executable>, Status> {
    if raw.len() > MAX_PATH || raw.contains('\0') {
        return Err(Status::invalid_argument(format!(
            "binary: not a usable path ({} bytes{})",
            raw.len(),
            if raw.contains('\0') { ", with NUL" } else { "" }
        )));
    }
    let requested = config.home.join(raw);
    let outside = |resolved: &Path| {
        Status::invalid_argument(format!(
            "binary: {} resolves to {}, outside the upgrade directory {} ([obproxy] upgrade_dir)",
            shown(raw),
            shown(&resolved.display().to_string()),
            config.upgrade_dir.display()
        ))
    };
    // First by the names alone, so a caller cannot probe which files exist
    // elsewhere on the host; then opened for real beneath the directory.
    let lexical = normalized(&requested);
    let Ok(relative) = lexical.strip_prefix(normalized(&config.upgrade_dir)) else {
        return Err(outside(&lexical));
    };
    if let Err(e) = std::fs::metadata(&config.upgrade_dir) {
        return Err(Status::failed_precondition(format!(
            "binary: the upgrade directory {} is not usable: {e}",
            config.upgrade_dir.display()
        )));
    }
    let exe = Executable::beneath(&config.upgrade_dir, relative)
        .map_err(|e| Status::invalid_argument(format!("binary: {}", describe(&e))))?;
    Ok((!exe.same_file_as(&config.binary)).then_some(exe))
}

/// `path` with `.` and `..` resolved by name (no filesystem access).
pub(super) fn normalized(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// At most 256 characters of a caller's text, for an error message.
fn shown(raw: &str) -> String {
    match raw.char_indices().nth(256) {
        Some((end, _)) => format!("{}...", &raw[..end]),
        None => raw.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_negative_exit_timeout_names_the_field() {
        let e = duration(
            "exit_timeout",
            prost_types::Duration {
                seconds: -1,
                nanos: 0,
            },
            MAX_EXIT_TIMEOUT,
        )
        .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().starts_with("exit_timeout:"));
    }

    #[test]
    fn an_absurd_exit_timeout_is_refused() {
        let e = duration(
            "exit_timeout",
            prost_types::Duration {
                seconds: 10 * 86400,
                nanos: 0,
            },
            MAX_EXIT_TIMEOUT,
        )
        .unwrap_err();
        assert!(e.message().contains("limit"));
    }

    #[test]
    fn zero_exit_timeout_means_cut_now() {
        assert_eq!(
            duration("x", prost_types::Duration::default(), MAX_EXIT_TIMEOUT).unwrap(),
            Duration::ZERO
        );
    }

    #[test]
    fn request_ids_are_short_and_plain() {
        assert!(request_id("a b").is_err());
        assert!(request_id("a\"b").is_err());
        assert!(request_id("ünï").is_err());
        assert_eq!(request_id("").unwrap(), None);
        assert!(request_id(&"x".repeat(200)).is_err());
        for good in [
            "deploy-42",
            "task-0b8e7c1e-3f0e-4d5c-9d4e-2b1f0c9a8e7d.1.0",
            "a_b:c",
        ] {
            assert_eq!(request_id(good).unwrap().as_deref(), Some(good));
        }
    }

    fn obproxy(home: &Path) -> ObproxyConfig {
        ObproxyConfig {
            home: home.to_path_buf(),
            binary: home.join("bin/obproxy"),
            args: vec![],
            optstr: None,
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            rpc_listen: None,
            rpc_service: true,
            hot_upgrade_exit_timeout: Duration::from_secs(1),
            start_timeout: Duration::from_secs(1),
            stop_timeout: Duration::from_secs(1),
            upgrade_dir: home.join("bin"),
            admin: Default::default(),
        }
    }

    fn executable(path: &Path) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn a_binary_must_resolve_to_an_executable_inside_the_upgrade_dir() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("odp");
        std::fs::create_dir_all(home.join("bin")).unwrap();
        std::fs::create_dir_all(dir.path().join("elsewhere")).unwrap();
        executable(&home.join("bin/obproxy"));
        executable(&home.join("bin/obproxy-4.4"));
        executable(&home.join("obproxy-in-home"));
        executable(&dir.path().join("elsewhere/tool"));
        std::fs::write(home.join("bin/notes"), "x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere/tool"), home.join("bin/link"))
            .unwrap();
        std::os::unix::fs::symlink(home.join("bin/obproxy-4.4"), home.join("bin/current")).unwrap();
        let config = obproxy(&home);

        let opened = |raw: &str| {
            binary(&config, raw)
                .unwrap()
                .map(|e| e.path().to_path_buf())
        };
        assert_eq!(
            opened("bin/obproxy-4.4"),
            Some(home.join("bin/obproxy-4.4"))
        );
        let absolute = home.join("bin/obproxy-4.4").display().to_string();
        assert_eq!(opened(&absolute), Some(home.join("bin/obproxy-4.4")));
        // The configured binary itself is no upgrade.
        assert_eq!(opened("bin/obproxy"), None);

        for bad in [
            "bin/link",
            // No symlink is followed, even one that stays inside.
            "bin/current",
            "bin/../obproxy-in-home",
            "../elsewhere/tool",
            "/bin/sh",
            "bin",
            "bin/notes",
            "bin/missing",
            "bin/\0x",
        ] {
            let e = binary(&config, bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}: {e:?}");
            assert!(e.message().starts_with("binary: "), "{bad:?}: {e:?}");
        }
    }
}

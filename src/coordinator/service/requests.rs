//! What a request to the coordinator may carry, checked field by field;
//! every refusal is INVALID_ARGUMENT and starts with the field's name.
//! Public so that the fuzz targets run exactly what the service runs.
use std::time::Duration;

use tonic::Status;

use crate::{
    common::rpc_validate::{MAX_EXIT_TIMEOUT, duration, request_id},
    coordinator::{
        config::valid_name,
        task::{Kind, Mode, Rollout, upgrade::UpgradeRequest},
        task_manager::NewTask,
    },
    proto::{agent as apb, coordinator as pb},
};

pub const MAX_PAUSE: Duration = Duration::from_secs(24 * 3600);
/// More ODPs than any cluster has; a bigger batch is a mistake, not a plan.
pub const MAX_BATCH_SIZE: u32 = 100_000;
/// Tasks one ListTasks answer may carry (0 asks for [`DEFAULT_LIST_LIMIT`]).
pub const MAX_LIST_LIMIT: u32 = 1000;
pub const DEFAULT_LIST_LIMIT: u32 = 50;
pub const MAX_TASK_ID: usize = 64;

pub fn stop_all(r: &pb::StopAllRequest) -> Result<NewTask, Status> {
    Ok(NewTask {
        cluster: cluster(&r.cluster)?,
        kind: Kind::StopAll,
        mode: None,
        rollout: rollout(r.batch_size, r.batch_percent, r.max_failures, r.pause)?,
        exit_timeout: None,
        request_id: request_id(&r.request_id)?,
        upgrade: None,
    })
}

pub fn start_all(r: &pb::StartAllRequest) -> Result<NewTask, Status> {
    Ok(NewTask {
        cluster: cluster(&r.cluster)?,
        kind: Kind::StartAll,
        mode: None,
        rollout: rollout(r.batch_size, r.batch_percent, r.max_failures, r.pause)?,
        exit_timeout: None,
        request_id: request_id(&r.request_id)?,
        upgrade: None,
    })
}

pub fn restart_all(r: &pb::RestartAllRequest) -> Result<NewTask, Status> {
    let mode = match apb::RestartMode::try_from(r.mode) {
        Ok(apb::RestartMode::Hot) => Mode::Hot,
        Ok(apb::RestartMode::Force) => Mode::Force,
        _ => {
            return Err(Status::invalid_argument(format!(
                "mode: {} is not RESTART_MODE_HOT (1) or RESTART_MODE_FORCE (2)",
                r.mode
            )));
        }
    };
    let exit_timeout = r
        .exit_timeout
        .map(|d| duration("exit_timeout", d, MAX_EXIT_TIMEOUT))
        .transpose()?;
    if mode == Mode::Force && exit_timeout.is_some() {
        return Err(Status::invalid_argument(
            "exit_timeout: only a RESTART_MODE_HOT restart drains",
        ));
    }
    Ok(NewTask {
        cluster: cluster(&r.cluster)?,
        kind: Kind::RestartAll,
        mode: Some(mode),
        rollout: rollout(r.batch_size, r.batch_percent, r.max_failures, r.pause)?,
        exit_timeout,
        request_id: request_id(&r.request_id)?,
        upgrade: None,
    })
}

/// Longest a canary may be held before the next batch.
pub const MAX_CANARY_WAIT: Duration = Duration::from_secs(7 * 24 * 3600);
/// A path no longer than Linux's PATH_MAX.
const MAX_BINARY: usize = 4096;

pub fn upgrade_all(r: &pb::UpgradeAllRequest) -> Result<NewTask, Status> {
    let cluster = cluster(&r.cluster)?;
    if r.binary.is_empty() {
        return Err(Status::invalid_argument(
            "binary: required (the new obproxy's path on every host, inside upgrade_dir)",
        ));
    }
    if r.binary.len() > MAX_BINARY || r.binary.contains('\0') {
        return Err(Status::invalid_argument(format!(
            "binary: not a usable path ({} bytes)",
            r.binary.len()
        )));
    }
    let sha = &r.binary_sha256;
    if sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(Status::invalid_argument(format!(
            "binary_sha256: {:?} is not a SHA-256 (64 hex digits, as sha256sum prints it)",
            shown(sha)
        )));
    }
    if r.canary_size > MAX_BATCH_SIZE {
        return Err(Status::invalid_argument(format!(
            "canary_size: {} is over {MAX_BATCH_SIZE}",
            r.canary_size
        )));
    }
    let canary_wait = r
        .canary_wait
        .map(|d| duration("canary_wait", d, MAX_CANARY_WAIT))
        .transpose()?
        .unwrap_or_default();
    let exit_timeout = r
        .exit_timeout
        .map(|d| duration("exit_timeout", d, MAX_EXIT_TIMEOUT))
        .transpose()?;
    Ok(NewTask {
        cluster,
        kind: Kind::UpgradeAll,
        mode: None,
        rollout: rollout(r.batch_size, r.batch_percent, r.max_failures, r.pause)?,
        exit_timeout,
        request_id: request_id(&r.request_id)?,
        upgrade: Some(UpgradeRequest {
            binary: r.binary.clone(),
            sha256: sha.to_ascii_lowercase(),
            canary_size: r.canary_size.max(1),
            canary_wait,
            allow_downgrade: r.allow_downgrade,
        }),
    })
}

/// ListTasks: the cluster filter (empty: every cluster) and the limit.
pub fn list_tasks(r: &pb::ListTasksRequest) -> Result<(Option<String>, u32), Status> {
    let cluster = if r.cluster.is_empty() {
        None
    } else {
        Some(cluster(&r.cluster)?)
    };
    let limit = match r.limit {
        0 => DEFAULT_LIST_LIMIT,
        n if n > MAX_LIST_LIMIT => {
            return Err(Status::invalid_argument(format!(
                "limit: {n} is over {MAX_LIST_LIMIT}"
            )));
        }
        n => n,
    };
    Ok((cluster, limit))
}

pub fn cluster(raw: &str) -> Result<String, Status> {
    if !valid_name(raw) {
        return Err(Status::invalid_argument(format!(
            "cluster: {:?} is not a cluster name (1 to 64 of A-Z a-z 0-9 - _ .)",
            shown(raw)
        )));
    }
    Ok(raw.to_string())
}

/// A task id as the coordinator makes them (`task-` and a UUID).
pub fn task_id(raw: &str) -> Result<String, Status> {
    if raw.is_empty()
        || raw.len() > MAX_TASK_ID
        || !raw.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(Status::invalid_argument(format!(
            "id: {:?} is not a task id",
            shown(raw)
        )));
    }
    Ok(raw.to_string())
}

/// Batching as asked: `max_failures` is any count (a huge one means no
/// budget), the rest is bounded.
pub fn rollout(
    batch_size: u32,
    batch_percent: u32,
    max_failures: u32,
    pause: Option<prost_types::Duration>,
) -> Result<Rollout, Status> {
    if batch_size > 0 && batch_percent > 0 {
        return Err(Status::invalid_argument(
            "batch_size, batch_percent: give one or the other",
        ));
    }
    if batch_percent > 100 {
        return Err(Status::invalid_argument(format!(
            "batch_percent: {batch_percent} is over 100"
        )));
    }
    if batch_size > MAX_BATCH_SIZE {
        return Err(Status::invalid_argument(format!(
            "batch_size: {batch_size} is over {MAX_BATCH_SIZE}"
        )));
    }
    Ok(Rollout {
        batch_size: (batch_size > 0).then_some(batch_size),
        batch_percent: (batch_percent > 0).then_some(batch_percent),
        max_failures,
        pause: pause
            .map(|d| duration("pause", d, MAX_PAUSE))
            .transpose()?
            .unwrap_or_default(),
    })
}

/// At most 64 characters of a caller's text, for an error message.
fn shown(raw: &str) -> String {
    match raw.char_indices().nth(64) {
        Some((end, _)) => format!("{}...", &raw[..end]),
        None => raw.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_tasks_bounds_its_limit_and_checks_the_cluster() {
        let r = |cluster: &str, limit| pb::ListTasksRequest {
            cluster: cluster.into(),
            limit,
        };
        assert_eq!(list_tasks(&r("", 0)).unwrap(), (None, DEFAULT_LIST_LIMIT));
        assert_eq!(list_tasks(&r("prod", 7)).unwrap(), (Some("prod".into()), 7));
        let e = list_tasks(&r("", u32::MAX)).unwrap_err();
        assert!(e.message().starts_with("limit: "), "{e:?}");
        let e = list_tasks(&r("../x", 1)).unwrap_err();
        assert!(e.message().starts_with("cluster: "), "{e:?}");
    }

    #[test]
    fn a_huge_cluster_name_is_refused_without_echoing_it_whole() {
        let e = cluster(&"x".repeat(1 << 20)).unwrap_err();
        assert!(e.message().len() < 200, "{} bytes", e.message().len());
    }

    #[test]
    fn batch_fields_are_checked() {
        assert!(rollout(1, 1, 0, None).is_err());
        assert!(rollout(0, 101, 0, None).is_err());
        assert!(rollout(u32::MAX, 0, 0, None).is_err());
        // Any failure budget is meaningful: u32::MAX means "never stop".
        assert!(rollout(0, 0, u32::MAX, None).is_ok());
        let pause = prost_types::Duration {
            seconds: i64::MAX,
            nanos: 0,
        };
        let e = rollout(0, 0, 0, Some(pause)).unwrap_err();
        assert!(e.message().starts_with("pause: "), "{e:?}");
    }

    #[test]
    fn upgrade_all_checks_binary_sha_and_canary() {
        let good = pb::UpgradeAllRequest {
            cluster: "prod".into(),
            binary: "bin/obproxy-4.3.1".into(),
            binary_sha256: "AB".repeat(32),
            ..Default::default()
        };
        let new = upgrade_all(&good).unwrap();
        let up = new.upgrade.unwrap();
        assert_eq!(up.canary_size, 1, "one ODP is the canary by default");
        assert_eq!(up.sha256, "ab".repeat(32));
        let field = |r: pb::UpgradeAllRequest| upgrade_all(&r).unwrap_err().message().to_string();
        let e = field(pb::UpgradeAllRequest {
            binary: String::new(),
            ..good.clone()
        });
        assert!(e.starts_with("binary: "), "{e}");
        let e = field(pb::UpgradeAllRequest {
            binary_sha256: "abc".into(),
            ..good.clone()
        });
        assert!(e.starts_with("binary_sha256: "), "{e}");
        let e = field(pb::UpgradeAllRequest {
            canary_wait: Some(prost_types::Duration {
                seconds: -1,
                nanos: 0,
            }),
            ..good.clone()
        });
        assert!(e.starts_with("canary_wait: "), "{e}");
    }

    #[test]
    fn restart_all_checks_mode_and_drain() {
        let mut r = pb::RestartAllRequest {
            cluster: "prod".into(),
            mode: 9,
            ..Default::default()
        };
        assert!(restart_all(&r).unwrap_err().message().starts_with("mode: "));
        r.mode = apb::RestartMode::Force as i32;
        r.exit_timeout = Some(prost_types::Duration::default());
        assert!(
            restart_all(&r)
                .unwrap_err()
                .message()
                .starts_with("exit_timeout: ")
        );
    }
}

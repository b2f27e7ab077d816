//! What hostile input must never do to the daemons: panic, or be refused
//! without naming the key or field at fault. One definition of those
//! properties, run by the cargo-fuzz targets (`fuzz/`) and by the stable
//! fuzz test (`tests/fuzz_stable.rs`) on whatever bytes they make up; a
//! broken property is a panic, which both report with the input.
use std::{os::unix::fs::PermissionsExt, path::Path};

use prost::Message;
use sha2::{Digest, Sha256};
use tonic::{Code, Request, Status, metadata::MetadataValue};

use crate::{
    agent::{
        config::{AgentConfig, ObproxyConfig},
        obproxy::executable::Executable,
        service::{inspect, requests as agent},
    },
    coordinator::{config::CoordinatorConfig, service::requests as coordinator},
    proto::{agent as apb, coordinator as cpb},
    security::{
        callers::Policy,
        config::AuthConfig,
        role::{Role, TokenRule},
    },
};

/// How one input ended, for the fuzzers' statistics.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// Not even the wire format (bytes that are no protobuf message).
    Undecodable,
    Accepted,
    /// Refused, naming this key or field.
    Refused(String),
}

/// Fields a request validation may name; a refusal must start with one.
const AGENT_FIELDS: &[&str] = &["request_id", "mode", "exit_timeout", "binary", "id"];
const COORDINATOR_FIELDS: &[&str] = &[
    "cluster",
    "request_id",
    "mode",
    "exit_timeout",
    "batch_size",
    "batch_percent",
    "pause",
    "limit",
    "id",
    "binary",
    "binary_sha256",
    "canary_size",
    "canary_wait",
];

/// Parses `text` as both daemons' configuration files: either typed values,
/// or an error naming the file, a key and a reason.
pub fn config_text(text: &str) -> Vec<Outcome> {
    let path = Path::new("/fuzz/conf/daemon.toml");
    let agent = AgentConfig::parse(path, text).map(|_| ());
    let coordinator = CoordinatorConfig::parse(path, text).map(|_| ());
    [agent, coordinator]
        .into_iter()
        .map(|result| match result {
            Ok(()) => Outcome::Accepted,
            Err(e) => {
                assert!(!e.key.is_empty(), "no key in {e:?} for {text:?}");
                assert!(!e.reason.is_empty(), "no reason in {e:?} for {text:?}");
                assert!(
                    e.to_string().starts_with("/fuzz/conf/daemon.toml: "),
                    "the file is not named: {e}"
                );
                Outcome::Refused(e.key)
            }
        })
        .collect()
}

/// The first byte picks a request message of the agent, the rest is decoded
/// as it with prost and run through the validation the service runs.
pub fn agent_request(data: &[u8], obproxy: &ObproxyConfig) -> Outcome {
    let Some((&which, bytes)) = data.split_first() else {
        return Outcome::Undecodable;
    };
    let result = match which % 6 {
        0 => decode::<apb::StartRequest>(bytes).map(|r| agent::start(&r).map(|_| ())),
        1 => decode::<apb::StopRequest>(bytes).map(|r| agent::stop(&r).map(|_| ())),
        2 => decode::<apb::RestartRequest>(bytes).map(|r| {
            agent::restart(&r, obproxy).map(|accepted| {
                if let Some(binary) = &accepted.binary {
                    assert_runnable_upgrade(binary, obproxy);
                }
            })
        }),
        3 => decode::<apb::GetOperationRequest>(bytes)
            .map(|r| agent::operation_id(&r.id).map(|_| ())),
        4 => decode::<apb::InspectBinaryRequest>(bytes).map(|r| {
            inspect::resolve(obproxy, &r.binary).map(|(exe, configured)| {
                if !configured {
                    assert_runnable_upgrade(&exe, obproxy);
                }
            })
        }),
        _ => decode::<apb::WatchOperationRequest>(bytes)
            .map(|r| agent::operation_id(&r.id).map(|_| ())),
    };
    judge(result, AGENT_FIELDS)
}

/// As [`agent_request`], for the coordinator's requests.
pub fn coordinator_request(data: &[u8]) -> Outcome {
    let Some((&which, bytes)) = data.split_first() else {
        return Outcome::Undecodable;
    };
    let result = match which % 10 {
        0 => decode::<cpb::StopAllRequest>(bytes).map(|r| coordinator::stop_all(&r).map(|_| ())),
        1 => decode::<cpb::StartAllRequest>(bytes).map(|r| coordinator::start_all(&r).map(|_| ())),
        2 => decode::<cpb::RestartAllRequest>(bytes)
            .map(|r| coordinator::restart_all(&r).map(|_| ())),
        3 => {
            decode::<cpb::ListTasksRequest>(bytes).map(|r| coordinator::list_tasks(&r).map(|_| ()))
        }
        4 => decode::<cpb::GetClusterStatusRequest>(bytes)
            .map(|r| coordinator::cluster(&r.cluster).map(|_| ())),
        5 => decode::<cpb::GetTaskRequest>(bytes).map(|r| coordinator::task_id(&r.id).map(|_| ())),
        6 => {
            decode::<cpb::WatchTaskRequest>(bytes).map(|r| coordinator::task_id(&r.id).map(|_| ()))
        }
        7 => {
            decode::<cpb::CancelTaskRequest>(bytes).map(|r| coordinator::task_id(&r.id).map(|_| ()))
        }
        8 => decode::<cpb::UpgradeAllRequest>(bytes)
            .map(|r| coordinator::upgrade_all(&r).map(|_| ())),
        _ => {
            decode::<cpb::RetryTaskRequest>(bytes).map(|r| coordinator::task_id(&r.id).map(|_| ()))
        }
    };
    judge(result, COORDINATOR_FIELDS)
}

/// The one token [`authorization`] knows.
pub const TOKEN: &str = "act-now";

/// Any bytes as the `authorization` header: the known token's role, or
/// UNAUTHENTICATED; never a panic, never a role for anything else.
pub fn authorization(data: &[u8]) -> Outcome {
    let policy = Policy::new(
        &AuthConfig {
            tokens: vec![TokenRule {
                name: "oncall".into(),
                sha256: hex::encode(Sha256::digest(TOKEN.as_bytes())),
                role: Role::Operator,
            }],
            ..Default::default()
        },
        false,
    );
    let Ok(value) = MetadataValue::try_from(data) else {
        // Not a header value at all: HTTP/2 would refuse it before us.
        return Outcome::Undecodable;
    };
    let mut request = Request::new(());
    request.metadata_mut().insert("authorization", value);
    match policy.identify(&request) {
        Ok(caller) => {
            let token = std::str::from_utf8(data)
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            assert_eq!(token, Some(TOKEN), "{data:?} was taken for {caller:?}");
            assert_eq!(caller.identity, "token:oncall");
            Outcome::Accepted
        }
        Err(e) => {
            assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
            Outcome::Refused("authorization".into())
        }
    }
}

/// An accepted hot-upgrade `binary` is what will run: the file it holds open is an
/// executable file inside the upgrade directory (every symlink and `..` resolved), and the
/// path it names for logs lies there too.
fn assert_runnable_upgrade(binary: &Executable, obproxy: &ObproxyConfig) {
    let dir = std::fs::canonicalize(&obproxy.upgrade_dir).expect("the fixture's upgrade_dir");
    let (opened, _) = binary.program();
    let file = std::fs::read_link(&opened).expect("the opened file's path");
    assert!(
        file.starts_with(&dir),
        "accepted {:?}, which opened {file:?}, outside the upgrade directory {dir:?}",
        binary.path()
    );
    assert!(
        binary.path().starts_with(&obproxy.upgrade_dir),
        "accepted {:?}, named outside the upgrade directory",
        binary.path()
    );
    let meta = std::fs::metadata(&opened).expect("an accepted binary exists");
    assert!(
        meta.is_file() && meta.permissions().mode() & 0o111 != 0,
        "accepted {file:?}, which is not an executable file"
    );
}

fn decode<M: Message + Default>(bytes: &[u8]) -> Option<M> {
    M::decode(bytes).ok()
}

fn judge(result: Option<Result<(), Status>>, fields: &[&str]) -> Outcome {
    match result {
        None => Outcome::Undecodable,
        Some(Ok(())) => Outcome::Accepted,
        Some(Err(e)) => {
            assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
            let named = e.message().split(':').next().unwrap_or_default();
            let known = named.split(", ").all(|field| fields.contains(&field));
            assert!(known, "the refusal names no field: {e:?}");
            Outcome::Refused(named.to_string())
        }
    }
}

/// An obproxy home under `dir` for [`agent_request`]: an executable
/// `bin/obproxy`, and the traps a hostile `binary` would reach for (a
/// symlink out of `bin/`, an executable outside it, a file that is not one).
pub fn fixture(dir: &Path) -> std::io::Result<ObproxyConfig> {
    let home = dir.join("odp");
    std::fs::create_dir_all(home.join("bin"))?;
    std::fs::create_dir_all(dir.join("outside"))?;
    let executable = |path: &Path| -> std::io::Result<()> {
        std::fs::write(path, "#!/bin/sh\nexit 0\n")?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
    };
    executable(&home.join("bin/obproxy"))?;
    executable(&home.join("bin/obproxy-new"))?;
    executable(&dir.join("outside/tool"))?;
    std::fs::write(home.join("bin/notes"), "not a program")?;
    let link = home.join("bin/escape");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink(dir.join("outside/tool"), link)?;
    }
    Ok(ObproxyConfig {
        binary: home.join("bin/obproxy"),
        upgrade_dir: home.join("bin"),
        home,
        args: vec![],
        optstr: None,
        listen: vec![std::net::SocketAddr::from(([127, 0, 0, 1], 2883))],
        rpc_listen: None,
        rpc_service: true,
        hot_upgrade_exit_timeout: std::time::Duration::from_secs(30),
        start_timeout: std::time::Duration::from_secs(60),
        stop_timeout: std::time::Duration::from_secs(10),
        admin: Default::default(),
    })
}

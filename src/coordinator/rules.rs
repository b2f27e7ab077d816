//! The console's rules for cluster operations, checked against every ODP's
//! status before anything is touched.
use crate::{common::obproxy_version, proto::agent as pb};

use super::task::{Kind, Mode};

/// HOT restart needs obproxy 3.2.1 or later (inherited-listener hand-over).
pub const MIN_HOT_VERSION: &str = "3.2.1";

/// One ODP as the rules see it.
pub struct Odp<'a> {
    pub agent: &'a str,
    /// None when the agent could not be asked.
    pub status: Option<&'a pb::ProxyStatus>,
}

fn state_name(s: pb::ProxyState) -> &'static str {
    s.as_str_name().trim_start_matches("PROXY_STATE_")
}

/// Why the operation may not run, or Ok.
pub fn check(kind: Kind, mode: Option<Mode>, odps: &[Odp<'_>]) -> Result<(), String> {
    match (kind, mode) {
        (Kind::RestartAll, Some(Mode::Hot)) | (Kind::UpgradeAll, _) => {
            let problems: Vec<String> = odps
                .iter()
                .filter_map(|o| match o.status {
                    None => Some(format!("{} is unreachable", o.agent)),
                    Some(s) if s.state() != pb::ProxyState::Running => {
                        Some(format!("{} is {}", o.agent, state_name(s.state())))
                    }
                    Some(s) if !obproxy_version::at_least(&s.version, MIN_HOT_VERSION) => {
                        Some(format!("{} runs {}", o.agent, s.version))
                    }
                    Some(_) => None,
                })
                .collect();
            if problems.is_empty() {
                Ok(())
            } else if kind == Kind::UpgradeAll {
                Err(format!(
                    "Upgrade All (a hot upgrade) needs every ODP Running at version {MIN_HOT_VERSION} \
                     or later: {}",
                    problems.join(", ")
                ))
            } else {
                Err(format!(
                    "Restart (HOT) needs every ODP Running at version {MIN_HOT_VERSION} or later: {}; \
                     use RESTART_MODE_FORCE (with a batch size to roll without an outage)",
                    problems.join(", ")
                ))
            }
        }
        (Kind::StopAll, _) => {
            let upgrading: Vec<&str> = odps
                .iter()
                .filter(|o| {
                    o.status
                        .is_some_and(|s| s.state() == pb::ProxyState::Upgrading)
                })
                .map(|o| o.agent)
                .collect();
            if upgrading.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "Stop All is refused while ODPs are upgrading: {}",
                    upgrading.join(", ")
                ))
            }
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: pb::ProxyState, version: &str) -> pb::ProxyStatus {
        pb::ProxyStatus {
            state: state as i32,
            version: version.into(),
            ..Default::default()
        }
    }

    #[test]
    fn hot_restart_needs_every_odp_running_at_321() {
        let ok = status(pb::ProxyState::Running, "4.3.1.0");
        let old = status(pb::ProxyState::Running, "3.1.0");
        let stopped = status(pb::ProxyState::Stopped, "");
        let hot = |odps: &[Odp]| check(Kind::RestartAll, Some(Mode::Hot), odps);
        assert!(
            hot(&[Odp {
                agent: "a",
                status: Some(&ok)
            }])
            .is_ok()
        );
        let e = hot(&[
            Odp {
                agent: "a",
                status: Some(&ok),
            },
            Odp {
                agent: "b",
                status: Some(&old),
            },
            Odp {
                agent: "c",
                status: Some(&stopped),
            },
            Odp {
                agent: "d",
                status: None,
            },
        ])
        .unwrap_err();
        assert!(
            e.contains("b runs 3.1.0")
                && e.contains("c is STOPPED")
                && e.contains("d is unreachable"),
            "{e}"
        );
        // Force is always possible.
        assert!(
            check(
                Kind::RestartAll,
                Some(Mode::Force),
                &[Odp {
                    agent: "b",
                    status: Some(&old)
                }]
            )
            .is_ok()
        );
    }

    #[test]
    fn stop_all_is_refused_while_upgrading() {
        let up = status(pb::ProxyState::Upgrading, "4.3.1.0");
        let e = check(
            Kind::StopAll,
            None,
            &[Odp {
                agent: "a",
                status: Some(&up),
            }],
        )
        .unwrap_err();
        assert!(e.contains("upgrading: a"), "{e}");
        assert!(
            check(
                Kind::StartAll,
                None,
                &[Odp {
                    agent: "a",
                    status: Some(&up)
                }]
            )
            .is_ok()
        );
    }
}

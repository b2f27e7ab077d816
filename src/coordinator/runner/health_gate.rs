//! The health gate: an ODP counts as done only when its agent reports the
//! intended state (and, for an upgrade or its rollback, the intended binary
//! and version), asked until a deadline.
use std::time::Duration;

use crate::coordinator::{agent_pool::AgentPool, task::SubtaskState};
use crate::{common::error_chain::describe, proto::agent as pb};

/// How long an ODP may take to report the intended state after its
/// operation succeeded, and how often it is asked when the operation's own
/// last update did not show it.
pub const GATE_TIMEOUT: Duration = Duration::from_secs(10);
pub const GATE_INTERVAL: Duration = Duration::from_millis(250);

/// How one ODP's subtask ended.
pub struct Outcome {
    pub state: SubtaskState,
    pub error: Option<String>,
    pub pid: Option<u32>,
    pub proxy_state: i32,
    /// The version the agent reported when it was asked (None: not asked).
    pub version: Option<String>,
}

impl Outcome {
    /// The agent could not be asked, or refused.
    pub fn failed(e: &crate::coordinator::agent_pool::AgentError) -> Self {
        Outcome {
            state: if e.is_unreachable() {
                SubtaskState::Unreachable
            } else {
                SubtaskState::Failed
            },
            error: Some(describe(e)),
            pid: None,
            proxy_state: pb::ProxyState::Unavailable as i32,
            version: None,
        }
    }
}

/// What the serving obproxy must be, beyond its state: after a hot upgrade
/// (or its rollback) the binary the agent resolved and the version its `-V`
/// reported before anything moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    pub binary: String,
    pub version: String,
}

impl Expect {
    /// Why the status is not what is expected, or None. obproxy's own
    /// account of its version (admin SQL), when the agent has it, must agree
    /// too.
    pub fn mismatch(&self, s: &pb::ProxyStatus) -> Option<String> {
        let serving = s.serving.as_ref();
        let binary = serving.map_or("", |p| p.binary.as_str());
        let reported = serving
            .and_then(|p| p.binary_info.as_ref())
            .map(|i| i.version.as_str())
            .filter(|v| !v.is_empty());
        if s.version != self.version || binary != self.binary {
            return Some(format!(
                "serves {} from {binary:?}, not {} from {:?}",
                s.version, self.version, self.binary
            ));
        }
        reported
            .filter(|v| *v != self.version)
            .map(|v| format!("obproxy itself reports version {v}, not {}", self.version))
    }
}

/// The health gate by asking: done only when the agent reports the intended
/// state (and what `expect` says).
pub async fn gate(
    pool: &AgentPool,
    agent: &str,
    expected: pb::ProxyState,
    expect: Option<&Expect>,
    what: &str,
) -> Outcome {
    let deadline = tokio::time::Instant::now() + GATE_TIMEOUT;
    loop {
        match pool.status(agent).await {
            Ok(s) => {
                let wrong = if s.state() != expected {
                    Some(format!("is {}", s.state().as_str_name()))
                } else {
                    expect.and_then(|e| e.mismatch(&s))
                };
                let Some(wrong) = wrong else {
                    return Outcome {
                        state: SubtaskState::Succeeded,
                        error: None,
                        pid: (s.pid != 0).then_some(s.pid),
                        proxy_state: s.state,
                        version: Some(s.version),
                    };
                };
                if tokio::time::Instant::now() >= deadline {
                    return Outcome {
                        state: SubtaskState::Failed,
                        error: Some(format!(
                            "health gate: the ODP {wrong} after {what}, expected {}",
                            expected.as_str_name()
                        )),
                        pid: (s.pid != 0).then_some(s.pid),
                        proxy_state: s.state,
                        version: Some(s.version),
                    };
                }
                tokio::time::sleep(GATE_INTERVAL).await;
            }
            // One slow answer from a loaded host is not an unreachable ODP:
            // ask again until the gate's own deadline.
            Err(e) if e.is_unreachable() && tokio::time::Instant::now() < deadline => {
                tracing::debug!(odp = %agent, error = %e, "health gate: asking again");
                tokio::time::sleep(GATE_INTERVAL).await;
            }
            Err(e) => return Outcome::failed(&e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serving(version: &str, binary: &str, reported: Option<&str>) -> pb::ProxyStatus {
        pb::ProxyStatus {
            state: pb::ProxyState::Running as i32,
            version: version.into(),
            serving: Some(pb::ProxyProcess {
                binary: binary.into(),
                binary_info: reported.map(|v| pb::BinaryInfo {
                    version: v.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn an_upgrade_is_done_only_on_the_binary_and_version_expected() {
        let expect = Expect {
            binary: "/h/bin/obproxy-4.3".into(),
            version: "4.3.1.0".into(),
        };
        assert_eq!(
            expect.mismatch(&serving("4.3.1.0", "/h/bin/obproxy-4.3", None)),
            None
        );
        let old = expect
            .mismatch(&serving("4.2.3.0", "/h/bin/obproxy", None))
            .unwrap();
        assert!(old.contains("serves 4.2.3.0"), "{old}");
        let lying = expect
            .mismatch(&serving("4.3.1.0", "/h/bin/obproxy-4.3", Some("4.2.3.0")))
            .unwrap();
        assert!(lying.contains("itself reports version 4.2.3.0"), "{lying}");
    }
}

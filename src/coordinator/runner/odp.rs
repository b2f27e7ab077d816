//! One ODP of a batch: its server taken out of the load balancer (when the
//! cluster has one), its operation submitted (idempotent by request id) and
//! followed to its end, the health gate, and its server put back.
use super::{
    super::{
        agent_pool::{AgentError, AgentPool, Command},
        load_balancer::{
            LoadBalancer,
            rotation::{BalancerNote, Plan, Rotation},
        },
        task::SubtaskState,
    },
    health_gate::{Expect, GATE_INTERVAL, Outcome, gate},
};
use crate::{common::error_chain::describe, proto::agent as pb};

/// The cluster's balancer and what the task does with it, for one ODP.
pub(super) struct Balanced<'a> {
    pub(super) lb: &'a LoadBalancer,
    pub(super) plan: Plan,
    /// What the subtask recorded before (a resumed or retried one).
    pub(super) note: Option<BalancerNote>,
}

/// One ODP: out of the balancer, the operation and its health gate, back
/// in. A balancer that cannot take the ODP out fails the subtask before the
/// ODP is touched; one that cannot put it back fails it after.
pub(super) async fn run(
    pool: &AgentPool,
    agent: &str,
    call: Call<'_>,
    balanced: Option<Balanced<'_>>,
    on_operation: impl Fn(String, u32),
    on_note: &(dyn Fn(BalancerNote) + Send + Sync),
) -> Outcome {
    let Some(b) = balanced else {
        return subtask(pool, agent, call, on_operation).await;
    };
    let mut rotation = Rotation::new(b.lb, agent, b.plan, b.note, on_note);
    if let Err(error) = rotation.take_out(call.resumed.is_some()).await {
        return Outcome {
            state: SubtaskState::Failed,
            error: Some(error),
            pid: None,
            proxy_state: 0,
            version: None,
        };
    }
    let outcome = subtask(pool, agent, call, on_operation).await;
    // A failed operation leaves the server out: the ODP may not serve.
    if outcome.state != SubtaskState::Succeeded {
        return outcome;
    }
    let what = format!(
        "the ODP is {}",
        pb::ProxyState::try_from(outcome.proxy_state).map_or("done", |s| s.as_str_name())
    );
    match rotation.put_back(&what).await {
        Ok(()) => outcome,
        Err(error) => Outcome {
            state: SubtaskState::Failed,
            error: Some(error),
            ..outcome
        },
    }
}

/// What one subtask asks of its agent.
pub(super) struct Call<'a> {
    pub(super) command: Command,
    pub(super) request_id: &'a str,
    pub(super) expected: pb::ProxyState,
    /// An upgrade's binary and version, checked by the health gate too.
    pub(super) expect: Option<Expect>,
    /// (operation id, pid serving before it) of an attempt interrupted by a
    /// coordinator restart.
    pub(super) resumed: Option<(String, Option<u32>)>,
}

/// One ODP: submit (idempotent by request id), follow, then the health gate.
/// A resumed attempt first asks for its operation: the agent may have been
/// restarted too and have forgotten the request id, and a restart that
/// already happened (the serving pid changed) must not happen twice.
async fn subtask(
    pool: &AgentPool,
    agent: &str,
    call: Call<'_>,
    on_operation: impl Fn(String, u32),
) -> Outcome {
    let Call {
        command,
        request_id,
        expected,
        expect,
        resumed,
    } = call;
    let fail = Outcome::failed;
    let known = match &resumed {
        Some((id, previous_pid)) => match pool.operation(agent, id).await {
            Ok(op) => Some(op),
            Err(e) if e.is_not_found() => {
                tracing::info!(odp = %agent, op_id = %id, previous_pid = ?previous_pid, "the agent no longer knows the operation");
                None
            }
            Err(e) => return fail(&e),
        },
        None => None,
    };
    let op = match known {
        Some(op) => op,
        None => {
            if let (Command::Restart { .. } | Command::Upgrade { .. }, Some((_, Some(prev)))) =
                (&command, &resumed)
            {
                // The agent forgot the operation: if another process serves
                // now, the restart already happened; go to the health gate.
                match pool.status(agent).await {
                    Ok(s) if s.pid != 0 && s.pid != *prev => {
                        let what = "the resumed restart";
                        return gate(pool, agent, expected, expect.as_ref(), what).await;
                    }
                    Ok(_) => {}
                    Err(e) => return fail(&e),
                }
            }
            match pool.submit(agent, command, request_id).await {
                Ok(op) => op,
                Err(e) => return fail(&e),
            }
        }
    };
    on_operation(op.id.clone(), op.previous_pid);
    let op = match follow(pool, agent, op).await {
        Ok(op) => op,
        Err(e) => return fail(&e),
    };
    if op.state() == pb::OperationState::Failed {
        return Outcome {
            state: SubtaskState::Failed,
            error: Some(op.error),
            pid: (op.pid != 0).then_some(op.pid),
            proxy_state: 0,
            version: None,
        };
    }
    // The health gate follows the operation's stream: its last update says
    // the state it left the ODP in. Only when that is not the intended one
    // (or an older agent does not say) is the agent asked again.
    if op.proxy_state() == expected && expect.is_none() {
        return Outcome {
            state: SubtaskState::Succeeded,
            error: None,
            pid: (op.pid != 0).then_some(op.pid),
            proxy_state: op.proxy_state,
            version: None,
        };
    }
    let what = format!("operation {}", op.id);
    gate(pool, agent, expected, expect.as_ref(), &what).await
}

/// Follows an operation to its end. A watch that breaks (a dropped
/// connection, an agent that missed its keepalive pings, or the coordinator
/// itself frozen for a while) is not yet an unreachable agent: it is asked
/// for the operation once, within `status_timeout`, and followed again if it
/// answers. All of it within `operation_timeout`.
pub(super) async fn follow(
    pool: &AgentPool,
    agent: &str,
    op: pb::Operation,
) -> Result<pb::Operation, AgentError> {
    let timeout = pool.timeouts().operation_timeout;
    let follow = async {
        let mut op = op;
        while op.state() == pb::OperationState::Running {
            op = match pool.follow(agent, &op.id, |_| {}).await {
                Ok(done) => done,
                Err(e) if e.is_unreachable() => {
                    tracing::info!(odp = %agent, op_id = %op.id, error = %describe(&e), "lost the operation's watch; asking the agent again");
                    let again = match pool.operation(agent, &op.id).await {
                        Ok(again) => again,
                        // A restarted agent that forgot it: what became of
                        // the operation is unknown, as for an unreachable
                        // agent (a retry asks again before it acts).
                        Err(forgot) if forgot.is_not_found() => return Err(e),
                        Err(other) => return Err(other),
                    };
                    // Reachable but its watch broke: not in a tight loop.
                    tokio::time::sleep(GATE_INTERVAL).await;
                    again
                }
                Err(e) => return Err(e),
            };
        }
        Ok(op)
    };
    tokio::time::timeout(timeout, follow)
        .await
        .unwrap_or_else(|_| {
            Err(AgentError::Timeout {
                agent: agent.to_string(),
                timeout,
            })
        })
}

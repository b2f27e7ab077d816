//! The load balancer's side of the wire: each ODP's server in the cluster
//! status, and what a subtask did with it.
use crate::{
    common::error_chain::describe,
    coordinator::{
        load_balancer::{ServerState, rotation::BalancerNote},
        task_manager::BalancerStatuses,
    },
    proto::coordinator as pb,
};

pub fn state_pb(state: Option<ServerState>) -> pb::BalancerState {
    match state {
        None => pb::BalancerState::Unspecified,
        Some(ServerState::Ready) => pb::BalancerState::Ready,
        Some(ServerState::Drain) => pb::BalancerState::Drain,
        Some(ServerState::Maint) => pb::BalancerState::Maint,
    }
}

/// One entry per ODP, in agent order.
pub fn servers_pb((servers, statuses): BalancerStatuses) -> Vec<pb::BalancerServer> {
    match statuses {
        Ok(statuses) => servers
            .into_iter()
            .zip(statuses)
            .map(|(server, s)| match s {
                Ok(s) => pb::BalancerServer {
                    server,
                    state: state_pb(s.state) as i32,
                    sessions: s.sessions,
                    error: String::new(),
                },
                Err(e) => pb::BalancerServer {
                    server,
                    error: describe(&e),
                    ..Default::default()
                },
            })
            .collect(),
        Err(e) => {
            let error = describe(&e);
            servers
                .into_iter()
                .map(|server| pb::BalancerServer {
                    server,
                    error: error.clone(),
                    ..Default::default()
                })
                .collect()
        }
    }
}

pub fn note_pb(note: &BalancerNote) -> pb::SubtaskBalancer {
    pb::SubtaskBalancer {
        server: note.server.clone(),
        state: state_pb(note.state) as i32,
        drain: note.drain.clone().unwrap_or_default(),
        log: note.log.clone(),
    }
}

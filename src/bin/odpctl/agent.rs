//! `odpctl agent`: one agent, straight: its status, or a Start, Stop or
//! Restart waited for to its end.
use anyhow::Result;
use odp_agent::{
    common::command_line::odpctl::{AgentCmd, TlsArgs},
    proto::{
        agent::{self as apb, agent_client::AgentClient},
        coordinator as pb,
    },
};
use serde_json::json;

use crate::{
    connect::connect,
    proto_duration,
    render::{cluster_json, print_cluster, short},
    rpc_error,
};

pub(crate) async fn run(cmd: AgentCmd, tls: &TlsArgs, json_out: bool) -> Result<bool> {
    let addr = match &cmd {
        AgentCmd::Status(a) | AgentCmd::Start(a) | AgentCmd::Stop(a) => a.addr.clone(),
        AgentCmd::Restart { addr, .. } => addr.addr.clone(),
    };
    let mut c = AgentClient::new(connect(&addr, tls).await?);
    let op = match cmd {
        AgentCmd::Status(_) => {
            let s = c
                .get_status(apb::GetStatusRequest::default())
                .await
                .map_err(rpc_error)?
                .into_inner();
            let cs = pb::ClusterStatus {
                cluster: String::new(),
                odps: vec![pb::OdpStatus {
                    agent: addr,
                    state: s.state,
                    pid: s.pid,
                    version: s.version.clone(),
                    error: String::new(),
                    status: Some(s),
                    age: None,
                    balancer: None,
                }],
            };
            if json_out {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&cluster_json(&cs)["odps"][0])?
                );
            } else {
                print_cluster(&cs);
            }
            return Ok(true);
        }
        AgentCmd::Start(_) => {
            c.start(apb::StartRequest {
                request_id: String::new(),
                wait: true,
            })
            .await
        }
        AgentCmd::Stop(_) => {
            c.stop(apb::StopRequest {
                request_id: String::new(),
                wait: true,
            })
            .await
        }
        AgentCmd::Restart {
            force,
            exit_timeout,
            binary,
            ..
        } => {
            c.restart(apb::RestartRequest {
                mode: if force {
                    apb::RestartMode::Force
                } else {
                    apb::RestartMode::Hot
                } as i32,
                exit_timeout: exit_timeout.map(proto_duration),
                request_id: String::new(),
                wait: true,
                binary: binary.unwrap_or_default(),
            })
            .await
        }
    }
    .map_err(rpc_error)?
    .into_inner();
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "id": op.id,
                "kind": op.kind().as_str_name(),
                "state": op.state().as_str_name(),
                "error": op.error,
                "pid": op.pid,
                "previous_pid": op.previous_pid,
                "events": op.events,
            }))?
        );
    } else {
        println!(
            "operation {}  {}  pid {} (was {})",
            op.id,
            short(op.state().as_str_name(), "OPERATION_STATE_"),
            op.pid,
            op.previous_pid
        );
        for e in &op.events {
            println!("  {e}");
        }
        if !op.error.is_empty() {
            println!("error: {}", op.error);
        }
    }
    Ok(op.state() == apb::OperationState::Succeeded)
}

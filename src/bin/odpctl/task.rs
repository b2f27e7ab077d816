//! `odpctl task`: list the coordinator's tasks, show, watch, cancel or
//! retry one.
use anyhow::Result;
use odp_agent::{
    common::command_line::odpctl::TaskCmd,
    proto::coordinator::{self as pb, coordinator_client::CoordinatorClient},
};
use serde_json::Value;

use crate::{
    connect::Conn,
    follow::follow,
    render::{kind_name, print_task, short, task_json, timestamp},
    rpc_error,
};

pub(crate) async fn run(
    cmd: TaskCmd,
    mut c: CoordinatorClient<Conn>,
    json_out: bool,
) -> Result<bool> {
    match cmd {
        TaskCmd::List { cluster, limit } => {
            let r = c
                .list_tasks(pb::ListTasksRequest {
                    cluster: cluster.unwrap_or_default(),
                    limit,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            if json_out {
                let v: Vec<Value> = r.tasks.iter().map(task_json).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "{:<38} {:<10} {:<12} {:<10} {:>5}  CREATED",
                    "ID", "CLUSTER", "KIND", "STATE", "ODPS"
                );
                for t in &r.tasks {
                    println!(
                        "{:<38} {:<10} {:<12} {:<10} {:>5}  {}",
                        t.id,
                        t.cluster,
                        kind_name(t),
                        short(t.state().as_str_name(), "TASK_STATE_"),
                        t.subtasks.len(),
                        t.created_at.as_ref().map(timestamp).unwrap_or_default()
                    );
                }
            }
            Ok(true)
        }
        TaskCmd::Show { id } => {
            let t = c
                .get_task(pb::GetTaskRequest { id })
                .await
                .map_err(rpc_error)?
                .into_inner();
            print_task(&t, json_out)?;
            Ok(t.state() != pb::TaskState::Failed)
        }
        TaskCmd::Watch { id } => {
            let t = c
                .get_task(pb::GetTaskRequest { id })
                .await
                .map_err(rpc_error)?
                .into_inner();
            follow(&mut c, t, false, json_out).await
        }
        TaskCmd::Cancel { id } => {
            let t = c
                .cancel_task(pb::CancelTaskRequest { id })
                .await
                .map_err(rpc_error)?
                .into_inner();
            print_task(&t, json_out)?;
            Ok(true)
        }
        TaskCmd::Retry { id, detach } => {
            let t = c
                .retry_task(pb::RetryTaskRequest { id })
                .await
                .map_err(rpc_error)?
                .into_inner();
            follow(&mut c, t, detach, json_out).await
        }
    }
}

//! Following a task to its end: a live progress display per ODP (unless
//! detached or JSON), then the task as it ended.
use anyhow::Result;
use odp_agent::proto::coordinator::{self as pb, coordinator_client::CoordinatorClient};

use crate::{
    connect::Conn,
    render::{Progress, print_task},
    rpc_error,
};

/// The coordinator's answer to a cluster operation, followed to its end.
pub(crate) async fn follow_answer(
    c: &mut CoordinatorClient<Conn>,
    answer: Result<tonic::Response<pb::Task>, tonic::Status>,
    detach: bool,
    json_out: bool,
) -> Result<bool> {
    let task = answer.map_err(rpc_error)?.into_inner();
    follow(c, task, detach, json_out).await
}

/// Follows a task with a live progress display per ODP (unless detached or
/// JSON), then prints it; true when it succeeded.
pub(crate) async fn follow(
    c: &mut CoordinatorClient<Conn>,
    task: pb::Task,
    detach: bool,
    json_out: bool,
) -> Result<bool> {
    if detach || task.state() != pb::TaskState::Running {
        print_task(&task, json_out)?;
        return Ok(matches!(
            task.state(),
            pb::TaskState::Running | pb::TaskState::Succeeded
        ));
    }
    let progress = (!json_out).then(|| Progress::new(&task));
    let id = task.id.clone();
    let mut last = task;
    // A watch that fell behind (RESOURCE_EXHAUSTED) is opened again: the
    // display needs only the current state.
    'watch: while last.state() == pb::TaskState::Running {
        let mut stream = c
            .watch_task(pb::WatchTaskRequest { id: id.clone() })
            .await
            .map_err(rpc_error)?
            .into_inner();
        loop {
            match stream.message().await {
                Ok(Some(t)) => {
                    if let Some(p) = &progress {
                        p.update(&t);
                    }
                    last = t;
                }
                Ok(None) => break 'watch,
                Err(s) if s.code() == tonic::Code::ResourceExhausted => continue 'watch,
                Err(s) => return Err(rpc_error(s)),
            }
        }
    }
    if let Some(p) = progress {
        p.finish();
    }
    print_task(&last, json_out)?;
    Ok(last.state() == pb::TaskState::Succeeded)
}

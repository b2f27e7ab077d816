//! The tasks: the list (newest first) and one task's page, whose panel
//! (state, batches, each ODP's subtask, Cancel and Retry) the live feed
//! replaces as the task moves.
use std::fmt::Write;

use axum::{
    extract::{Path, Query, State},
    http::HeaderMap,
    response::{Html, IntoResponse, Response},
};
use serde::Deserialize;

use super::{
    Shared, error_page,
    html::{self, badge, esc, seg},
    session::Session,
    signed_in,
};
use crate::proto::coordinator::{self as pb, coordinator_server::Coordinator as _};

#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    cluster: String,
}

/// The latest tasks (of one cluster with `?cluster=`), through ListTasks.
pub async fn list(
    State(console): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Response {
    let session = match signed_in(&console, &headers) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let request = pb::ListTasksRequest {
        cluster: query.cluster.clone(),
        limit: 0,
    };
    let tasks = match console
        .service
        .list_tasks(console.request(Some(&session), request))
        .await
    {
        Ok(r) => r.into_inner().tasks,
        Err(e) => return error_page(Some(&session), &e),
    };
    let mut rows = String::new();
    for t in &tasks {
        let done = t
            .subtasks
            .iter()
            .filter(|s| s.state() == pb::SubtaskState::Succeeded)
            .count();
        let _ = write!(
            rows,
            "<tr data-task=\"{id}\"><td><a href=\"/tasks/{sid}\">{id}</a></td><td>{c}</td><td>{k}</td>\
             <td>{st}</td><td class=\"num\">{done}/{n}</td><td>{at}</td></tr>",
            id = esc(&t.id),
            sid = seg(&t.id),
            c = esc(&t.cluster),
            k = esc(&html::task_kind(t.kind, t.mode)),
            st = html::task_badge(html::task_state(t.state)),
            n = t.subtasks.len(),
            at = html::time(t.created_at.as_ref()),
        );
    }
    let title = if query.cluster.is_empty() {
        "Tasks".to_string()
    } else {
        format!("Tasks of {}", query.cluster)
    };
    let body = format!(
        "<h1>{}</h1><table id=\"tasks\"><thead><tr><th>Task</th><th>Cluster</th><th>Operation</th>\
         <th>State</th><th>ODPs done</th><th>Created</th></tr></thead><tbody>{rows}</tbody></table>",
        esc(&title)
    );
    Html(html::page(&title, Some(&session), &body)).into_response()
}

/// One task's page (View Task): the panel, kept live by the page's script
/// from `/tasks/{id}/events`.
pub async fn show(
    State(console): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let session = match signed_in(&console, &headers) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let request = pb::GetTaskRequest { id: id.clone() };
    let task = match console
        .service
        .get_task(console.request(Some(&session), request))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(e) => return error_page(Some(&session), &e),
    };
    let live = if task.state() == pb::TaskState::Running {
        format!(" data-events=\"/tasks/{}/events\"", seg(&task.id))
    } else {
        String::new()
    };
    let body = format!(
        "<h1>Task <span class=\"mono\" id=\"task-id\">{id}</span></h1>\
         <p class=\"sub\">{kind} on <a href=\"/clusters/{sc}\">{c}</a> · created {at}</p>\
         <div id=\"task\"{live}>{panel}</div>",
        id = esc(&task.id),
        kind = esc(&html::task_kind(task.kind, task.mode)),
        sc = seg(&task.cluster),
        c = esc(&task.cluster),
        at = html::time(task.created_at.as_ref()),
        panel = panel(&session, &task),
    );
    Html(html::page("Task", Some(&session), &body)).into_response()
}

/// The part of the task page that changes: state, batches, subtasks and
/// the buttons that apply now.
pub fn panel(session: &Session, t: &pb::Task) -> String {
    let state = html::task_state(t.state);
    let failed = t
        .subtasks
        .iter()
        .filter(|s| {
            matches!(
                s.state(),
                pb::SubtaskState::Failed | pb::SubtaskState::Unreachable
            )
        })
        .count();
    let mut out = format!(
        "<div class=\"summary\"><span id=\"task-state\">{}</span> \
         <span>batch {}/{}</span> <span id=\"failed-count\">{failed} failed</span>{}</div>",
        html::task_badge(state),
        t.current_batch,
        t.batches,
        if t.cancel_requested && t.state() == pb::TaskState::Running {
            " <span class=\"reason\">cancel requested: no further batch starts</span>"
        } else {
            ""
        }
    );
    if !t.error.is_empty() {
        let _ = write!(
            out,
            "<p class=\"error\" id=\"task-error\">{}</p>",
            esc(&t.error)
        );
    }
    if !t.store_error.is_empty() {
        let _ = write!(
            out,
            "<p class=\"error\">Not yet written down: {}</p>",
            esc(&t.store_error)
        );
    }
    if let Some(r) = &t.rollout {
        let batch = match (r.batch_size, r.batch_percent) {
            (0, 0) => "all at once".to_string(),
            (0, p) => format!("{p}% at a time"),
            (n, _) => format!("{n} at a time"),
        };
        let _ = write!(
            out,
            "<p class=\"sub\">Batches: {batch} · pause {} · failure budget {}{}</p>",
            html::duration(r.pause.as_ref()),
            r.max_failures,
            t.exit_timeout
                .as_ref()
                .map(|d| format!(" · exit timeout {}", html::duration(Some(d))))
                .unwrap_or_default()
        );
    }
    if let Some(u) = &t.upgrade {
        let _ = write!(
            out,
            "<p class=\"sub\" id=\"upgrade\">Onto {} (version {}, sha256 {}) · canary {} held {}</p>",
            esc(&u.binary),
            esc(&u.version),
            esc(&u.binary_sha256),
            u.canary_size,
            html::duration(u.canary_wait.as_ref()),
        );
    }
    out.push_str(
        "<table id=\"subtasks\"><thead><tr><th>ODP</th><th>Batch</th><th>State</th><th>PID</th>\
         <th>Attempts</th><th>Started</th><th>Finished</th><th>Last error</th></tr></thead><tbody>",
    );
    for s in &t.subtasks {
        let _ = write!(
            out,
            "<tr data-agent=\"{a}\"><td class=\"addr\">{a}</td><td class=\"num\">{b}</td>\
             <td class=\"state\">{st}</td><td class=\"num\">{pid}</td><td class=\"num\">{n}</td>\
             <td>{from}</td><td>{to}</td><td class=\"error\">{e}</td></tr>",
            a = esc(&s.agent),
            b = s.batch,
            st = badge(&html::subtask_state(s.state)),
            pid = if s.pid == 0 {
                "-".into()
            } else {
                s.pid.to_string()
            },
            n = s.attempts,
            from = html::time(s.started_at.as_ref()),
            to = html::time(s.finished_at.as_ref()),
            e = esc(&s.last_error),
        );
    }
    out.push_str("</tbody></table>");
    if session.can_act() {
        let running = t.state() == pb::TaskState::Running;
        let mut buttons = String::new();
        if running && !t.cancel_requested {
            buttons.push_str(&html::form(
                session,
                &format!("/tasks/{}/cancel", seg(&t.id)),
                "",
                "<button id=\"cancel-task\" class=\"secondary\">Cancel</button>",
            ));
        }
        // The engine refuses to retry an Upgrade All (it is run again, every
        // check repeated): no button that can only be refused.
        if !running && t.state() != pb::TaskState::Succeeded && t.kind() != pb::TaskKind::UpgradeAll
        {
            buttons.push_str(&html::form(
                session,
                &format!("/tasks/{}/retry", seg(&t.id)),
                "",
                "<button id=\"retry-task\">Retry</button>",
            ));
        }
        let _ = write!(out, "<div class=\"buttons\">{buttons}</div>");
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::security::{callers::Caller, role::Role};

    fn operator() -> Session {
        Session {
            id: "s".into(),
            token: "t".into(),
            caller: Caller {
                identity: "token:oncall".into(),
                role: Role::Operator,
            },
            csrf: "c".into(),
            expires: Instant::now(),
        }
    }

    #[test]
    fn a_rolled_back_upgrade_reads_so_and_offers_no_retry() {
        let subtask = |state: pb::SubtaskState| pb::Subtask {
            agent: "10.0.0.1:2889".into(),
            state: state as i32,
            ..Default::default()
        };
        let mut t = pb::Task {
            id: "task-1".into(),
            kind: pb::TaskKind::UpgradeAll as i32,
            state: pb::TaskState::RolledBack as i32,
            upgrade: Some(pb::Upgrade {
                binary: "bin/obproxy-4.3.1".into(),
                version: "4.3.1.0".into(),
                canary_size: 1,
                ..Default::default()
            }),
            subtasks: vec![
                subtask(pb::SubtaskState::RolledBack),
                subtask(pb::SubtaskState::RollingBack),
            ],
            ..Default::default()
        };
        let page = panel(&operator(), &t);
        assert!(page.contains("data-state=\"Rolled Back\""), "{page}");
        assert!(page.contains("data-state=\"Rolling Back\""), "{page}");
        assert!(
            page.contains("Onto bin/obproxy-4.3.1 (version 4.3.1.0"),
            "{page}"
        );
        assert!(!page.contains("retry-task"), "{page}");
        // Another kind that ended without succeeding is offered Retry.
        t.kind = pb::TaskKind::RestartAll as i32;
        t.state = pb::TaskState::Failed as i32;
        assert!(panel(&operator(), &t).contains("retry-task"));
    }
}

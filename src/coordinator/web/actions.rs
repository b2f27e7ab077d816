//! What the forms send: Start All, Stop All and Restart All on a cluster,
//! Cancel and Retry on a task. Each is the gRPC call itself, made with the
//! session's token; the console adds only its CSRF check (audited like any
//! refusal) and the parsing of the form's text fields.
use axum::{
    Form,
    extract::{Path, State},
    http::HeaderMap,
    response::{IntoResponse, Redirect, Response},
};
use serde::Deserialize;
use tonic::Status;

use super::{Console, Shared, error_page, html::seg, session::Session};
use crate::{
    proto::{
        agent as apb,
        coordinator::{self as pb, coordinator_server::Coordinator as _},
    },
    security::guard::Call,
};

/// A cluster operation's form, as text: what is wrong with it is told
/// field by field, like the gRPC service's INVALID_ARGUMENT.
#[derive(Deserialize, Default)]
pub struct OperationForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    request_id: String,
    #[serde(default)]
    mode: String,
    #[serde(default)]
    batch_size: String,
    #[serde(default)]
    pause: String,
    #[serde(default)]
    max_failures: String,
    #[serde(default)]
    exit_timeout: String,
}

#[derive(Clone, Copy)]
enum Operation {
    Start,
    Stop,
    Restart,
}

impl Operation {
    fn from_path(action: &str) -> Option<Self> {
        match action {
            "start-all" => Some(Self::Start),
            "stop-all" => Some(Self::Stop),
            "restart-all" => Some(Self::Restart),
            _ => None,
        }
    }

    fn rpc(self) -> &'static str {
        match self {
            Self::Start => "StartAll",
            Self::Stop => "StopAll",
            Self::Restart => "RestartAll",
        }
    }
}

/// The fields every operation takes, parsed.
struct Rollout {
    batch_size: u32,
    max_failures: u32,
    pause: Option<prost_types::Duration>,
}

fn number(field: &str, text: &str) -> Result<u32, Status> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(0);
    }
    text.parse()
        .map_err(|_| Status::invalid_argument(format!("{field}: {text:?} is not a whole number")))
}

fn duration(field: &str, text: &str) -> Result<Option<prost_types::Duration>, Status> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let d = humantime::parse_duration(text).map_err(|e| {
        Status::invalid_argument(format!(
            "{field}: {text:?} is not a duration ({e}), e.g. 30s"
        ))
    })?;
    prost_types::Duration::try_from(d)
        .map(Some)
        .map_err(|_| Status::invalid_argument(format!("{field}: {text:?} is too long")))
}

impl OperationForm {
    fn rollout(&self) -> Result<Rollout, Status> {
        Ok(Rollout {
            batch_size: number("batch_size", &self.batch_size)?,
            max_failures: number("max_failures", &self.max_failures)?,
            pause: duration("pause", &self.pause)?,
        })
    }

    fn mode(&self) -> i32 {
        match self.mode.as_str() {
            "hot" => apb::RestartMode::Hot as i32,
            "force" => apb::RestartMode::Force as i32,
            // The service names the field and what it takes.
            _ => apb::RestartMode::Unspecified as i32,
        }
    }
}

/// A refusal the console itself makes before the service is called,
/// written to the audit log as the service writes its own.
fn refuse(
    console: &Console,
    session: &Session,
    rpc: &'static str,
    target: &str,
    status: Status,
) -> Response {
    let call = Call {
        caller: &session.caller,
        rpc,
        target,
        request_id: "",
    };
    console
        .guard
        .record(&call, vec![("via", "console".into())], &status);
    error_page(Some(session), &status)
}

/// `POST /clusters/{name}/{start-all|stop-all|restart-all}`.
pub async fn cluster(
    State(console): State<Shared>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
    Form(form): Form<OperationForm>,
) -> Response {
    let session = console.sessions.find(&headers);
    let Some(op) = Operation::from_path(&action) else {
        return error_page(
            session.as_ref(),
            &Status::not_found(format!("no action {action:?}")),
        );
    };
    let rollout = match &session {
        // No session: the call goes to the guard without credentials, which
        // refuses it and audits the refusal, telling nothing of the form.
        None => Ok(Rollout {
            batch_size: 0,
            max_failures: 0,
            pause: None,
        }),
        Some(s) if !s.csrf_matches(&form.csrf) => {
            let status = Status::permission_denied(
                "csrf: the form's token is missing or wrong (reload the page and try again)",
            );
            return refuse(&console, s, op.rpc(), &name, status);
        }
        // A read-only user is refused by the guard before any field is read.
        Some(s) if !s.can_act() => Ok(Rollout {
            batch_size: 0,
            max_failures: 0,
            pause: None,
        }),
        Some(_) => form.rollout(),
    };
    let rollout = match (rollout, &session) {
        (Ok(r), _) => r,
        (Err(status), Some(s)) => return refuse(&console, s, op.rpc(), &name, status),
        (Err(status), None) => return error_page(None, &status),
    };
    let exit_timeout = match (op, &session) {
        (Operation::Restart, Some(s)) if s.can_act() => {
            match duration("exit_timeout", &form.exit_timeout) {
                Ok(d) => d,
                Err(status) => return refuse(&console, s, op.rpc(), &name, status),
            }
        }
        _ => None,
    };
    let s = session.as_ref();
    let answer = match op {
        Operation::Start => {
            let r = pb::StartAllRequest {
                cluster: name,
                request_id: form.request_id.clone(),
                batch_size: rollout.batch_size,
                batch_percent: 0,
                max_failures: rollout.max_failures,
                pause: rollout.pause,
            };
            console.service.start_all(console.request(s, r)).await
        }
        Operation::Stop => {
            let r = pb::StopAllRequest {
                cluster: name,
                request_id: form.request_id.clone(),
                batch_size: rollout.batch_size,
                batch_percent: 0,
                max_failures: rollout.max_failures,
                pause: rollout.pause,
            };
            console.service.stop_all(console.request(s, r)).await
        }
        Operation::Restart => {
            let r = pb::RestartAllRequest {
                cluster: name,
                mode: form.mode(),
                request_id: form.request_id.clone(),
                batch_size: rollout.batch_size,
                batch_percent: 0,
                max_failures: rollout.max_failures,
                pause: rollout.pause,
                exit_timeout,
            };
            console.service.restart_all(console.request(s, r)).await
        }
    };
    match answer {
        Ok(task) => Redirect::to(&format!("/tasks/{}", seg(&task.into_inner().id))).into_response(),
        Err(status) => error_page(s, &status),
    }
}

#[derive(Deserialize)]
pub struct TaskForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /tasks/{id}/{cancel|retry}`.
pub async fn task(
    State(console): State<Shared>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<TaskForm>,
) -> Response {
    let session = console.sessions.find(&headers);
    let rpc = match action.as_str() {
        "cancel" => "CancelTask",
        "retry" => "RetryTask",
        _ => {
            return error_page(
                session.as_ref(),
                &Status::not_found(format!("no action {action:?}")),
            );
        }
    };
    if let Some(s) = &session
        && !s.csrf_matches(&form.csrf)
    {
        let status = Status::permission_denied(
            "csrf: the form's token is missing or wrong (reload the page and try again)",
        );
        return refuse(&console, s, rpc, &id, status);
    }
    let s = session.as_ref();
    let answer = if rpc == "CancelTask" {
        let r = pb::CancelTaskRequest { id };
        console.service.cancel_task(console.request(s, r)).await
    } else {
        let r = pb::RetryTaskRequest { id };
        console.service.retry_task(console.request(s, r)).await
    };
    match answer {
        Ok(task) => Redirect::to(&format!("/tasks/{}", seg(&task.into_inner().id))).into_response(),
        Err(status) => error_page(s, &status),
    }
}

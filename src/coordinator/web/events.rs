//! A task page's live feed: server-sent events from WatchTask, the same
//! stream gRPC watchers get, each change sent as the task panel rendered
//! for the session (so Cancel and Retry appear and go as they apply).
use std::convert::Infallible;

use axum::{
    Extension,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use futures::{StreamExt, stream};

use super::{Shared, error_page, task_pages::panel};
use crate::{
    common::grpc_server::conn::Peer,
    proto::coordinator::{self as pb, coordinator_server::Coordinator as _},
};

/// `GET /tasks/{id}/events`: `task` events with the panel's HTML, then
/// `end` once the task has finished (with data: a browser drops an event
/// without); `resync` when this watcher fell too
/// far behind (the page loads afresh rather than show a gap).
pub async fn task(
    State(console): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    peer: Option<Extension<Peer>>,
) -> Response {
    let Some(session) = console.sessions.find(&headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let request = console.request(Some(&session), pb::WatchTaskRequest { id });
    let updates = match console.service.watch_task(request).await {
        Ok(r) => r.into_inner(),
        Err(e) => return error_page(Some(&session), &e),
    };
    // The connection is busy while the feed is open: the idle clock must
    // not close a page that is watching.
    let busy = peer.map(|Extension(p)| p.begin_call());
    let shutdown = console.shutdown.clone();
    let events = updates
        .map(move |update| {
            let _busy = &busy;
            match update {
                Ok(task) => Event::default().event("task").data(panel(&session, &task)),
                Err(status) => Event::default().event("resync").data(status.message()),
            }
        })
        .chain(stream::once(async {
            Event::default().event("end").data("finished")
        }))
        .map(Ok::<_, Infallible>)
        .take_until(shutdown.cancelled_owned());
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

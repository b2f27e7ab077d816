//! Calls in flight, bounded per listener: long-lived streams (WatchOperation,
//! WatchTask, health Watch, reflection), reads, and mutating calls each have
//! their own budget, so a flood of one kind cannot starve another, and a call
//! over its budget is answered RESOURCE_EXHAUSTED at once instead of queueing.
//! Every call is also counted on its connection, whose idle clock runs only
//! while it has none.
use std::{
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tower::{Layer, Service};

use super::conn::{CallGuard, Peer};

/// Open streams per listener: watchers are few (a coordinator, a console);
/// each open stream holds memory until its client goes.
pub const MAX_STREAMS: usize = 128;
/// Unary reads in flight per listener: each costs the daemon real work.
pub const MAX_READS: usize = 16;
/// Mutating calls in flight per listener (a `wait: true` call holds its
/// slot until the operation ends; one operation runs at a time anyway).
pub const MAX_WRITES: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Stream,
    Read,
    Write,
}

impl Class {
    fn of(path: &str) -> Self {
        let method = path.rsplit('/').next().unwrap_or("");
        if path == "/grpc.health.v1.Health/Watch"
            || method == "ServerReflectionInfo"
            || method == "WatchOperation"
            || method == "WatchStatus"
            || method == "WatchTask"
        {
            return Class::Stream;
        }
        let mutating = [
            "Start",
            "Stop",
            "Restart",
            "StopAll",
            "StartAll",
            "RestartAll",
            "UpgradeAll",
            "InspectBinary",
            "CancelTask",
            "RetryTask",
        ];
        if path.starts_with("/odp.") && mutating.contains(&method) {
            Class::Write
        } else {
            Class::Read
        }
    }

    fn name(self) -> &'static str {
        match self {
            Class::Stream => "streams",
            Class::Read => "read calls",
            Class::Write => "mutating calls",
        }
    }
}

/// One listener's budgets (a layer: cloned into every connection's service).
#[derive(Clone)]
pub struct CallBudget {
    streams: Arc<Semaphore>,
    reads: Arc<Semaphore>,
    writes: Arc<Semaphore>,
}

impl Default for CallBudget {
    fn default() -> Self {
        Self::new(MAX_STREAMS, MAX_READS, MAX_WRITES)
    }
}

impl CallBudget {
    pub fn new(streams: usize, reads: usize, writes: usize) -> Self {
        Self {
            streams: Arc::new(Semaphore::new(streams)),
            reads: Arc::new(Semaphore::new(reads)),
            writes: Arc::new(Semaphore::new(writes)),
        }
    }

    fn slot(&self, class: Class) -> Option<OwnedSemaphorePermit> {
        match class {
            Class::Stream => &self.streams,
            Class::Read => &self.reads,
            Class::Write => &self.writes,
        }
        .clone()
        .try_acquire_owned()
        .ok()
    }
}

impl<S> Layer<S> for CallBudget {
    type Service = Budgeted<S>;

    fn layer(&self, inner: S) -> Budgeted<S> {
        Budgeted {
            inner,
            budget: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Budgeted<S> {
    inner: S,
    budget: CallBudget,
}

impl<S, B> Service<http::Request<B>> for Budgeted<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let class = Class::of(request.uri().path());
        let Some(slot) = self.budget.slot(class) else {
            let status = tonic::Status::resource_exhausted(format!(
                "too many {} in flight on this listener; try again later",
                class.name()
            ));
            return Box::pin(async move { Ok(status.into_http()) });
        };
        let call = request
            .extensions()
            .get::<Peer>()
            .map(|peer| peer.activity.begin());
        // The service that was polled ready answers; a clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(request).await?;
            Ok(response.map(|body| {
                Body::new(Held {
                    body,
                    _slot: slot,
                    _call: call,
                })
            }))
        })
    }
}

/// A response body that holds its call's slot (and keeps its connection
/// busy) until it is finished or dropped: for a stream, until the client
/// goes.
struct Held {
    body: Body,
    _slot: OwnedSemaphorePermit,
    _call: Option<CallGuard>,
}

impl HttpBody for Held {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_classed_by_method() {
        assert_eq!(
            Class::of("/odp.agent.v1.Agent/WatchOperation"),
            Class::Stream
        );
        assert_eq!(Class::of("/odp.agent.v1.Agent/WatchStatus"), Class::Stream);
        assert_eq!(Class::of("/grpc.health.v1.Health/Watch"), Class::Stream);
        assert_eq!(
            Class::of("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            Class::Stream
        );
        assert_eq!(Class::of("/odp.agent.v1.Agent/Stop"), Class::Write);
        assert_eq!(
            Class::of("/odp.coordinator.v1.Coordinator/RestartAll"),
            Class::Write
        );
        assert_eq!(Class::of("/odp.agent.v1.Agent/GetStatus"), Class::Read);
        assert_eq!(Class::of("/grpc.health.v1.Health/Check"), Class::Read);
    }

    #[test]
    fn a_budget_runs_out_and_comes_back() {
        let budget = CallBudget::new(1, 1, 1);
        let held = budget.slot(Class::Read).unwrap();
        assert!(budget.slot(Class::Read).is_none());
        // Other kinds keep their own budget.
        assert!(budget.slot(Class::Write).is_some());
        drop(held);
        assert!(budget.slot(Class::Read).is_some());
    }
}

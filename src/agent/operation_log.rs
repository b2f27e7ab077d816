//! Operations: what was asked (start, stop, restart), how far it got, how it
//! ended; and the log that keeps them, finds them by request id and lets
//! callers watch every change (see [`crate::common::change_feed`]).
use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, SystemTime},
};

use tokio::sync::watch;

use crate::{
    agent::obproxy::executable::Executable,
    common::change_feed::{Feed, Watcher},
};

/// Finished operations kept for GetOperation and request-id replays.
const KEEP_FINISHED: usize = 512;

/// Changes a WatchOperation caller may fall behind before it is told so. An
/// operation makes a few dozen (phases and events), so only a watcher that
/// stopped reading gets there.
pub const WATCH_BUFFER: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Start,
    Stop,
    RestartHot,
    RestartForce,
    /// The agent's own start after obproxy died while it should run.
    Respawn,
    /// obproxy restarted itself (proxy_local_cmd = 2, enable_auto_restart)
    /// and the agent took its child on as the serving process.
    AdoptNative,
    /// Adopting an obproxy the agent did not start (found at start-up).
    TakeOver,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Start => "start",
            Kind::Stop => "stop",
            Kind::RestartHot => "hot restart",
            Kind::RestartForce => "force restart",
            Kind::Respawn => "respawn",
            Kind::AdoptNative => "native restart adoption",
            Kind::TakeOver => "take-over",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Running,
    Succeeded,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Queued,
    Binding,
    Spawning,
    WaitingReady,
    Draining,
    Stopping,
    Killing,
    ClosingListeners,
    Done,
}

/// A request for an operation, in domain terms (validated by the service).
#[derive(Debug, Clone)]
pub struct Request {
    pub kind: Kind,
    pub request_id: Option<String>,
    /// HOT only: the drain window for this restart.
    pub exit_timeout: Option<Duration>,
    /// HOT only: another binary to move onto, opened when the request was
    /// checked (that very file is what runs).
    pub binary: Option<Executable>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    pub id: String,
    pub kind: Kind,
    pub state: State,
    pub phase: Phase,
    pub error: Option<String>,
    pub request_id: Option<String>,
    pub created_at: SystemTime,
    pub finished_at: Option<SystemTime>,
    pub pid: Option<u32>,
    pub previous_pid: Option<u32>,
    pub events: Vec<String>,
    /// Once finished: the ODP's state it left (what a health gate checks).
    pub proxy_state: Option<crate::agent::process_table::ProxyState>,
}

impl Operation {
    pub fn is_finished(&self) -> bool {
        self.state != State::Running
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("operation {id} ({}) is running; one operation at a time", kind.name())]
    Busy { id: String, kind: Kind },
    #[error("request_id {request_id:?} was used for operation {id} ({}), not a {}", used.name(), asked.name())]
    RequestIdReused {
        request_id: String,
        id: String,
        used: Kind,
        asked: Kind,
    },
}

/// Run by the supervisor in the step that admits an operation (before it
/// starts and before anyone is answered), with the operation's id and
/// whether the request id was a replay: the audit log's line. An error
/// withdraws the admission, so nothing is done.
pub type OnAdmit = Box<dyn FnOnce(&str, bool) -> Result<(), String> + Send>;

/// What a submission found.
#[derive(Debug)]
pub enum Admission {
    /// A new operation was created and is now the current one.
    New(watch::Receiver<Operation>),
    /// The request id was seen before: its operation.
    Replay(watch::Receiver<Operation>),
}

pub struct Log {
    ops: HashMap<String, Feed<Operation>>,
    order: VecDeque<String>,
    by_request: HashMap<String, String>,
    current: Option<String>,
    watch_buffer: usize,
}

impl Default for Log {
    fn default() -> Self {
        Self::with_watch_buffer(WATCH_BUFFER)
    }
}

impl Log {
    /// A log whose watchers may fall `watch_buffer` changes behind.
    pub fn with_watch_buffer(watch_buffer: usize) -> Self {
        Self {
            ops: HashMap::new(),
            order: VecDeque::new(),
            by_request: HashMap::new(),
            current: None,
            watch_buffer,
        }
    }

    /// Admits `request` unless another operation is running.
    pub fn admit(
        &mut self,
        request: &Request,
        previous_pid: Option<u32>,
    ) -> Result<Admission, LogError> {
        if let Some(rid) = &request.request_id
            && let Some(id) = self.by_request.get(rid)
            && let Some(feed) = self.ops.get(id)
        {
            let used = feed.borrow().kind;
            let joined_respawn =
                matches!(used, Kind::Respawn | Kind::TakeOver) && request.kind == Kind::Start;
            if used != request.kind && !joined_respawn {
                return Err(LogError::RequestIdReused {
                    request_id: rid.clone(),
                    id: id.clone(),
                    used,
                    asked: request.kind,
                });
            }
            return Ok(Admission::Replay(feed.subscribe_latest()));
        }
        if let Some(current) = self.current() {
            // A Start while the agent is already starting obproxy again after
            // a crash (or taking over a running one) asks for exactly that:
            // it joins that operation.
            if request.kind == Kind::Start && matches!(current.kind, Kind::Respawn | Kind::TakeOver)
            {
                if let Some(rid) = &request.request_id {
                    self.by_request.insert(rid.clone(), current.id.clone());
                }
                return self
                    .ops
                    .get(&current.id)
                    .map(|feed| Admission::Replay(feed.subscribe_latest()))
                    .ok_or(LogError::Busy {
                        id: current.id,
                        kind: current.kind,
                    });
            }
            return Err(LogError::Busy {
                id: current.id,
                kind: current.kind,
            });
        }
        let id = format!("op-{}", uuid::Uuid::new_v4().simple());
        let op = Operation {
            id: id.clone(),
            kind: request.kind,
            state: State::Running,
            phase: Phase::Queued,
            error: None,
            request_id: request.request_id.clone(),
            created_at: SystemTime::now(),
            finished_at: None,
            pid: None,
            previous_pid,
            events: Vec::new(),
            proxy_state: None,
        };
        let feed = Feed::new(op, self.watch_buffer);
        let rx = feed.subscribe_latest();
        self.ops.insert(id.clone(), feed);
        self.order.push_back(id.clone());
        if let Some(rid) = &request.request_id {
            self.by_request.insert(rid.clone(), id.clone());
        }
        self.current = Some(id);
        self.trim();
        Ok(Admission::New(rx))
    }

    /// Takes back a new operation that must not run after all (its
    /// admission could not be recorded); nothing of it remains.
    pub fn withdraw(&mut self, id: &str) {
        if self.current.as_deref() == Some(id) {
            self.current = None;
        }
        self.order.retain(|o| o != id);
        if let Some(feed) = self.ops.remove(id)
            && let Some(rid) = &feed.borrow().request_id
        {
            self.by_request.remove(rid);
        }
    }

    pub fn has_request(&self, request_id: &str) -> bool {
        self.by_request.contains_key(request_id)
    }

    /// The running operation's id, without copying the operation.
    pub fn current_id(&self) -> Option<&str> {
        self.current.as_deref()
    }

    pub fn current(&self) -> Option<Operation> {
        self.current
            .as_ref()
            .and_then(|id| self.ops.get(id))
            .map(Feed::latest)
    }

    pub fn get(&self, id: &str) -> Option<Operation> {
        self.ops.get(id).map(Feed::latest)
    }

    /// The operation as it is now, then every change to it.
    pub fn watch(&self, id: &str) -> Option<Watcher<Operation>> {
        self.ops.get(id).map(Feed::watch)
    }

    /// Changes an operation and hands the change to its watchers.
    pub fn update(&mut self, id: &str, change: impl FnOnce(&mut Operation)) {
        let Some(feed) = self.ops.get(id) else { return };
        feed.modify(change);
        if feed.borrow().is_finished() {
            feed.close();
            if self.current.as_deref() == Some(id) {
                self.current = None;
            }
        }
    }

    fn trim(&mut self) {
        while self.order.len() > KEEP_FINISHED {
            let Some(oldest) = self.order.front().cloned() else {
                break;
            };
            if self.current.as_deref() == Some(oldest.as_str()) {
                break;
            }
            self.order.pop_front();
            if let Some(feed) = self.ops.remove(&oldest)
                && let Some(rid) = &feed.borrow().request_id
            {
                self.by_request.remove(rid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn req(kind: Kind, rid: Option<&str>) -> Request {
        Request {
            kind,
            request_id: rid.map(str::to_string),
            exit_timeout: None,
            binary: None,
        }
    }

    fn new_id(a: Admission) -> String {
        match a {
            Admission::New(rx) => rx.borrow().id.clone(),
            Admission::Replay(_) => panic!("expected a new operation"),
        }
    }

    #[test]
    fn a_second_operation_is_refused_naming_the_first() {
        let mut log = Log::default();
        let id = new_id(log.admit(&req(Kind::Start, None), None).unwrap());
        let err = log.admit(&req(Kind::Stop, None), None).unwrap_err();
        assert!(err.to_string().contains(&id), "{err}");
    }

    #[test]
    fn a_repeated_request_id_returns_the_same_operation_even_when_finished() {
        let mut log = Log::default();
        let id = new_id(log.admit(&req(Kind::Start, Some("r1")), None).unwrap());
        log.update(&id, |op| op.state = State::Succeeded);
        match log.admit(&req(Kind::Start, Some("r1")), None).unwrap() {
            Admission::Replay(rx) => assert_eq!(rx.borrow().id, id),
            Admission::New(_) => panic!("request id not honoured"),
        }
        assert!(log.admit(&req(Kind::Stop, Some("r1")), None).is_err());
    }

    #[test]
    fn a_start_during_a_respawn_joins_it() {
        let mut log = Log::default();
        let id = new_id(log.admit(&req(Kind::Respawn, None), None).unwrap());
        for _ in 0..2 {
            match log.admit(&req(Kind::Start, Some("s1")), None).unwrap() {
                Admission::Replay(rx) => assert_eq!(rx.borrow().id, id),
                Admission::New(_) => panic!("a second operation next to the respawn"),
            }
        }
        assert!(log.admit(&req(Kind::Stop, None), None).is_err());
    }

    /// WatchOperation's promise: a watcher that reads only after the
    /// operation ended still gets every phase and every event, in order.
    #[tokio::test]
    async fn a_watcher_that_reads_late_gets_every_phase_and_event() {
        let mut log = Log::default();
        let id = new_id(log.admit(&req(Kind::RestartHot, None), None).unwrap());
        let watcher = log.watch(&id).unwrap();
        let phases = [
            Phase::Binding,
            Phase::Spawning,
            Phase::WaitingReady,
            Phase::Draining,
            Phase::Done,
        ];
        for (i, phase) in phases.into_iter().enumerate() {
            log.update(&id, |op| {
                op.phase = phase;
                op.events.push(format!("event {i}"));
            });
        }
        log.update(&id, |op| op.state = State::Succeeded);
        let seen: Vec<Operation> = watcher
            .until(Operation::is_finished)
            .map(Result::unwrap)
            .collect()
            .await;
        let seen_phases: Vec<Phase> = seen.iter().map(|op| op.phase).collect();
        assert_eq!(seen_phases[0], Phase::Queued);
        assert_eq!(&seen_phases[1..6], phases);
        assert_eq!(seen.last().unwrap().state, State::Succeeded);
        for (i, op) in seen.iter().enumerate().skip(1).take(5) {
            assert_eq!(op.events.len(), i, "{:?}", op.events);
        }
    }

    #[tokio::test]
    async fn a_watcher_too_far_behind_gets_an_error_not_a_gap() {
        let mut log = Log::with_watch_buffer(4);
        let id = new_id(log.admit(&req(Kind::Start, None), None).unwrap());
        let mut watcher = log.watch(&id).unwrap();
        assert_eq!(watcher.next().await.unwrap().unwrap().phase, Phase::Queued);
        for i in 0..10 {
            log.update(&id, |op| op.events.push(format!("event {i}")));
        }
        let behind = watcher.next().await.unwrap().unwrap_err();
        assert_eq!((behind.skipped, behind.buffer), (6, 4));
        assert!(watcher.next().await.is_none());
    }

    #[test]
    fn a_withdrawn_operation_leaves_nothing_behind() {
        let mut log = Log::default();
        let id = new_id(log.admit(&req(Kind::Start, Some("w1")), None).unwrap());
        log.withdraw(&id);
        assert!(log.current().is_none());
        assert!(log.get(&id).is_none());
        assert!(!log.has_request("w1"));
        new_id(log.admit(&req(Kind::Start, Some("w1")), None).unwrap());
    }

    #[test]
    fn finishing_frees_the_slot() {
        let mut log = Log::default();
        let id = new_id(log.admit(&req(Kind::Start, None), None).unwrap());
        log.update(&id, |op| op.state = State::Failed);
        assert!(log.current().is_none());
        new_id(log.admit(&req(Kind::Stop, None), None).unwrap());
    }
}

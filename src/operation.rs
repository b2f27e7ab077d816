//! Operations: what was asked (start, stop, restart), how far it got, how it
//! ended; and the log that keeps them, finds them by request id and lets
//! callers watch them change.
use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, SystemTime},
};

use tokio::sync::watch;

use crate::obproxy::executable::Executable;

/// Finished operations kept for GetOperation and request-id replays.
const KEEP_FINISHED: usize = 512;

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
    pub proxy_state: Option<crate::supervisor::ProxyState>,
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

#[derive(Default)]
pub struct Log {
    ops: HashMap<String, watch::Sender<Operation>>,
    order: VecDeque<String>,
    by_request: HashMap<String, String>,
    current: Option<String>,
}

impl Log {
    /// Admits `request` unless another operation is running.
    pub fn admit(
        &mut self,
        request: &Request,
        previous_pid: Option<u32>,
    ) -> Result<Admission, LogError> {
        if let Some(rid) = &request.request_id
            && let Some(id) = self.by_request.get(rid)
            && let Some(tx) = self.ops.get(id)
        {
            let used = tx.borrow().kind;
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
            return Ok(Admission::Replay(tx.subscribe()));
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
                    .watch(&current.id)
                    .map(Admission::Replay)
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
        let (tx, rx) = watch::channel(op);
        self.ops.insert(id.clone(), tx);
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
        if let Some(tx) = self.ops.remove(id)
            && let Some(rid) = &tx.borrow().request_id
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
            .map(|tx| tx.borrow().clone())
    }

    pub fn get(&self, id: &str) -> Option<Operation> {
        self.ops.get(id).map(|tx| tx.borrow().clone())
    }

    pub fn watch(&self, id: &str) -> Option<watch::Receiver<Operation>> {
        self.ops.get(id).map(watch::Sender::subscribe)
    }

    /// Changes an operation and wakes its watchers.
    pub fn update(&mut self, id: &str, change: impl FnOnce(&mut Operation)) {
        let Some(tx) = self.ops.get(id) else { return };
        tx.send_modify(change);
        if tx.borrow().is_finished() && self.current.as_deref() == Some(id) {
            self.current = None;
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
            if let Some(tx) = self.ops.remove(&oldest)
                && let Some(rid) = &tx.borrow().request_id
            {
                self.by_request.remove(rid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
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

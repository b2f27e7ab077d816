//! What a gRPC handler calls around each request: `read` and `write`
//! identify the caller and check its role (`write` audits a refusal);
//! [`Guard::admission`] makes the hook that writes an admitted call's line in
//! the very step that admits it (and refuses the call if the line cannot be
//! written); `record` audits a call that failed.
use std::sync::Arc;

use tonic::{Request, Status};

use super::{
    audit::{AuditError, AuditLog, Details, Entry},
    callers::{Caller, Policy},
    config::Security,
    role::Role,
};

#[derive(Clone)]
pub struct Guard {
    policy: Arc<Policy>,
    audit: Option<Arc<AuditLog>>,
}

/// Called by whoever admits an operation or task, in the step that admits
/// it and before anything is done or answered, with its id and whether it is
/// a replay of an earlier request id. An error refuses it: nothing is done.
pub type Admit = Box<dyn FnOnce(&str, bool) -> Result<(), String> + Send>;

/// Who asked for a mutating call, and what for: everything its audit line
/// says but the outcome.
#[derive(Clone)]
pub struct Call<'a> {
    pub caller: &'a Caller,
    pub rpc: &'static str,
    pub target: &'a str,
    pub request_id: &'a str,
}

impl Guard {
    /// The guard the services call: the role policy of `security` and its
    /// opened audit log.
    pub fn from_config(security: &Security) -> Result<Self, AuditError> {
        let audit = AuditLog::open(&security.audit_path)?;
        Ok(Self::new(Policy::for_daemon(security), Some(audit)))
    }

    pub fn new(policy: Policy, audit: Option<AuditLog>) -> Self {
        Self {
            policy: Arc::new(policy),
            audit: audit.map(Arc::new),
        }
    }

    /// Opens the audit log again (SIGHUP, after logrotate moved it).
    pub fn reopen_audit(&self) {
        if let Some(audit) = &self.audit {
            audit.reopen();
        }
    }

    /// Admits a read-only call.
    pub fn read<T>(&self, request: &Request<T>, rpc: &str) -> Result<Caller, Status> {
        let caller = self.policy.identify(request)?;
        Policy::authorize(&caller, rpc, Role::ReadOnly)?;
        Ok(caller)
    }

    /// Admits a mutating call, auditing it if refused.
    pub fn write<T>(
        &self,
        request: &Request<T>,
        rpc: &str,
        target: &str,
        request_id: &str,
    ) -> Result<Caller, Status> {
        let caller = match self.policy.identify(request) {
            Ok(caller) => caller,
            Err(e) => {
                self.audit_denied(None, rpc, target, request_id, &e);
                return Err(e);
            }
        };
        if let Err(e) = Policy::authorize(&caller, rpc, Role::Operator) {
            self.audit_denied(Some(&caller), rpc, target, request_id, &e);
            return Err(e);
        }
        Ok(caller)
    }

    fn audit_denied(
        &self,
        caller: Option<&Caller>,
        rpc: &str,
        target: &str,
        request_id: &str,
        e: &Status,
    ) {
        if let Some(audit) = &self.audit {
            // A refusal that cannot be recorded is still a refusal; the
            // failure is logged by the audit log.
            let _ = audit.record(&Entry {
                caller: caller.map_or("unknown", |c| c.identity.as_str()),
                role: &caller.map_or_else(|| "-".to_string(), |c| c.role.to_string()),
                rpc,
                target,
                request_id,
                outcome: format!("denied: {}", e.message()),
                id: None,
                details: Vec::new(),
            });
        }
    }

    /// Audits a console sign-in: the caller its token named (`unknown` when it named none),
    /// the address it came from, and the outcome (`ok`, or why it was refused). A sign-in opens
    /// a session that can operate ODPs, so it is recorded as a mutating call's refusal is.
    pub fn audit_sign_in(&self, caller: Option<&Caller>, from: &str, outcome: String) {
        if let Some(audit) = &self.audit {
            // A sign-in that cannot be recorded is logged by the audit log itself.
            let _ = audit.record(&Entry {
                caller: caller.map_or("unknown", |c| c.identity.as_str()),
                role: &caller.map_or_else(|| "-".to_string(), |c| c.role.to_string()),
                rpc: "ConsoleSignIn",
                target: from,
                request_id: "",
                outcome,
                id: None,
                details: Vec::new(),
            });
        }
    }

    /// The hook that records `call` as admitted (`ok`, with the id of what
    /// it started or acted on, and `details`), for the code that admits it
    /// to run in the same step.
    pub fn admission(&self, call: &Call<'_>, details: Details) -> Admit {
        let Some(audit) = self.audit.clone() else {
            return Box::new(|_, _| Ok(()));
        };
        let caller = call.caller.identity.clone();
        let role = call.caller.role.to_string();
        let rpc = call.rpc;
        let target = call.target.to_string();
        let request_id = call.request_id.to_string();
        Box::new(move |id: &str, replay: bool| {
            let mut details = details;
            if replay {
                // The request id was seen before: nothing new was started.
                details.push(("replay", true.into()));
            }
            audit
                .record(&Entry {
                    caller: &caller,
                    role: &role,
                    rpc,
                    target: &target,
                    request_id: &request_id,
                    outcome: "ok".into(),
                    id: Some(id),
                    details,
                })
                .map_err(|e| e.to_string())
        })
    }

    /// Audits a mutating call that was not admitted: why it failed.
    pub fn record(&self, call: &Call<'_>, details: Details, error: &Status) {
        if let Some(audit) = &self.audit {
            let _ = audit.record(&Entry {
                caller: &call.caller.identity,
                role: &call.caller.role.to_string(),
                rpc: call.rpc,
                target: call.target,
                request_id: call.request_id,
                outcome: format!("error: {:?}: {}", error.code(), error.message()),
                id: None,
                details,
            });
        }
    }
}

/// What a caller is told when its admission could not be recorded.
pub fn not_recorded(reason: &str) -> Status {
    Status::unavailable(format!(
        "{reason}; the call was refused and nothing was done (every admitted call must be audited)"
    ))
}

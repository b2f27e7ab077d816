//! What a gRPC handler calls around each request: `read` and `write`
//! identify the caller and check its role (`write` audits a refusal),
//! `record` audits the outcome of an admitted mutating call.
use std::sync::Arc;

use tonic::{Request, Status};

use super::{
    audit::{AuditLog, Entry},
    roles::{Caller, Policy, Role},
};

#[derive(Clone)]
pub struct Guard {
    policy: Arc<Policy>,
    audit: Option<Arc<AuditLog>>,
}

impl Guard {
    pub fn new(policy: Policy, audit: Option<AuditLog>) -> Self {
        Self {
            policy: Arc::new(policy),
            audit: audit.map(Arc::new),
        }
    }

    /// A guard that lets every caller operate and audits nothing (tests of
    /// the services themselves).
    pub fn open() -> Self {
        Self::new(Policy::new(&Default::default(), false), None)
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
            audit.record(&Entry {
                caller: caller.map_or("unknown", |c| c.identity.as_str()),
                role: &caller.map_or_else(|| "-".to_string(), |c| c.role.to_string()),
                rpc,
                target,
                request_id,
                outcome: format!("denied: {}", e.message()),
                id: None,
            });
        }
    }

    /// Audits the outcome of an admitted mutating call: `Ok` with the id of
    /// the operation or task it started or acted on, or why it failed.
    pub fn record(
        &self,
        caller: &Caller,
        rpc: &str,
        target: &str,
        request_id: &str,
        result: Result<&str, &Status>,
    ) {
        if let Some(audit) = &self.audit {
            audit.record(&Entry {
                caller: &caller.identity,
                role: &caller.role.to_string(),
                rpc,
                target,
                request_id,
                outcome: match result {
                    Ok(_) => "ok".into(),
                    Err(e) => format!("error: {:?}: {}", e.code(), e.message()),
                },
                id: result.ok(),
            });
        }
    }
}

//! Signed-in browsers: a random session id in an HttpOnly, SameSite=Strict
//! cookie stands for the bearer token its user signed in with, for a bounded
//! time; each session has its own CSRF token that every form carries back.
//!
//! The token itself stays in this process's memory: every page and action
//! presents it to the same guard the gRPC calls go through, so a session can
//! never do more than its token could over gRPC, and the audit log names the
//! token's holder.
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use http::HeaderMap;

use crate::security::{callers::Caller, role::Role};

/// The cookie's name.
pub const COOKIE: &str = "odp_session";

/// Sessions held at once: past it, the oldest is signed out (a sign-in
/// storm must not grow the coordinator's memory without bound).
const MAX_SESSIONS: usize = 1024;

#[derive(Clone)]
pub struct Session {
    pub id: String,
    /// The bearer token presented at sign-in.
    pub token: String,
    pub caller: Caller,
    /// What every form of this session must carry back.
    pub csrf: String,
    pub expires: Instant,
}

impl Session {
    pub fn can_act(&self) -> bool {
        self.caller.role >= Role::Operator
    }

    /// Whether `given` is this session's CSRF token, compared in full so
    /// the time taken says nothing of how much of it matched.
    pub fn csrf_matches(&self, given: &str) -> bool {
        let (a, b) = (self.csrf.as_bytes(), given.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the system's random source failed")]
pub struct RandomError(#[source] getrandom::Error);

/// 256 random bits from the operating system, as hex.
pub fn random_hex() -> Result<String, RandomError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(RandomError)?;
    Ok(hex::encode(bytes))
}

pub struct Sessions {
    ttl: Duration,
    /// Whether the cookie is marked Secure (the console serves HTTPS).
    secure: bool,
    live: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    pub fn new(ttl: Duration, secure: bool) -> Self {
        Self {
            ttl,
            secure,
            live: Mutex::new(HashMap::new()),
        }
    }

    /// A new session for `caller`, who signed in with `token`.
    pub fn open(&self, token: String, caller: Caller) -> Result<Session, RandomError> {
        let session = Session {
            id: random_hex()?,
            token,
            caller,
            csrf: random_hex()?,
            expires: Instant::now() + self.ttl,
        };
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        live.retain(|_, s| s.expires > now);
        if live.len() >= MAX_SESSIONS
            && let Some(oldest) = live
                .values()
                .min_by_key(|s| s.expires)
                .map(|s| s.id.clone())
        {
            live.remove(&oldest);
        }
        live.insert(session.id.clone(), session.clone());
        Ok(session)
    }

    /// The live session the request's cookie names, if any.
    pub fn find(&self, headers: &HeaderMap) -> Option<Session> {
        let id = cookie(headers, COOKIE)?;
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        match live.get(id) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                live.remove(id);
                None
            }
            None => None,
        }
    }

    pub fn close(&self, id: &str) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.remove(id);
    }

    /// The `Set-Cookie` value that hands `session` to the browser: script
    /// cannot read it, no other site's page can send it, and it ends with
    /// the session.
    pub fn set_cookie(&self, session: &Session) -> String {
        format!(
            "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
            session.id,
            self.ttl.as_secs(),
            if self.secure { "; Secure" } else { "" }
        )
    }

    /// The `Set-Cookie` value that makes the browser forget its session.
    pub fn clear_cookie(&self) -> String {
        format!(
            "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
            if self.secure { "; Secure" } else { "" }
        )
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(role: Role) -> Caller {
        Caller {
            identity: "token:ops".into(),
            role,
        }
    }

    fn with_cookie(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::COOKIE, value.parse().unwrap());
        h
    }

    #[test]
    fn a_session_is_found_by_its_cookie_and_ends_with_its_time() {
        let sessions = Sessions::new(Duration::from_secs(60), false);
        let s = sessions.open("t".into(), caller(Role::Operator)).unwrap();
        assert_eq!(s.id.len(), 64);
        assert_ne!(s.id, s.csrf);
        let found = sessions
            .find(&with_cookie(&format!("theme=dark; {COOKIE}={}", s.id)))
            .unwrap();
        assert!(found.can_act());
        assert!(
            sessions
                .find(&with_cookie(&format!("{COOKIE}=x")))
                .is_none()
        );
        sessions.close(&s.id);
        assert!(
            sessions
                .find(&with_cookie(&format!("{COOKIE}={}", s.id)))
                .is_none()
        );

        let brief = Sessions::new(Duration::ZERO, false);
        let s = brief.open("t".into(), caller(Role::ReadOnly)).unwrap();
        assert!(
            brief
                .find(&with_cookie(&format!("{COOKIE}={}", s.id)))
                .is_none()
        );
    }

    #[test]
    fn the_cookie_is_http_only_and_same_site_strict() {
        let sessions = Sessions::new(Duration::from_secs(60), true);
        let s = sessions.open("t".into(), caller(Role::ReadOnly)).unwrap();
        let c = sessions.set_cookie(&s);
        for part in ["HttpOnly", "SameSite=Strict", "Max-Age=60", "Secure"] {
            assert!(c.contains(part), "{c}");
        }
        assert!(!s.can_act());
    }

    #[test]
    fn csrf_tokens_must_match_in_full() {
        let sessions = Sessions::new(Duration::from_secs(60), false);
        let s = sessions.open("t".into(), caller(Role::Operator)).unwrap();
        assert!(s.csrf_matches(&s.csrf.clone()));
        assert!(!s.csrf_matches(&s.csrf[..63]));
        assert!(!s.csrf_matches(""));
    }

    #[test]
    fn sessions_are_bounded() {
        let sessions = Sessions::new(Duration::from_secs(60), false);
        for _ in 0..MAX_SESSIONS + 5 {
            sessions.open("t".into(), caller(Role::ReadOnly)).unwrap();
        }
        assert_eq!(sessions.live.lock().unwrap().len(), MAX_SESSIONS);
    }
}

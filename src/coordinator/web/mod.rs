//! The console's pages in a browser, served by the coordinator on `[web]
//! listen`: the clusters (the OBProxy page), a cluster's Overview with the
//! Stop All / Start All / Restart All dialogs, the tasks and a task's live
//! progress.
//!
//! No second source of truth: every page and every action is a call to the
//! coordinator's own gRPC service object, made in-process with the bearer
//! token its user signed in with, so the same guard admits it, the same
//! validation checks it, the same task engine runs it and the same audit
//! log records it.
//!
//! [`config`] (the `[web]` section), [`session`] (cookies, CSRF tokens),
//! [`sign_in_limit`] (wrong tokens per address), [`listener`] (connections, TLS), [`html`] (escaping, the page frame),
//! [`pages`] (clusters and Overview), [`task_pages`] (tasks), [`actions`]
//! (the forms' POSTs), [`events`] (a task's live feed).
pub mod actions;
pub use super::web_config as config;
pub mod events;
pub mod html;
pub mod listener;
pub mod pages;
pub mod session;
pub mod sign_in_limit;
pub mod task_pages;

use std::sync::Arc;

use axum::{
    Extension, Form, Router,
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Redirect, Response},
    routing::{get, post},
};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

use self::session::{Session, Sessions};
use super::service::CoordinatorService;
use crate::{
    common::grpc_server::conn::{Peer, PeerKind},
    proto::coordinator::coordinator_server::Coordinator as _,
    security::guard::Guard,
};

/// What every handler shares.
pub struct Console {
    /// The gRPC service itself, called in-process.
    pub service: CoordinatorService,
    pub guard: Guard,
    pub sessions: Sessions,
    /// Wrong tokens per client address: past a few a minute, sign-ins are refused unread.
    pub sign_in_limit: sign_in_limit::SignInLimit,
    /// Ends the task pages' live feeds when the daemon stops.
    pub shutdown: CancellationToken,
}

pub type Shared = Arc<Console>;

/// Forms are a few short fields.
const MAX_FORM_BYTES: usize = 16 * 1024;

impl Console {
    /// A request to the gRPC service carrying the session's token, as a
    /// gRPC client would; without a session it carries no credentials (and
    /// the guard refuses, and audits, a mutating call).
    pub fn request<T>(&self, session: Option<&Session>, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(value) = session.and_then(|s| format!("Bearer {}", s.token).parse().ok()) {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }
}

/// Binds the console's listener and builds its routes over `service` (the
/// gRPC service object, a second handle on the same task engine).
pub async fn start(
    web: &config::WebConfig,
    tls: Option<&crate::security::config::TlsConfig>,
    service: CoordinatorService,
    guard: Guard,
    shutdown: CancellationToken,
) -> Result<(listener::WebListener, Router), listener::ListenError> {
    let listener = listener::WebListener::bind(web.listen, tls.filter(|_| web.tls)).await?;
    let console = Arc::new(Console {
        service,
        guard,
        sessions: Sessions::new(web.session_ttl, web.tls),
        sign_in_limit: sign_in_limit::SignInLimit::new(),
        shutdown,
    });
    Ok((listener, router(console)))
}

/// The console's routes over `console`.
pub fn router(console: Shared) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/signin", get(signin_page).post(signin))
        .route("/signout", post(signout))
        .route("/clusters", get(pages::clusters))
        .route("/clusters/{name}", get(pages::overview))
        .route("/clusters/{name}/{action}", post(actions::cluster))
        .route("/tasks", get(task_pages::list))
        .route("/tasks/{id}", get(task_pages::show))
        .route("/tasks/{id}/events", get(events::task))
        .route("/tasks/{id}/{action}", post(actions::task))
        .route("/assets/console.css", get(css))
        .route("/assets/console.js", get(js))
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(axum::middleware::map_response(hardened))
        .with_state(console)
}

/// Every answer: no inline script or style, no framing, no caching of
/// pages that show a signed-in user's view.
async fn hardened(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let set = |headers: &mut HeaderMap, name, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    if !headers.contains_key(header::CACHE_CONTROL) {
        set(headers, header::CACHE_CONTROL, "no-store");
    }
    response
}

async fn css() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!("assets/console.css"),
    )
}

async fn js() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("assets/console.js"),
    )
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "private, max-age=300"),
        ],
        body,
    )
        .into_response()
}

async fn root(State(console): State<Shared>, headers: HeaderMap) -> Response {
    match console.sessions.find(&headers) {
        Some(_) => Redirect::to("/clusters").into_response(),
        None => Redirect::to("/signin").into_response(),
    }
}

/// The signed-in session, or the sign-in page.
pub fn signed_in(console: &Console, headers: &HeaderMap) -> Result<Session, Redirect> {
    console
        .sessions
        .find(headers)
        .ok_or_else(|| Redirect::to("/signin"))
}

fn signin_form(message: Option<&str>) -> String {
    let message = message
        .map(|m| format!("<p class=\"error\" id=\"error\">{}</p>", html::esc(m)))
        .unwrap_or_default();
    html::page(
        "Sign in",
        None,
        &format!(
            "<section class=\"signin\"><h1>Sign in</h1>{message}\
             <form method=\"post\" action=\"/signin\">\
             <label>Bearer token <input type=\"password\" name=\"token\" id=\"token\" \
             autocomplete=\"off\" required autofocus></label>\
             <button id=\"signin\">Sign in</button></form>\
             <p class=\"hint\">A token from the coordinator's [[auth.tokens]]: READ_ONLY to look, \
             OBPROXY_MANAGER to act.</p></section>"
        ),
    )
}

async fn signin_page() -> Html<String> {
    Html(signin_form(None))
}

#[derive(Deserialize)]
pub struct SignIn {
    token: String,
}

/// The address a request came from; the unspecified address when the connection has none
/// (a request handed to the router without going through the listener).
fn client_ip(peer: Option<&Peer>) -> std::net::IpAddr {
    match peer.map(|p| &p.kind) {
        Some(PeerKind::Tcp {
            remote: Some(addr), ..
        }) => addr.ip(),
        _ => std::net::Ipv4Addr::UNSPECIFIED.into(),
    }
}

/// Checks the token with the guard, as a gRPC call carrying it would be,
/// and opens a session for whoever it names. Every attempt is audited with
/// the address it came from; an address that sent too many wrong tokens is
/// refused before its token is read.
async fn signin(
    State(console): State<Shared>,
    peer: Option<Extension<Peer>>,
    Form(form): Form<SignIn>,
) -> Response {
    let ip = client_ip(peer.as_ref().map(|Extension(p)| p));
    let from = ip.to_string();
    let refused =
        |status: StatusCode, text: &str| (status, Html(signin_form(Some(text)))).into_response();
    let now = std::time::Instant::now();
    if let Err(wait) = console.sign_in_limit.check(ip, now) {
        let secs = wait.as_secs().max(1);
        console.guard.audit_sign_in(
            None,
            &from,
            format!("denied: too many wrong tokens from this address; retry in {secs} s"),
        );
        let mut answer = refused(
            StatusCode::TOO_MANY_REQUESTS,
            &format!("Too many wrong tokens from your address. Try again in {secs} s."),
        );
        if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
            answer.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return answer;
    }
    let token = form.token.trim().to_string();
    let wrong = |reason: &str| {
        console.sign_in_limit.failed(ip, now);
        console
            .guard
            .audit_sign_in(None, &from, format!("denied: {reason}"));
        tracing::warn!(reason, from = %from, "console sign-in refused");
        refused(StatusCode::UNAUTHORIZED, "That token is not valid.")
    };
    let Ok(value) = format!("Bearer {token}").parse() else {
        return wrong("the token is not a valid header value");
    };
    let mut request = tonic::Request::new(());
    request.metadata_mut().insert("authorization", value);
    let caller = match console.guard.read(&request, "ConsoleSignIn") {
        Ok(caller) => caller,
        Err(status) => return wrong(status.message()),
    };
    console.sign_in_limit.succeeded(ip);
    let session = match console.sessions.open(token, caller.clone()) {
        Ok(s) => s,
        Err(e) => {
            let error = crate::common::error_chain::describe(&e);
            tracing::error!(%error, "console sign-in failed");
            console
                .guard
                .audit_sign_in(Some(&caller), &from, format!("error: {error}"));
            return refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "Cannot open a session now.",
            );
        }
    };
    console
        .guard
        .audit_sign_in(Some(&caller), &from, "ok".to_string());
    tracing::info!(caller = %caller.identity, role = %caller.role, from = %from, "console sign-in");
    (
        [(header::SET_COOKIE, console.sessions.set_cookie(&session))],
        Redirect::to("/clusters"),
    )
        .into_response()
}

#[derive(Deserialize)]
pub struct Csrf {
    #[serde(default)]
    csrf: String,
}

async fn signout(
    State(console): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<Csrf>,
) -> Response {
    if let Some(session) = console.sessions.find(&headers) {
        if !session.csrf_matches(&form.csrf) {
            return error_page(
                Some(&session),
                &Status::permission_denied("csrf: the form's token is missing or wrong"),
            );
        }
        console.sessions.close(&session.id);
    }
    (
        [(header::SET_COOKIE, console.sessions.clear_cookie())],
        Redirect::to("/signin"),
    )
        .into_response()
}

/// A refused or failed call, as a page with the service's own words.
pub fn error_page(session: Option<&Session>, status: &Status) -> Response {
    let code = match status.code() {
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::FailedPrecondition | Code::AlreadyExists => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let body = format!(
        "<section class=\"refused\"><h1>{}</h1><p class=\"error\" id=\"error\">{}</p>\
         <p><a href=\"/clusters\">Back to the clusters</a></p></section>",
        code.canonical_reason().unwrap_or("Error"),
        html::esc(status.message())
    );
    (code, Html(html::page("Refused", session, &body))).into_response()
}

/// The coordinator's clusters, through ListClusters.
pub async fn cluster_names(console: &Console, session: &Session) -> Result<Vec<String>, Status> {
    let list = console
        .service
        .list_clusters(console.request(
            Some(session),
            crate::proto::coordinator::ListClustersRequest {},
        ))
        .await?
        .into_inner();
    Ok(list.clusters.into_iter().map(|c| c.name).collect())
}

//! The OBProxy page (every cluster with its ODPs counted by state) and a
//! cluster's Overview (its ODPs, and the Stop All / Start All / Restart All
//! dialogs with the console's rules applied before anything is sent).
use std::fmt::Write;

use axum::{
    extract::{Path, Query, State},
    http::HeaderMap,
    response::{Html, IntoResponse, Response},
};
use serde::Deserialize;

use super::{
    Console, Shared, cluster_names, error_page,
    html::{self, badge, esc, seg},
    session::Session,
    signed_in,
};
use crate::{
    coordinator::{
        rules::{self, MIN_HOT_VERSION},
        task::{Kind, Mode},
    },
    proto::{agent as apb, coordinator as pb, coordinator::coordinator_server::Coordinator as _},
};

/// GetClusterStatus for `name`, as the session's user.
pub async fn status(
    console: &Console,
    session: &Session,
    name: &str,
) -> Result<pb::ClusterStatus, tonic::Status> {
    let request = pb::GetClusterStatusRequest {
        cluster: name.to_string(),
    };
    Ok(console
        .service
        .get_cluster_status(console.request(Some(session), request))
        .await?
        .into_inner())
}

/// The OBProxy page: each cluster, its ODP count, how many are Running,
/// Stopped or otherwise, and its actions.
pub async fn clusters(State(console): State<Shared>, headers: HeaderMap) -> Response {
    let session = match signed_in(&console, &headers) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let names = match cluster_names(&console, &session).await {
        Ok(n) => n,
        Err(e) => return error_page(Some(&session), &e),
    };
    let statuses =
        futures::future::join_all(names.iter().map(|n| status(&console, &session, n))).await;
    let mut rows = String::new();
    for (name, status) in names.iter().zip(statuses) {
        let (total, running, stopped, other) = match &status {
            Ok(s) => {
                let count = |st: apb::ProxyState| s.odps.iter().filter(|o| o.state() == st).count();
                let running = count(apb::ProxyState::Running);
                let stopped = count(apb::ProxyState::Stopped);
                (
                    s.odps.len(),
                    running,
                    stopped,
                    s.odps.len() - running - stopped,
                )
            }
            Err(_) => (0, 0, 0, 0),
        };
        let link = format!("/clusters/{}", seg(name));
        let more = if session.can_act() {
            format!(
                "<details class=\"more\"><summary>More</summary><div class=\"menu\">\
                 <a href=\"{link}?dialog=start-all\">Start All</a>\
                 <a href=\"{link}?dialog=stop-all\">Stop All</a>\
                 <a href=\"{link}?dialog=restart-all\">Restart All</a></div></details>"
            )
        } else {
            String::new()
        };
        let _ = write!(
            rows,
            "<tr data-cluster=\"{n}\"><td><a href=\"{link}\">{n}</a></td><td class=\"num\">{total}</td>\
             <td class=\"num running\">{running}</td><td class=\"num stopped\">{stopped}</td>\
             <td class=\"num other\">{other}</td><td class=\"actions\"><a href=\"{link}\">Overview</a>{more}</td></tr>",
            n = esc(name)
        );
    }
    let body = format!(
        "<h1>OBProxy</h1><table id=\"clusters\"><thead><tr><th>Cluster</th><th>ODPs</th>\
         <th>Running</th><th>Stopped</th><th>Other</th><th>Actions</th></tr></thead>\
         <tbody>{rows}</tbody></table>"
    );
    Html(html::page("OBProxy", Some(&session), &body)).into_response()
}

#[derive(Deserialize)]
pub struct OverviewQuery {
    /// A dialog to open at once (from the OBProxy page's More menu).
    #[serde(default)]
    dialog: Option<String>,
}

/// A cluster's Overview: its OBProxies and, for an operator, the buttons
/// and their dialogs.
pub async fn overview(
    State(console): State<Shared>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(query): Query<OverviewQuery>,
) -> Response {
    let session = match signed_in(&console, &headers) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let status = match status(&console, &session, &name).await {
        Ok(s) => s,
        Err(e) => return error_page(Some(&session), &e),
    };
    let mut rows = String::new();
    for odp in &status.odps {
        rows.push_str(&odp_row(odp));
    }
    let mut body = format!(
        "<h1>Overview <span class=\"cluster\" id=\"cluster-name\">{n}</span></h1>\
         <p class=\"sub\"><a href=\"/tasks?cluster={s}\">Tasks of this cluster</a></p>",
        n = esc(&status.cluster),
        s = seg(&status.cluster)
    );
    if session.can_act() {
        body.push_str(&buttons(&session, &status, query.dialog.as_deref()));
    }
    let _ = write!(
        body,
        "<h2>OBProxies</h2><table id=\"odps\"><thead><tr><th>Address</th><th>State</th>\
         <th>Version</th><th>PID</th><th>Uptime</th><th>Connections</th><th>Draining</th>\
         </tr></thead><tbody>{rows}</tbody></table>"
    );
    Html(html::page(
        &format!("Overview {}", status.cluster),
        Some(&session),
        &body,
    ))
    .into_response()
}

fn odp_row(odp: &pb::OdpStatus) -> String {
    let state = html::proxy_state(odp.state);
    let s = odp.status.as_ref();
    let serving = s.and_then(|s| s.serving.as_ref());
    let connections = serving.map_or("-".to_string(), |p| p.open_connections.to_string());
    let draining = s.map_or_else(String::new, |s| {
        s.draining
            .iter()
            .filter_map(|d| d.process.as_ref().map(|p| (p, d.deadline.as_ref())))
            .map(|(p, deadline)| {
                format!(
                    "<div class=\"draining\">pid {} · {} conn. · killed at {}</div>",
                    p.pid,
                    p.open_connections,
                    html::time(deadline)
                )
            })
            .collect()
    });
    let error = if odp.error.is_empty() {
        String::new()
    } else {
        format!("<div class=\"error\">{}</div>", esc(&odp.error))
    };
    format!(
        "<tr data-agent=\"{a}\"><td class=\"addr\">{a}{error}</td><td class=\"state\">{state}</td>\
         <td class=\"version\">{v}</td><td class=\"num pid\">{pid}</td><td>{up}</td>\
         <td class=\"num\">{connections}</td><td>{draining}</td></tr>",
        a = esc(&odp.agent),
        state = badge(&state),
        v = if odp.version.is_empty() {
            "-".to_string()
        } else {
            esc(&odp.version)
        },
        pid = if odp.pid == 0 {
            "-".to_string()
        } else {
            odp.pid.to_string()
        },
        up = html::duration(s.and_then(|s| s.uptime.as_ref())),
    )
}

/// Why an operation may not run now, by the console's rules, from the
/// status just shown (the task engine checks again when it is asked).
fn refusal(status: &pb::ClusterStatus, kind: Kind, mode: Option<Mode>) -> Option<String> {
    let odps: Vec<rules::Odp<'_>> = status
        .odps
        .iter()
        .map(|o| rules::Odp {
            agent: &o.agent,
            status: o.status.as_ref(),
        })
        .collect();
    rules::check(kind, mode, &odps).err()
}

/// The Start All, Stop All and Restart All buttons and their dialogs.
fn buttons(session: &Session, status: &pb::ClusterStatus, open: Option<&str>) -> String {
    let stop_refused = refusal(status, Kind::StopAll, None);
    let hot_refused = refusal(status, Kind::RestartAll, Some(Mode::Hot));
    let mut out = String::from("<div class=\"buttons\">");
    out.push_str(
        "<button type=\"button\" id=\"open-start-all\" data-dialog=\"start-all\">Start All</button>",
    );
    match &stop_refused {
        None => out.push_str(
            "<button type=\"button\" id=\"open-stop-all\" data-dialog=\"stop-all\">Stop All</button>",
        ),
        Some(reason) => {
            let _ = write!(
                out,
                "<button type=\"button\" id=\"open-stop-all\" disabled title=\"{r}\">Stop All</button>\
                 <span class=\"reason\" id=\"stop-all-refused\">{r}</span>",
                r = esc(reason)
            );
        }
    }
    out.push_str(
        "<button type=\"button\" id=\"open-restart-all\" data-dialog=\"restart-all\">Restart All</button></div>",
    );
    let n = status.odps.len();
    let cluster = esc(&status.cluster);
    let action = |what: &str| format!("/clusters/{}/{what}", seg(&status.cluster));
    let opened = |what: &str| {
        if open == Some(what) {
            " data-open=\"1\""
        } else {
            ""
        }
    };
    let _ = write!(
        out,
        "<dialog id=\"start-all\"{o}>{f}</dialog>",
        o = opened("start-all"),
        f = html::form(
            session,
            &action("start-all"),
            "",
            &format!(
                "<h2>Start All</h2><p>Start the {n} ODPs of <b>{cluster}</b> that are stopped.</p>{}{}",
                rollout_fields(),
                confirm("start-all")
            )
        )
    );
    if stop_refused.is_none() {
        let _ = write!(
            out,
            "<dialog id=\"stop-all\"{o}>{f}</dialog>",
            o = opened("stop-all"),
            f = html::form(
                session,
                &action("stop-all"),
                "",
                &format!(
                    "<h2>Stop All</h2><p class=\"warn\">Stop all {n} ODPs of <b>{cluster}</b>: \
                     their listeners close and clients are refused until they start again.</p>{}{}",
                    rollout_fields(),
                    confirm("stop-all")
                )
            )
        );
    }
    let (hot, force, reason) = match &hot_refused {
        None => (" checked", "", String::new()),
        Some(r) => (
            " disabled",
            " checked",
            format!(
                "<p class=\"reason\" id=\"restart-refused\">Restart is not offered: {}. \
                 Restart needs every ODP Running at {MIN_HOT_VERSION} or later; Force Restart \
                 cuts sessions (give a batch size to roll without an outage).</p>",
                esc(r)
            ),
        ),
    };
    let _ = write!(
        out,
        "<dialog id=\"restart-all\"{o}>{f}</dialog>",
        o = opened("restart-all"),
        f = html::form(
            session,
            &action("restart-all"),
            "",
            &format!(
                "<h2>Restart All</h2><p>Restart the {n} ODPs of <b>{cluster}</b>.</p>\
                 <fieldset class=\"modes\"><legend>Mode</legend>\
                 <label><input type=\"radio\" name=\"mode\" value=\"hot\" id=\"mode-hot\"{hot}> Restart \
                 <small>(the new process takes over the listeners while the old one drains)</small></label>\
                 <label><input type=\"radio\" name=\"mode\" value=\"force\" id=\"mode-force\"{force}> Force Restart \
                 <small>(the process is killed; new connections wait in the backlog)</small></label>\
                 </fieldset>{reason}{}\
                 <label class=\"hot-only\">Exit timeout <input name=\"exit_timeout\" id=\"exit_timeout\" \
                 placeholder=\"the agents' own\" pattern=\"[0-9a-z ]*\"></label>{}",
                rollout_fields(),
                confirm("restart-all")
            )
        )
    );
    out
}

/// Batch size, pause and failure budget, as every operation takes them.
fn rollout_fields() -> String {
    let id = super::session::random_hex()
        .map(|h| format!("console-{}", &h[..32]))
        .unwrap_or_default();
    format!(
        "<input type=\"hidden\" name=\"request_id\" value=\"{id}\">\
         <div class=\"fields\">\
         <label>Batch size <input type=\"number\" name=\"batch_size\" id=\"batch_size\" min=\"0\" value=\"0\"> \
         <small>ODPs at a time (0: all at once)</small></label>\
         <label>Pause <input name=\"pause\" id=\"pause\" value=\"0s\"> <small>between batches</small></label>\
         <label>Failure budget <input type=\"number\" name=\"max_failures\" id=\"max_failures\" min=\"0\" value=\"0\"> \
         <small>failed ODPs before no further batch starts</small></label></div>"
    )
}

fn confirm(what: &str) -> String {
    format!(
        "<div class=\"confirm\"><button type=\"button\" class=\"secondary\" data-close>Cancel</button>\
         <button type=\"submit\" id=\"confirm-{what}\">Confirm</button></div>"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::{callers::Caller, role::Role};

    fn odp(agent: &str, state: apb::ProxyState, version: &str) -> pb::OdpStatus {
        pb::OdpStatus {
            agent: agent.into(),
            state: state as i32,
            version: version.into(),
            status: Some(apb::ProxyStatus {
                state: state as i32,
                version: version.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn session() -> Session {
        Session {
            id: "s".into(),
            token: "t".into(),
            caller: Caller {
                identity: "token:ops".into(),
                role: Role::Operator,
            },
            csrf: "c".into(),
            expires: std::time::Instant::now(),
        }
    }

    fn cluster(odps: Vec<pb::OdpStatus>) -> pb::ClusterStatus {
        pb::ClusterStatus {
            cluster: "prod".into(),
            odps,
        }
    }

    #[test]
    fn stop_all_is_not_offered_while_an_odp_is_upgrading() {
        let status = cluster(vec![
            odp("a:1", apb::ProxyState::Running, "4.3.1.0"),
            odp("b:1", apb::ProxyState::Upgrading, "4.3.1.0"),
        ]);
        let html = buttons(&session(), &status, None);
        assert!(html.contains("id=\"open-stop-all\" disabled"), "{html}");
        assert!(html.contains("Stop All is refused while ODPs are upgrading: b:1"));
        assert!(!html.contains("<dialog id=\"stop-all\""));
        // Restart and Start are still offered.
        assert!(html.contains("<dialog id=\"restart-all\""));
    }

    #[test]
    fn restart_is_offered_only_when_every_odp_runs_321_or_later() {
        let good = cluster(vec![odp("a:1", apb::ProxyState::Running, "3.2.1")]);
        let html = buttons(&session(), &good, Some("restart-all"));
        assert!(html.contains("id=\"mode-hot\" checked"), "{html}");
        assert!(html.contains("<dialog id=\"restart-all\" data-open=\"1\">"));
        assert!(!html.contains("restart-refused"));
        let stopped = cluster(vec![
            odp("a:1", apb::ProxyState::Running, "4.3.1.0"),
            odp("b:1", apb::ProxyState::Stopped, ""),
        ]);
        let html = buttons(&session(), &stopped, None);
        assert!(html.contains("id=\"mode-hot\" disabled"), "{html}");
        assert!(html.contains("id=\"mode-force\" checked"));
        assert!(html.contains("b:1 is STOPPED"), "{html}");
    }

    #[test]
    fn every_form_carries_the_csrf_token() {
        let status = cluster(vec![odp("a:1", apb::ProxyState::Running, "4.3.1.0")]);
        let html = buttons(&session(), &status, None);
        let forms = html.matches("<form method=\"post\"").count();
        assert_eq!(forms, 3);
        assert_eq!(html.matches("name=\"csrf\" value=\"c\"").count(), forms);
    }
}

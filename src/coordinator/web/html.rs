//! The pieces every page is made of: escaping, the page frame, forms that
//! carry the session's CSRF token, and how states, times and durations read.
use std::{fmt::Write, time::Duration};

use super::session::Session;
use crate::proto::{agent as apb, coordinator as pb};

/// Text made safe for HTML content and quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A path segment (a cluster name or a task id, both plain by
/// construction) made safe for a URL all the same.
pub fn seg(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// A whole page: the header with who is signed in, then `body`. Scripts and
/// styles come only from the embedded assets (the pages' policy forbids
/// inline ones).
pub fn page(title: &str, session: Option<&Session>, body: &str) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · ODP console</title>\
         <link rel=\"stylesheet\" href=\"/assets/console.css\">\
         <script src=\"/assets/console.js\" defer></script></head><body>\
         <header><a class=\"brand\" href=\"/clusters\">ODP console</a>",
        title = esc(title)
    );
    if let Some(s) = session {
        let _ = write!(
            out,
            "<nav><a href=\"/clusters\">OBProxy</a><a href=\"/tasks\">Tasks</a></nav>\
             <div class=\"who\"><span id=\"caller\">{}</span> <span class=\"role\" id=\"role\">{}</span>{}</div>",
            esc(&s.caller.identity),
            s.caller.role,
            form(
                s,
                "/signout",
                "",
                "<button class=\"link\">Sign out</button>"
            )
        );
    }
    let _ = write!(out, "</header><main>{body}</main></body></html>");
    out
}

/// A POST form carrying the session's CSRF token.
pub fn form(session: &Session, action: &str, attrs: &str, inner: &str) -> String {
    format!(
        "<form method=\"post\" action=\"{}\" {attrs}><input type=\"hidden\" name=\"csrf\" value=\"{}\">{inner}</form>",
        esc(action),
        esc(&session.csrf)
    )
}

/// `RUNNING`, `STOPPED`... as the console shows them: `Running`, `Stopped`.
pub fn title_case(name: &str) -> String {
    let mut out = String::new();
    for (i, word) in name.split('_').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            out.push(first.to_ascii_uppercase());
            out.extend(chars.map(|c| c.to_ascii_lowercase()));
        }
    }
    out
}

pub fn proxy_state(state: i32) -> String {
    let name = apb::ProxyState::try_from(state)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("PROXY_STATE_")
                .to_string()
        })
        .unwrap_or_else(|_| format!("STATE_{state}"));
    title_case(&name)
}

/// A task's state as the console names it: a finished task is Completed.
pub fn task_state(state: i32) -> &'static str {
    match pb::TaskState::try_from(state) {
        Ok(pb::TaskState::Running) => "Running",
        Ok(pb::TaskState::Succeeded) => "Completed",
        Ok(pb::TaskState::Failed) => "Failed",
        Ok(pb::TaskState::Cancelled) => "Cancelled",
        Ok(pb::TaskState::RolledBack) => "Rolled Back",
        _ => "Unknown",
    }
}

pub fn subtask_state(state: i32) -> String {
    let name = pb::SubtaskState::try_from(state)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("SUBTASK_STATE_")
                .to_string()
        })
        .unwrap_or_else(|_| format!("STATE_{state}"));
    title_case(&name)
}

pub fn task_kind(kind: i32, mode: i32) -> String {
    let kind = match pb::TaskKind::try_from(kind) {
        Ok(pb::TaskKind::StopAll) => "Stop All",
        Ok(pb::TaskKind::StartAll) => "Start All",
        Ok(pb::TaskKind::RestartAll) => "Restart All",
        Ok(pb::TaskKind::UpgradeAll) => "Upgrade All",
        _ => "Task",
    };
    match apb::RestartMode::try_from(mode) {
        Ok(apb::RestartMode::Hot) => format!("{kind} (Restart)"),
        Ok(apb::RestartMode::Force) => format!("{kind} (Force Restart)"),
        _ => kind.to_string(),
    }
}

/// A state's badge, drawn by what the state means for an ODP.
pub fn badge(text: &str) -> String {
    let class = match text {
        "Running" | "Completed" | "Succeeded" => "ok",
        "Failed" | "Unreachable" | "Unavailable" => "bad",
        // Rolled back: serving as before the task, which did not happen.
        "Stopped" | "Cancelled" | "Skipped" | "Rolled Back" => "off",
        _ => "busy",
    };
    badge_as(text, class)
}

/// A task's badge: a Running task is work under way, not a healthy ODP.
pub fn task_badge(text: &str) -> String {
    match text {
        "Running" => badge_as(text, "busy"),
        _ => badge(text),
    }
}

fn badge_as(text: &str, class: &str) -> String {
    format!(
        "<span class=\"badge {class}\" data-state=\"{t}\">{t}</span>",
        t = esc(text)
    )
}

/// A duration to the second, e.g. `3h 2m 5s`.
pub fn duration(d: Option<&prost_types::Duration>) -> String {
    match d {
        Some(d) if d.seconds >= 0 => {
            humantime::format_duration(Duration::from_secs(d.seconds as u64)).to_string()
        }
        _ => "-".into(),
    }
}

/// A wall-clock time as RFC 3339 to the second (UTC).
pub fn time(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(|t| {
        let secs = u64::try_from(t.seconds).ok()?;
        let at = std::time::UNIX_EPOCH + Duration::from_secs(secs);
        Some(humantime::format_rfc3339_seconds(at).to_string())
    })
    .unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_segments_are_escaped() {
        assert_eq!(
            esc("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
        assert_eq!(seg("prod-1.a_b"), "prod-1.a_b");
        assert_eq!(seg("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn states_read_as_the_console_names_them() {
        assert_eq!(proxy_state(apb::ProxyState::Running as i32), "Running");
        assert_eq!(task_state(pb::TaskState::Succeeded as i32), "Completed");
        assert_eq!(
            task_kind(
                pb::TaskKind::RestartAll as i32,
                apb::RestartMode::Force as i32
            ),
            "Restart All (Force Restart)"
        );
        assert_eq!(title_case("ROLLED_BACK"), "Rolled Back");
        assert_eq!(task_state(pb::TaskState::RolledBack as i32), "Rolled Back");
        assert_eq!(
            subtask_state(pb::SubtaskState::RollingBack as i32),
            "Rolling Back"
        );
        assert_eq!(task_kind(pb::TaskKind::UpgradeAll as i32, 0), "Upgrade All");
        assert!(badge("Rolled Back").contains("badge off"));
    }
}

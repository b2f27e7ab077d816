//! What odpctl shows: the live progress of a task per ODP, and tasks and
//! cluster status as tables for people or JSON for scripts.
use std::{collections::HashMap, time::Duration};

use anyhow::Result;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use odp_agent::proto::{agent as apb, coordinator as pb};
use serde_json::{Value, json};

pub struct Progress {
    multi: MultiProgress,
    overall: ProgressBar,
    bars: HashMap<String, ProgressBar>,
}

impl Progress {
    pub fn new(task: &pb::Task) -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let overall = multi.add(ProgressBar::new(task.subtasks.len() as u64));
        overall.set_style(
            ProgressStyle::with_template("{prefix:.bold} [{bar:30}] {pos}/{len} ODPs  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        overall.set_prefix(format!("{} {}", kind_name(task), task.cluster));
        let style = ProgressStyle::with_template("  {spinner} {prefix:<24} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let bars = task
            .subtasks
            .iter()
            .map(|s| {
                let bar = multi.add(ProgressBar::new_spinner());
                bar.set_style(style.clone());
                bar.set_prefix(s.agent.clone());
                bar.enable_steady_tick(Duration::from_millis(120));
                (s.agent.clone(), bar)
            })
            .collect();
        let p = Self {
            multi,
            overall,
            bars,
        };
        p.update(task);
        p
    }

    pub fn update(&self, t: &pb::Task) {
        let done = t
            .subtasks
            .iter()
            .filter(|s| {
                !matches!(
                    s.state(),
                    pb::SubtaskState::Pending
                        | pb::SubtaskState::Running
                        | pb::SubtaskState::RollingBack
                )
            })
            .count();
        self.overall.set_position(done as u64);
        self.overall.set_message(format!(
            "batch {}/{}  {}",
            t.current_batch,
            t.batches,
            short(t.state().as_str_name(), "TASK_STATE_")
        ));
        for s in &t.subtasks {
            if let Some(bar) = self.bars.get(&s.agent) {
                let mut msg = format!(
                    "batch {} {}",
                    s.batch,
                    short(s.state().as_str_name(), "SUBTASK_STATE_")
                );
                if !s.version.is_empty() {
                    msg.push_str(&format!("  {}", s.version));
                }
                if let Some(b) = &s.balancer {
                    msg.push_str(&format!("  lb {}", balancer_state(b.state())));
                    if !b.drain.is_empty() {
                        msg.push_str(&format!(" ({})", b.drain));
                    }
                }
                if !s.last_error.is_empty() {
                    msg.push_str(&format!("  {}", s.last_error));
                }
                bar.set_message(msg);
                if !matches!(
                    s.state(),
                    pb::SubtaskState::Pending
                        | pb::SubtaskState::Running
                        | pb::SubtaskState::RollingBack
                ) && !bar.is_finished()
                {
                    bar.finish();
                }
            }
        }
    }

    pub fn finish(self) {
        for bar in self.bars.values() {
            bar.finish();
        }
        self.overall.finish();
        let _ = self.multi.clear();
    }
}

pub fn short<'a>(name: &'a str, prefix: &str) -> &'a str {
    name.trim_start_matches(prefix)
}

pub fn kind_name(t: &pb::Task) -> String {
    match t.kind() {
        pb::TaskKind::StopAll => "stop".into(),
        pb::TaskKind::StartAll => "start".into(),
        pb::TaskKind::RestartAll => match t.mode() {
            apb::RestartMode::Force => "restart-force".into(),
            _ => "restart-hot".into(),
        },
        pb::TaskKind::UpgradeAll => "upgrade".into(),
        pb::TaskKind::Unspecified => "?".into(),
    }
}

pub fn timestamp(t: &prost_types::Timestamp) -> String {
    let st = std::time::UNIX_EPOCH + Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32);
    humantime::format_rfc3339_seconds(st).to_string()
}

pub fn print_task(t: &pb::Task, json_out: bool) -> Result<()> {
    if json_out {
        println!("{}", serde_json::to_string_pretty(&task_json(t))?);
        return Ok(());
    }
    println!(
        "task {}  {} {}  {}  batches {}/{}",
        t.id,
        kind_name(t),
        t.cluster,
        short(t.state().as_str_name(), "TASK_STATE_"),
        t.current_batch,
        t.batches
    );
    if let Some(u) = &t.upgrade {
        println!(
            "onto {} (version {}, sha256 {}), canary {} held {}",
            u.binary,
            u.version,
            u.binary_sha256,
            u.canary_size,
            humantime::format_duration(u.canary_wait.as_ref().map_or(Duration::ZERO, |d| {
                Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32)
            }))
        );
    }
    if !t.error.is_empty() {
        println!("error: {}", t.error);
    }
    println!(
        "{:<24} {:>5} {:<13} {:>8} {:>8} {:<10}  ERROR",
        "ODP", "BATCH", "STATE", "ATTEMPTS", "PID", "VERSION"
    );
    for s in &t.subtasks {
        println!(
            "{:<24} {:>5} {:<13} {:>8} {:>8} {:<10}  {}",
            s.agent,
            s.batch,
            short(s.state().as_str_name(), "SUBTASK_STATE_"),
            s.attempts,
            s.pid,
            s.version,
            s.last_error
        );
        if let Some(b) = &s.balancer {
            println!(
                "{:<24} lb server {} {}  {}",
                "",
                b.server,
                balancer_state(b.state()),
                b.drain
            );
        }
    }
    Ok(())
}

pub fn task_json(t: &pb::Task) -> Value {
    json!({
        "id": t.id,
        "cluster": t.cluster,
        "kind": t.kind().as_str_name(),
        "mode": t.mode().as_str_name(),
        "state": t.state().as_str_name(),
        "error": t.error,
        "request_id": t.request_id,
        "batches": t.batches,
        "current_batch": t.current_batch,
        "cancel_requested": t.cancel_requested,
        "upgrade": t.upgrade.as_ref().map(|u| json!({
            "binary": u.binary,
            "binary_sha256": u.binary_sha256,
            "version": u.version,
            "canary_size": u.canary_size,
            "canary_wait_seconds": u.canary_wait.as_ref().map(|d| d.seconds),
            "allow_downgrade": u.allow_downgrade,
            "rollback_reason": u.rollback_reason,
        })),
        "created_at": t.created_at.as_ref().map(timestamp),
        "finished_at": t.finished_at.as_ref().map(timestamp),
        "subtasks": t.subtasks.iter().map(|s| json!({
            "agent": s.agent,
            "state": s.state().as_str_name(),
            "batch": s.batch,
            "attempts": s.attempts,
            "pid": s.pid,
            "operation_id": s.operation_id,
            "balancer": s.balancer.as_ref().map(|b| json!({
                "server": b.server,
                "state": b.state().as_str_name(),
                "drain": b.drain,
                "log": b.log,
            })),
            "last_error": s.last_error,
            "previous_binary": s.previous_binary,
            "previous_version": s.previous_version,
            "version": s.version,
            "rollback_operation_id": s.rollback_operation_id,
            "started_at": s.started_at.as_ref().map(timestamp),
            "finished_at": s.finished_at.as_ref().map(timestamp),
        })).collect::<Vec<_>>(),
    })
}

pub fn cluster_json(s: &pb::ClusterStatus) -> Value {
    json!({
        "cluster": s.cluster,
        "odps": s.odps.iter().map(|o| {
            let st = o.status.as_ref();
            json!({
                "agent": o.agent,
                "state": o.state().as_str_name(),
                "pid": o.pid,
                "version": o.version,
                "error": o.error,
                "uptime_seconds": st.and_then(|s| s.uptime.as_ref()).map(|u| u.seconds),
                "restart_count": st.map(|s| s.restart_count),
                "open_connections": st.and_then(|s| s.serving.as_ref()).map(|p| p.open_connections),
                "draining": st.map(|s| s.draining.len()),
                "balancer": o.balancer.as_ref().map(|b| json!({
                    "server": b.server,
                    "state": b.state().as_str_name(),
                    "sessions": b.sessions,
                    "error": b.error,
                })),
            })
        }).collect::<Vec<_>>(),
    })
}

pub fn print_cluster(s: &pb::ClusterStatus) {
    // The balancer's columns only for a cluster that has one.
    let lb = s.odps.iter().any(|o| o.balancer.is_some());
    let lb_head = if lb {
        format!("{:<12} {:<8} {:>7} ", "LB SERVER", "LB", "LB SESS")
    } else {
        String::new()
    };
    println!(
        "{:<24} {:<12} {:>8} {:<10} {:>10} {:>8} {:>6} {:>8}  {lb_head}ERROR",
        "ODP", "STATE", "PID", "VERSION", "UPTIME", "RESTARTS", "CONNS", "DRAINING"
    );
    for o in &s.odps {
        let st = o.status.as_ref();
        let uptime = st
            .and_then(|s| s.uptime.as_ref())
            .map(|u| {
                humantime::format_duration(Duration::from_secs(u.seconds.max(0) as u64)).to_string()
            })
            .unwrap_or_default();
        let (lb_cells, lb_error) = match &o.balancer {
            Some(b) if b.error.is_empty() => (
                format!(
                    "{:<12} {:<8} {:>7} ",
                    b.server,
                    balancer_state(b.state()),
                    b.sessions
                ),
                String::new(),
            ),
            Some(b) => (
                format!("{:<12} {:<8} {:>7} ", b.server, "?", "?"),
                format!("  lb: {}", b.error),
            ),
            None if lb => (format!("{:<12} {:<8} {:>7} ", "", "", ""), String::new()),
            None => (String::new(), String::new()),
        };
        println!(
            "{:<24} {:<12} {:>8} {:<10} {:>10} {:>8} {:>6} {:>8}  {lb_cells}{}{lb_error}",
            o.agent,
            short(o.state().as_str_name(), "PROXY_STATE_"),
            o.pid,
            o.version,
            uptime,
            st.map(|s| s.restart_count).unwrap_or(0),
            st.and_then(|s| s.serving.as_ref())
                .map(|p| p.open_connections)
                .unwrap_or(0),
            st.map(|s| s.draining.len()).unwrap_or(0),
            o.error
        );
    }
}

/// ready, drain, maint, or - when not known.
pub fn balancer_state(state: pb::BalancerState) -> &'static str {
    match state {
        pb::BalancerState::Ready => "ready",
        pb::BalancerState::Drain => "drain",
        pb::BalancerState::Maint => "maint",
        pb::BalancerState::Unspecified => "-",
    }
}

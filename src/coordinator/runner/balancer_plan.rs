//! What a task does with the balancer around each ODP's operation, by its
//! kind and mode (the runner's choice; the balancer itself knows no tasks).
use crate::coordinator::{
    load_balancer::{ServerState, rotation::Plan},
    task::{Kind, Mode, Task},
};

/// Stop All drains and leaves the server in maint (drained for a command
/// balancer without `maint`); Start All checks the balancer answers and
/// sets ready; FORCE (and HOT with `lb_drain`) drains and sets ready. An
/// Upgrade All is a HOT restart of each ODP onto the new binary: as HOT.
/// A restart whose batch holds every ODP drains nothing: no other server
/// could take the clients, and the held listeners queue them anyway.
pub(super) fn plan_for(task: &Task, lb_drain: bool) -> Option<Plan> {
    let n = task.subtasks.len();
    // An upgrade's canary is a batch of its own whatever the rollout says.
    let rolling = task.rollout.batch_len(n) < n || task.batches > 1;
    match (task.kind, task.mode) {
        (Kind::StopAll, _) => Some(Plan {
            drain: true,
            end: ServerState::Maint,
            no_drain: "",
        }),
        (Kind::StartAll, _) => Some(Plan {
            drain: false,
            end: ServerState::Ready,
            no_drain: "a stopped ODP has no sessions",
        }),
        (Kind::RestartAll, Some(Mode::Hot)) | (Kind::UpgradeAll, _) if !lb_drain => None,
        (Kind::RestartAll | Kind::UpgradeAll, _) => Some(Plan {
            drain: rolling,
            end: ServerState::Ready,
            no_drain: "the batch holds every ODP, so no other server could take its clients",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::{load_balancer::ServerState, task::Rollout};

    fn task(kind: Kind, mode: Option<Mode>, batch_size: Option<u32>) -> Task {
        let agents: Vec<String> = (1..=3).map(|i| format!("10.0.0.{i}:2889")).collect();
        let rollout = Rollout {
            batch_size,
            ..Rollout::default()
        };
        Task::new("c", &agents, kind, mode, rollout, None, None)
    }

    fn plan(
        kind: Kind,
        mode: Option<Mode>,
        batch: Option<u32>,
        lb_drain: bool,
    ) -> Option<(bool, ServerState)> {
        plan_for(&task(kind, mode, batch), lb_drain).map(|p| (p.drain, p.end))
    }

    #[test]
    fn each_task_kind_has_its_steps() {
        use ServerState::*;
        // Stop All drains even all at once: sessions end before the ODPs stop.
        assert_eq!(plan(Kind::StopAll, None, None, false), Some((true, Maint)));
        assert_eq!(
            plan(Kind::StartAll, None, Some(1), false),
            Some((false, Ready))
        );
        let force = Some(Mode::Force);
        assert_eq!(
            plan(Kind::RestartAll, force, Some(1), false),
            Some((true, Ready))
        );
        // Every ODP in one batch: no other server could take the clients.
        assert_eq!(
            plan(Kind::RestartAll, force, None, false),
            Some((false, Ready))
        );
        let hot = Some(Mode::Hot);
        assert_eq!(plan(Kind::RestartAll, hot, Some(1), false), None);
        assert_eq!(
            plan(Kind::RestartAll, hot, Some(2), true),
            Some((true, Ready))
        );
        // Upgrade All is HOT: nothing without lb_drain; with it, its canary
        // batch drains even when the rest go all at once.
        assert_eq!(plan(Kind::UpgradeAll, None, None, false), None);
        let mut upgrade = task(Kind::UpgradeAll, None, None);
        upgrade.subtasks[0].batch = 1;
        for s in &mut upgrade.subtasks[1..] {
            s.batch = 2;
        }
        upgrade.batches = 2;
        let p = plan_for(&upgrade, true).map(|p| (p.drain, p.end));
        assert_eq!(p, Some((true, Ready)));
        assert_eq!(
            plan(Kind::UpgradeAll, None, None, true),
            Some((false, Ready)),
            "a canary of the whole cluster: one batch"
        );
    }
}

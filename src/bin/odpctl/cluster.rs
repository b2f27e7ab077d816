//! `odpctl cluster`: list the clusters, show one's status, and run Stop
//! All, Start All, Restart All and Upgrade All on it (followed to the end
//! unless detached).
use anyhow::{Context, Result, bail};
use odp_agent::{
    common::command_line::odpctl::ClusterCmd,
    proto::{
        agent as apb,
        coordinator::{self as pb, coordinator_client::CoordinatorClient},
    },
};
use serde_json::{Value, json};

use crate::{
    connect::Conn,
    follow::follow_answer,
    proto_duration,
    render::{cluster_json, print_cluster},
    rpc_error,
};

/// `--batch 3` or `--batch 25%`.
fn batch(spec: &Option<String>) -> Result<(u32, u32)> {
    let Some(spec) = spec else { return Ok((0, 0)) };
    if let Some(pct) = spec.strip_suffix('%') {
        let pct: u32 = pct
            .trim()
            .parse()
            .with_context(|| format!("--batch {spec:?}"))?;
        if pct == 0 || pct > 100 {
            bail!("--batch {spec}: a percentage from 1% to 100%");
        }
        return Ok((0, pct));
    }
    let n: u32 = spec
        .trim()
        .parse()
        .with_context(|| format!("--batch {spec:?}: a count or N%"))?;
    if n == 0 {
        bail!("--batch 0: at least one ODP per batch");
    }
    Ok((n, 0))
}

/// A cluster operation request: the fields every one shares (the protocol
/// keeps them flat, under the names users know), plus any of its own.
macro_rules! cluster_request {
    ($ty:ident, $cluster:expr, $rollout:expr $(, $field:ident: $value:expr)*) => {{
        let (batch_size, batch_percent) = batch(&$rollout.batch)?;
        pb::$ty {
            cluster: $cluster,
            request_id: $rollout.request_id.clone(),
            batch_size,
            batch_percent,
            max_failures: $rollout.max_failures,
            pause: $rollout.pause.map(proto_duration),
            $($field: $value,)*
        }
    }};
}

pub(crate) async fn run(
    cmd: ClusterCmd,
    mut c: CoordinatorClient<Conn>,
    json_out: bool,
) -> Result<bool> {
    match cmd {
        ClusterCmd::List => {
            let r = c
                .list_clusters(pb::ListClustersRequest {})
                .await
                .map_err(rpc_error)?
                .into_inner();
            if json_out {
                let v: Vec<Value> = r
                    .clusters
                    .iter()
                    .map(|c| json!({"name": c.name, "agents": c.agents}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for cl in r.clusters {
                    println!("{:<20} {}", cl.name, cl.agents.join(" "));
                }
            }
            Ok(true)
        }
        ClusterCmd::Leader => {
            let l = c
                .get_leader(pb::GetLeaderRequest {})
                .await
                .map_err(rpc_error)?
                .into_inner();
            let expires_ms = l
                .expires_in
                .as_ref()
                .map(|d| d.seconds.saturating_mul(1000) + i64::from(d.nanos / 1_000_000));
            if json_out {
                let v = json!({
                    "holder": l.holder,
                    "token": l.token,
                    "expires_in_ms": expires_ms,
                    "this_coordinator": l.this_coordinator,
                    "this_coordinator_leads": l.this_coordinator_leads,
                    "store": l.store,
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let holder = if l.holder.is_empty() {
                    "(none)"
                } else {
                    &l.holder
                };
                let lease = match expires_ms {
                    Some(0) => "  lease expired".to_string(),
                    Some(ms) => format!("  lease {ms} ms left"),
                    None => String::new(),
                };
                println!(
                    "leader {holder}  token {}{lease}  store {}",
                    l.token, l.store
                );
                println!(
                    "asked  {} ({})",
                    l.this_coordinator,
                    if l.this_coordinator_leads {
                        "leading"
                    } else {
                        "following"
                    }
                );
            }
            Ok(true)
        }
        ClusterCmd::Status { cluster } => {
            let s = c
                .get_cluster_status(pb::GetClusterStatusRequest { cluster })
                .await
                .map_err(rpc_error)?
                .into_inner();
            if json_out {
                println!("{}", serde_json::to_string_pretty(&cluster_json(&s))?);
            } else {
                print_cluster(&s);
            }
            Ok(s.odps.iter().all(|o| o.error.is_empty()))
        }
        ClusterCmd::Stop { cluster, rollout } => {
            let task = c
                .stop_all(cluster_request!(StopAllRequest, cluster, rollout))
                .await;
            follow_answer(&mut c, task, rollout.detach, json_out).await
        }
        ClusterCmd::Start { cluster, rollout } => {
            let task = c
                .start_all(cluster_request!(StartAllRequest, cluster, rollout))
                .await;
            follow_answer(&mut c, task, rollout.detach, json_out).await
        }
        ClusterCmd::Restart {
            cluster,
            force,
            exit_timeout,
            rollout,
        } => {
            let mode = if force {
                apb::RestartMode::Force
            } else {
                apb::RestartMode::Hot
            };
            let request = cluster_request!(
                RestartAllRequest,
                cluster,
                rollout,
                mode: mode as i32,
                exit_timeout: exit_timeout.map(proto_duration)
            );
            let task = c.restart_all(request).await;
            follow_answer(&mut c, task, rollout.detach, json_out).await
        }
        ClusterCmd::Upgrade {
            cluster,
            binary,
            sha256,
            canary,
            canary_wait,
            allow_downgrade,
            exit_timeout,
            rollout,
        } => {
            let request = cluster_request!(
                UpgradeAllRequest,
                cluster,
                rollout,
                binary: binary,
                binary_sha256: sha256,
                canary_size: canary,
                canary_wait: canary_wait.map(proto_duration),
                exit_timeout: exit_timeout.map(proto_duration),
                allow_downgrade: allow_downgrade
            );
            let task = c.upgrade_all(request).await;
            follow_answer(&mut c, task, rollout.detach, json_out).await
        }
    }
}

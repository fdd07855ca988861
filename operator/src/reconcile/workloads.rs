//! The phase that writes pod templates: with `restartWorkloads`, roll the Deployment or
//! StatefulSet of one member that lacks the sidecar, one workload at a time.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::{runtime::events::EventType, ResourceExt};
use tracing::info;

use super::{context::key, Context, Observed, Outcome};
use crate::{error::Result, names::FIELD_MANAGER, restart};

/// How soon to look again while workloads roll: the next waits for this one to finish.
const ROLLING: Duration = Duration::from_secs(5);

pub(super) async fn restart(ctx: &Context, obs: &Observed<'_>, without_sidecar: &[String]) -> Result<Outcome> {
    let cluster = obs.cluster;
    let mut outcome = Outcome::default();
    if !cluster.spec.restart_workloads || without_sidecar.is_empty() {
        return Ok(outcome);
    }
    let stale: Vec<&Pod> = obs
        .members
        .iter()
        .copied()
        .filter(|p| without_sidecar.contains(&p.name_any()))
        .collect();
    let uid = cluster.uid().unwrap_or_default();
    if let Some(workload) = restart::restart_one(&ctx.client, &obs.ns, &uid, &stale, FIELD_MANAGER).await? {
        ctx.metrics.write("WorkloadRestart");
        info!(cluster = %key(cluster), ?workload, "restarted a workload so its pods gain the sidecar");
        let note = format!("restarted {workload:?}: its pods lack the sidecar");
        ctx.event(cluster, EventType::Normal, "RestartedWorkload", note).await;
    }
    outcome.requeue_within(ROLLING);
    Ok(outcome)
}

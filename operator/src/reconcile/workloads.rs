//! The phase that writes pod templates: with `restartWorkloads`, roll the Deployment or
//! StatefulSet of one member that lacks the sidecar or runs one made for an earlier spec,
//! one workload at a time.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::{runtime::events::EventType, ResourceExt};
use tracing::info;

use super::{context::key, Context, Observed, Outcome};
use crate::{
    error::Result,
    names::{short_hash, FIELD_MANAGER},
    restart,
};

/// How soon to look again while workloads roll: the next waits for this one to finish.
const ROLLING: Duration = Duration::from_secs(5);

/// `stale`: members without the sidecar or with an outdated one.
pub(super) async fn restart(ctx: &Context, obs: &Observed<'_>, stale: &[String]) -> Result<Outcome> {
    let cluster = obs.cluster;
    let mut outcome = Outcome::default();
    if !cluster.spec.restart_workloads || stale.is_empty() {
        return Ok(outcome);
    }
    if !ctx.restart_workloads {
        // Not granted: trying would only be refused. Said on the cluster, not retried.
        let note = format!(
            "spec.restartWorkloads is set, but this installation does not let the operator restart workloads \
             (chart value restartWorkloads.enabled=false): restart the workloads of {} yourself",
            stale.join(", ")
        );
        ctx.event(cluster, EventType::Warning, "RestartWorkloadsDisabled", note)
            .await;
        return Ok(outcome);
    }
    let pods: Vec<&Pod> = obs
        .members
        .iter()
        .copied()
        .filter(|p| stale.contains(&p.name_any()))
        .collect();
    // A workload is restarted once per cluster and sidecar spec: again after the ports
    // change, never in a loop when its new pods still lack the sidecar (no webhook?).
    let args = crate::webhook::inject::sidecar_args(cluster).join(" ");
    let token = format!("{}/{}", cluster.uid().unwrap_or_default(), short_hash(&args));
    if let Some(workload) = restart::restart_one(&ctx.client, &obs.ns, &token, &pods, FIELD_MANAGER).await? {
        ctx.metrics.write("WorkloadRestart");
        info!(cluster = %key(cluster), ?workload, "restarted a workload so its pods gain the sidecar");
        let note = format!("restarted {workload:?}: its pods lack the sidecar of the current spec");
        ctx.event(cluster, EventType::Normal, "RestartedWorkload", note).await;
    }
    outcome.requeue_within(ROLLING);
    Ok(outcome)
}

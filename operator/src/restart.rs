//! `restartWorkloads`: rolls the Deployments and StatefulSets whose pods lack the sidecar,
//! one workload at a time, so the webhook can inject it into their new pods.

use std::collections::BTreeSet;

use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet, StatefulSet},
    core::v1::Pod,
};
use kube::{
    api::{Patch, PatchParams},
    Api, Client, ResourceExt,
};
use serde_json::json;

use crate::error::Result;

/// On the pod template of a workload the operator restarted, value: a token naming the
/// cluster and the sidecar spec (`<cluster uid>/<hash of the sidecar's arguments>`). A
/// workload is restarted at most once per token: if its new pods still lack the sidecar
/// (no webhook?), restarting again would only loop.
pub const RESTARTED_FOR_ANNOTATION: &str = "xlattice.io/restarted-for";
pub const RESTARTED_AT_ANNOTATION: &str = "xlattice.io/restartedAt";

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Workload {
    Deployment(String),
    StatefulSet(String),
}

/// The controller owner of a pod as (kind, name).
pub fn pod_owner(pod: &Pod) -> Option<(String, String)> {
    let owner = pod.owner_references().iter().find(|o| o.controller == Some(true))?;
    Some((owner.kind.clone(), owner.name.clone()))
}

/// What a workload looks like to the one-at-a-time rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadState {
    pub workload: Workload,
    /// Restarted for this token already.
    pub restarted: bool,
    /// Its controller has not finished rolling it out.
    pub rolling: bool,
}

/// The next workload to restart, if any: none while a restarted one is still rolling.
pub fn next_restart(states: &[WorkloadState]) -> Option<Workload> {
    if states.iter().any(|s| s.restarted && s.rolling) {
        return None;
    }
    states.iter().filter(|s| !s.restarted).map(|s| s.workload.clone()).min()
}

fn deployment_state(d: &Deployment, token: &str) -> WorkloadState {
    let template = d.spec.as_ref().and_then(|s| s.template.metadata.as_ref());
    let restarted = template
        .and_then(|m| m.annotations.as_ref()?.get(RESTARTED_FOR_ANNOTATION))
        .map(String::as_str)
        == Some(token);
    let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let status = d.status.clone().unwrap_or_default();
    let rolling = status.observed_generation < d.metadata.generation || status.updated_replicas.unwrap_or(0) < replicas;
    WorkloadState {
        workload: Workload::Deployment(d.name_any()),
        restarted,
        rolling,
    }
}

fn stateful_set_state(s: &StatefulSet, token: &str) -> WorkloadState {
    let template = s.spec.as_ref().and_then(|s| s.template.metadata.as_ref());
    let restarted = template
        .and_then(|m| m.annotations.as_ref()?.get(RESTARTED_FOR_ANNOTATION))
        .map(String::as_str)
        == Some(token);
    let status = s.status.clone().unwrap_or_default();
    let rolling =
        status.observed_generation < s.metadata.generation || status.update_revision != status.current_revision;
    WorkloadState {
        workload: Workload::StatefulSet(s.name_any()),
        restarted,
        rolling,
    }
}

/// Restarts at most one workload owning a pod in `without_sidecar` (pods that lack the
/// sidecar of the current spec), marking it with `token`; returns it.
pub async fn restart_one(
    client: &Client,
    ns: &str,
    token: &str,
    without_sidecar: &[&Pod],
    field_manager: &str,
) -> Result<Option<Workload>> {
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let stateful_sets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let mut owners = BTreeSet::new();
    for pod in without_sidecar {
        match pod_owner(pod) {
            Some((kind, name)) if kind == "StatefulSet" => {
                owners.insert(Workload::StatefulSet(name));
            }
            Some((kind, name)) if kind == "ReplicaSet" => {
                if let Some(rs) = replica_sets.get_opt(&name).await? {
                    let deployment = rs
                        .owner_references()
                        .iter()
                        .find(|o| o.controller == Some(true) && o.kind == "Deployment")
                        .map(|o| o.name.clone());
                    if let Some(deployment) = deployment {
                        owners.insert(Workload::Deployment(deployment));
                    }
                }
            }
            _ => {}
        }
    }
    let mut states = Vec::new();
    for owner in owners {
        match &owner {
            Workload::Deployment(name) => {
                if let Some(d) = deployments.get_opt(name).await? {
                    states.push(deployment_state(&d, token));
                }
            }
            Workload::StatefulSet(name) => {
                if let Some(s) = stateful_sets.get_opt(name).await? {
                    states.push(stateful_set_state(&s, token));
                }
            }
        }
    }
    let Some(next) = next_restart(&states) else {
        return Ok(None);
    };
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {
        RESTARTED_FOR_ANNOTATION: token,
        RESTARTED_AT_ANNOTATION: now,
    }}}}});
    let params = PatchParams {
        field_manager: Some(field_manager.into()),
        ..Default::default()
    };
    match &next {
        Workload::Deployment(name) => deployments
            .patch(name, &params, &Patch::Merge(&patch))
            .await
            .map(|_| ())?,
        Workload::StatefulSet(name) => stateful_sets
            .patch(name, &params, &Patch::Merge(&patch))
            .await
            .map(|_| ())?,
    }
    Ok(Some(next))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(name: &str, restarted: bool, rolling: bool) -> WorkloadState {
        WorkloadState {
            workload: Workload::Deployment(name.into()),
            restarted,
            rolling,
        }
    }

    #[test]
    fn one_workload_at_a_time_each_once() {
        assert_eq!(
            next_restart(&[state("b", false, false), state("a", false, true)]),
            Some(Workload::Deployment("a".into()))
        );
        assert_eq!(
            next_restart(&[state("a", true, true), state("b", false, false)]),
            None,
            "a is still rolling"
        );
        assert_eq!(
            next_restart(&[state("a", true, false), state("b", false, false)]),
            Some(Workload::Deployment("b".into()))
        );
        assert_eq!(next_restart(&[state("a", true, false)]), None, "never twice");
    }
}

//! The phase that brings a directory change to every running sidecar within seconds. The
//! kubelet refreshes a pod's ConfigMap and Secret volumes on its sync period (1 min by
//! default; a change took 71–88 s to reach a pod on a default kubelet here) but at once
//! when the pod object itself changes. So once the shards are written, each member pod that
//! does not carry the directory's version (`xlattice.io/directory-version`) gets it: one
//! small merge patch per member and change, which also tells the sidecar, through the
//! Downward API, which directory it should be serving.

use futures::{stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    api::{Patch, PatchParams},
    Api, ResourceExt,
};
use serde_json::json;
use tracing::{debug, warn};

use super::{context::key, Context, Observed, Outcome};
use crate::{
    error::{deleted_or_gone, Result},
    membership,
    names::{DIRECTORY_VERSION_ANNOTATION, FIELD_MANAGER},
};

/// Patches in flight at once: a 1,000-member cluster is touched in a few seconds without
/// a burst of a thousand requests.
const IN_FLIGHT: usize = 16;

pub(super) async fn members(ctx: &Context, obs: &Observed<'_>, version: &str) -> Result<Outcome> {
    let behind = membership::directory_behind(&obs.members, version);
    if behind.is_empty() || !ctx.refresh_member_pods {
        return Ok(Outcome::default());
    }
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &obs.ns);
    let patch = json!({"metadata": {"annotations": {DIRECTORY_VERSION_ANNOTATION: version}}});
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    // Owned names: a stream of borrowed pods would not be `Send` for every lifetime.
    let names: Vec<String> = behind.iter().map(|pod| pod.name_any()).collect();
    let results: Vec<_> = stream::iter(names)
        .map(|name| {
            let (api, patch, params) = (&api, &patch, &params);
            async move {
                let result = api.patch(&name, params, &Patch::Merge(patch)).await;
                (name, result)
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let mut outcome = Outcome::default();
    let touched = results.iter().filter(|(_, r)| r.is_ok()).count();
    for (pod, result) in results {
        match deleted_or_gone(result) {
            Ok(_) => {}
            Err(error) => {
                warn!(cluster = %key(obs.cluster), %pod, %error, "cannot stamp the directory version on a member pod");
                outcome.error.get_or_insert(error);
            }
        }
    }
    ctx.metrics.writes_of("PodDirectoryVersion", touched as u64);
    debug!(cluster = %key(obs.cluster), touched, version, "member pods stamped with the directory version");
    Ok(outcome)
}

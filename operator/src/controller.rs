//! Wires the reconciler to the watches: clusters, what they own, and the pods they select.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::{
    core::v1::{ConfigMap, Pod, Secret, Service},
    discovery::v1::EndpointSlice,
    networking::v1::NetworkPolicy,
};
use kube::{
    api::DynamicObject,
    core::{Selector, SelectorExt},
    runtime::{controller::Controller, reflector::ObjectRef, reflector::Store, watcher},
    ResourceExt,
};
use tracing::{debug, warn};

use crate::{
    crd,
    names::{INJECTED_ANNOTATION, MANAGED_BY, MANAGED_BY_LABEL},
    reconcile::{error_policy, reconcile, Context},
    scope::{self, Scope},
};

/// Clusters a pod event concerns: those whose selector matches the pod, and the one that
/// injected it (its labels may have changed so that it no longer matches: it must leave).
pub fn clusters_for_pod(pod: &Pod, clusters: &[Arc<DynamicObject>]) -> Vec<ObjectRef<DynamicObject>> {
    let ns = pod.namespace();
    let injected = pod.annotations().get(INJECTED_ANNOTATION);
    let selects = |c: &DynamicObject| {
        crd::decode_selector(c)
            .and_then(|s| Selector::try_from(s).ok())
            .is_some_and(|s| s.matches(pod.labels()))
    };
    clusters
        .iter()
        .filter(|c| c.namespace() == ns)
        .filter(|c| injected == Some(&c.name_any()) || selects(c))
        .map(|c| ObjectRef::from_obj_with(c.as_ref(), crd::api_resource()))
        .collect()
}

/// The clusters that may inherit pods from `cluster`: the others of its namespace, once it
/// is being deleted.
pub fn heirs(cluster: &DynamicObject, clusters: &[Arc<DynamicObject>]) -> Vec<ObjectRef<DynamicObject>> {
    if cluster.metadata.deletion_timestamp.is_none() {
        return Vec::new();
    }
    clusters
        .iter()
        .filter(|c| c.namespace() == cluster.namespace() && c.name_any() != cluster.name_any())
        .map(|c| ObjectRef::from_obj_with(c.as_ref(), crd::api_resource()))
        .collect()
}

/// Runs a controller per watch of `scope` (one for all namespaces, or one per namespace)
/// until they end (shutdown signal).
pub async fn run(ctx: Arc<Context>, scope: &Scope) {
    futures::future::join_all(scope.watches().into_iter().map(|ns| run_in(ctx.clone(), ns))).await;
}

/// One controller over `namespace` (or all namespaces).
async fn run_in(ctx: Arc<Context>, namespace: Option<String>) {
    let (client, ns) = (ctx.client.clone(), namespace.as_deref());
    let owned = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    // Untyped, so that one cluster the types cannot hold fails only its own reconcile, not
    // the list every cluster comes from.
    let clusters = scope::clusters(&client, ns);
    let controller = Controller::new_with(clusters.clone(), watcher::Config::default(), crd::api_resource());
    let store: Store<DynamicObject> = controller.store();
    // Serving every namespace, the operator may read identity Secrets only where it bound
    // itself the role (src/access.rs): they arrive from a watch per such namespace.
    let controller = match (ns, ctx.access.binds_itself()) {
        (None, true) => controller.owns_stream(ctx.access.subscribe()),
        _ => controller.owns(scope::api::<Secret>(&client, ns), owned.clone()),
    };
    controller
        .owns(scope::api::<ConfigMap>(&client, ns), owned.clone())
        .owns(scope::api::<NetworkPolicy>(&client, ns), owned.clone())
        .owns(scope::api::<Service>(&client, ns), owned.clone())
        .owns(scope::api::<EndpointSlice>(&client, ns), owned)
        .watches(scope::api::<Pod>(&client, ns), watcher::Config::default(), {
            let store = store.clone();
            move |pod| clusters_for_pod(&pod, &store.state())
        })
        // A cluster being deleted hands its pods over (`membership::claimed_by`): the
        // others of its namespace look again.
        .watches_with(
            clusters,
            crd::api_resource(),
            watcher::Config::default(),
            move |cluster| heirs(&cluster, &store.state()),
        )
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => debug!(cluster = %object, "reconciled"),
                // A cluster deleted while queued: nothing to do.
                Err(kube::runtime::controller::Error::ObjectNotFound(object)) => debug!(cluster = %object, "gone"),
                Err(error) => warn!(%error, "controller"),
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::tests::{cluster, pod};

    #[test]
    fn pods_map_to_matching_and_injecting_clusters() {
        let untyped = |c| Arc::new(serde_json::from_value::<DynamicObject>(serde_json::to_value(c).unwrap()).unwrap());
        let c = untyped(cluster(serde_json::json!({})));
        let mut other = cluster(serde_json::json!({"selector": {"matchLabels": {"app": "web"}}}));
        other.metadata.name = Some("web".into());
        let mut broken = untyped(other.clone());
        Arc::make_mut(&mut broken).data["spec"]["service"] = serde_json::json!({"type": "Headless"});
        let clusters = vec![c, untyped(other), broken];
        let refs = clusters_for_pod(&pod("a", None), &clusters);
        assert_eq!(refs.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["store"]);

        let mut relabelled = pod("b", None);
        relabelled.metadata.labels = None;
        assert!(clusters_for_pod(&relabelled, &clusters).is_empty());
        relabelled.metadata.annotations = Some([(INJECTED_ANNOTATION.to_string(), "web".to_string())].into());
        let refs = clusters_for_pod(&relabelled, &clusters);
        assert_eq!(refs.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["web", "web"]);
        assert_eq!(refs[0].dyntype.kind, "XLatticeCluster");
    }

    #[test]
    fn a_deleted_cluster_wakes_the_others_of_its_namespace() {
        let untyped = |name: &str, ns: &str| {
            let mut c = cluster(serde_json::json!({}));
            c.metadata.name = Some(name.into());
            c.metadata.namespace = Some(ns.into());
            Arc::new(serde_json::from_value::<DynamicObject>(serde_json::to_value(c).unwrap()).unwrap())
        };
        let clusters = vec![untyped("a", "ns"), untyped("b", "ns"), untyped("c", "other")];
        assert!(
            heirs(&clusters[0], &clusters).is_empty(),
            "a live cluster hands nothing over"
        );
        let mut deleting = (*clusters[0]).clone();
        deleting.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ));
        let names: Vec<String> = heirs(&deleting, &clusters).into_iter().map(|r| r.name).collect();
        assert_eq!(names, ["b"]);
    }
}

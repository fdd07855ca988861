//! One XLatticeCluster the operator cannot read or cannot serve stalls nothing: it is
//! reported on its own status and in a Warning Event naming the field, while every other
//! cluster keeps being reconciled (across an operator restart) and the webhook keeps
//! admitting the pods of other clusters in the same namespace.
//!
//! An object the types cannot hold is made the way it happens in life: stored under a
//! looser schema (here the committed CRD without the enum on `spec.service.type`, as a newer
//! CRD adding a Service type would be). Its own test binary, because the CRD is cluster-wide
//! and binaries run one after another; the committed CRD is put back at the end.

mod support;

use std::time::Duration;

use k8s_openapi::{
    api::{core::v1::Pod, events::v1::Event},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams},
    Api, ResourceExt,
};
use serde_json::json;
use support::*;
use xlattice_operator::XLatticeCluster;

const WAIT: Duration = Duration::from_secs(60);

fn cluster(name: &str, spec: serde_json::Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "xlattice.io/v1alpha1", "kind": "XLatticeCluster",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap()
}

fn spec(app: &str) -> serde_json::Value {
    json!({"selector": {"matchLabels": {"app": app}}, "clusterPort": 7000, "clientPort": 8000, "rsaBits": 2048})
}

/// The committed CRD, with the enum on spec.service.type taken out.
async fn loosen_crd(admin: &kube::Client) {
    let text = std::fs::read_to_string(repo_file("deploy/crds/xlatticeclusters.yaml")).unwrap();
    let mut crd: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    let service_type = crd
        .pointer_mut("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/service/properties/type")
        .expect("spec.service.type in the CRD");
    service_type
        .as_object_mut()
        .unwrap()
        .remove("enum")
        .expect("spec.service.type has an enum");
    let crd: CustomResourceDefinition = serde_json::from_value(crd).unwrap();
    apply(&Api::<CustomResourceDefinition>::all(admin.clone()), &crd).await;
}

/// Degraded=True with `reason`, and its message.
fn degraded(object: &DynamicObject, reason: &str) -> Option<String> {
    let conditions = object.data.pointer("/status/conditions")?.as_array()?;
    let c = conditions.iter().find(|c| c["type"] == "Degraded")?;
    (c["status"] == "True" && c["reason"] == reason).then(|| c["message"].as_str().unwrap_or_default().to_string())
}

fn ready(object: &DynamicObject) -> bool {
    let conditions = object.data.pointer("/status/conditions").and_then(|c| c.as_array());
    conditions.is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

#[tokio::test]
async fn one_bad_cluster_stalls_nothing() {
    let webhook_port = free_port();
    let Some((h, mut operator)) = Harness::start_with_webhook("bad", webhook_port).await else {
        return;
    };
    let clusters: Api<DynamicObject> =
        Api::namespaced_with(h.admin.clone(), &h.ns, &ApiResource::erase::<XLatticeCluster>(&()));
    let pods: Api<Pod> = Api::namespaced(h.admin.clone(), &h.ns);
    let secrets = Api::namespaced(h.admin.clone(), &h.ns);
    let get = |name: &'static str| {
        let clusters = clusters.clone();
        async move { clusters.get(name).await.ok() }
    };

    // --- a cluster the types cannot hold, beside two good ones in the same namespace
    loosen_crd(&h.admin).await;
    for (pod, app) in [("good-0", "good"), ("broken-0", "broken"), ("peers-0", "peers")] {
        pods.create(&PostParams::default(), &member_pod(pod, app, &[]))
            .await
            .unwrap();
    }
    let mut broken_spec = spec("broken");
    broken_spec["service"] = json!({"type": "Headless"});
    apply(&clusters, &cluster("broken", broken_spec)).await;
    apply(&clusters, &cluster("good", spec("good"))).await;
    // Accepted by the schema, refused by the API server when written as a NetworkPolicy:
    // the CRD cannot check label names in clientAccess selectors.
    let mut peers_spec = spec("peers");
    peers_spec["clientAccess"] = json!([{"podSelector": {"matchLabels": {"Not_A/Valid/Key": "x"}}}]);
    apply(&clusters, &cluster("peers", peers_spec)).await;

    wait_for("good is Ready", WAIT, || async {
        get("good").await.filter(ready).map(|_| ())
    })
    .await;
    let message = wait_for("broken is Degraded: InvalidSpec", WAIT, || async {
        degraded(&get("broken").await?, "InvalidSpec")
    })
    .await;
    assert!(
        message.contains("spec.service.type"),
        "status names the field: {message}"
    );
    let message = wait_for("peers is Degraded: InvalidSpec", WAIT, || async {
        degraded(&get("peers").await?, "InvalidSpec")
    })
    .await;
    assert!(
        message.contains("spec.selector or spec.clientAccess") && message.contains("NetworkPolicy"),
        "{message}"
    );
    assert!(!ready(&get("peers").await.unwrap()));
    assert_eq!(
        identity_secrets(&secrets, "broken").await.len(),
        0,
        "nothing minted for an unreadable cluster"
    );
    assert_eq!(
        identity_secrets(&secrets, "peers").await.len(),
        1,
        "peers still minted its member"
    );

    let events: Api<Event> = Api::namespaced(h.admin.clone(), &h.ns);
    wait_for("a Warning Event on broken naming the field", WAIT, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| {
                e.type_.as_deref() == Some("Warning")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("broken")
                    && e.note.as_deref().is_some_and(|n| n.contains("spec.service.type"))
            })
            .then_some(())
    })
    .await;

    // --- a restart lists every cluster, the broken one included: the others carry on
    operator.kill();
    let mut operator = Operator::start(&h.kubeconfig, &h.op_ns, &h.run, webhook_port);
    pods.create(&PostParams::default(), &member_pod("good-1", "good", &[]))
        .await
        .unwrap();
    wait_for("the restarted operator mints good-1", WAIT, || async {
        identity_secrets(&secrets, "good")
            .await
            .contains_key("good-1")
            .then_some(())
    })
    .await;

    // --- the webhook: pods of good are injected, pods broken claims are refused by name
    let mwc = register_webhook(&h.admin, &operator, &h.ns).await;
    let mut web = member_pod("", "good", &[]);
    web.metadata.name = None;
    web.metadata.generate_name = Some("good-web-".into());
    let created = wait_for("the webhook admits a pod of good", WAIT, || async {
        pods.create(&PostParams::default(), &web).await.ok()
    })
    .await;
    assert_eq!(created.annotations()["xlattice.io/injected"], "good");
    let refused = pods
        .create(&PostParams::default(), &member_pod("broken-1", "broken", &[]))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("spec.service.type"), "{refused}");
    let stranger = pods
        .create(&PostParams::default(), &member_pod("stranger", "none", &[]))
        .await
        .expect("a pod no cluster claims is admitted");
    assert!(!stranger.annotations().contains_key("xlattice.io/injected"));
    mwc.delete("xlattice-sidecar-injector", &DeleteParams::default())
        .await
        .unwrap();

    // --- fixing the field heals the cluster
    let fix = json!({"spec": {"service": {"type": "ClusterIP"}}});
    clusters
        .patch("broken", &PatchParams::default(), &Patch::Merge(&fix))
        .await
        .unwrap();
    wait_for("broken becomes Ready once fixed", WAIT, || async {
        get("broken").await.filter(ready).map(|_| ())
    })
    .await;
    assert_eq!(identity_secrets(&secrets, "broken").await.len(), 1);
    assert!(
        !std::fs::read_to_string(&operator.log)
            .unwrap()
            .contains("BEGIN PRIVATE KEY"),
        "no key material in the log"
    );

    // --- two clusters select the same pod: the first keeps it, the second reports it
    pods.create(&PostParams::default(), &member_pod("shared-0", "shared", &[]))
        .await
        .unwrap();
    apply(&clusters, &cluster("first", spec("shared"))).await;
    let first_id = wait_for("first mints shared-0", WAIT, || async {
        let secrets = identity_secrets(&secrets, "first").await;
        secrets
            .get("shared-0")
            .map(|s| s.annotations()["xlattice.io/node-id"].clone())
    })
    .await;
    apply(&clusters, &cluster("second", spec("shared"))).await;
    let message = wait_for("second is Degraded: SelectorConflict", WAIT, || async {
        degraded(&get("second").await?, "SelectorConflict")
    })
    .await;
    assert!(
        message.contains("shared-0 (first)"),
        "names the pod and its cluster: {message}"
    );
    let second = get("second").await.unwrap();
    assert_eq!(
        second.data.pointer("/status/members"),
        Some(&json!(0)),
        "second counts no member"
    );
    assert!(
        identity_secrets(&secrets, "second").await.is_empty(),
        "second minted another's member"
    );
    let kept = identity_secrets(&secrets, "first").await["shared-0"].annotations()["xlattice.io/node-id"].clone();
    assert_eq!(kept, first_id, "shared-0 keeps its NodeID");
    // Once first is gone (its identities with it), the pod is second's.
    clusters.delete("first", &DeleteParams::default()).await.unwrap();
    wait_for("second takes shared-0 once first is deleted", WAIT, || async {
        let c = get("second").await?;
        (ready(&c) && identity_secrets(&secrets, "second").await.contains_key("shared-0")).then_some(())
    })
    .await;

    // --- clean up with the operator still running (finalizers), and the CRD as committed
    for name in ["broken", "good", "peers", "second"] {
        clusters.delete(name, &DeleteParams::default()).await.unwrap();
    }
    wait_for("clusters deleted", WAIT, || async {
        clusters
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .is_empty()
            .then_some(())
    })
    .await;
    install_crd(&h.admin).await;
    operator.kill();
}

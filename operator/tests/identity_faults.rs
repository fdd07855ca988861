//! An identity is never replaced or dropped without a loud trace, against a real
//! kube-apiserver: a Secret deleted by hand is minted anew with a Warning Event naming the
//! old and new NodeIDs; a hand edit that duplicates another member's NodeID, or a corrupt
//! key, leaves that member out of the directory (which stays consistent) and makes the
//! cluster Degraded naming it.

mod support;

use std::time::Duration;

use k8s_openapi::{
    api::{
        core::v1::{Pod, Secret},
        events::v1::Event,
    },
    ByteString,
};
use kube::{
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    Api,
};
use serde_json::json;
use support::*;
use xlattice_operator::{directory, names::announced_node_id, XLatticeCluster};

const WAIT: Duration = Duration::from_secs(60);

fn degraded(c: &XLatticeCluster) -> Option<(String, String)> {
    let d = c.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Degraded")?;
    (d.status == "True").then(|| (d.reason.clone(), d.message.clone()))
}

#[tokio::test]
async fn identities_are_never_replaced_or_dropped_quietly() {
    let Some((h, operator)) = Harness::start("ids").await else {
        return;
    };
    let pods: Api<Pod> = Api::namespaced(h.admin.clone(), &h.ns);
    let clusters: Api<XLatticeCluster> = Api::namespaced(h.admin.clone(), &h.ns);
    let secrets: Api<Secret> = Api::namespaced(h.admin.clone(), &h.ns);
    for name in ["id-0", "id-1", "id-2"] {
        pods.create(&PostParams::default(), &member_pod(name, "id", &[]))
            .await
            .unwrap();
    }
    let spec = json!({"apiVersion": "xlattice.io/v1alpha1", "kind": "XLatticeCluster", "metadata": {"name": "id"},
        "spec": {"selector": {"matchLabels": {"app": "id"}}, "clusterPort": 7000, "clientPort": 8000, "nodeIdBits": 160}});
    apply(&clusters, &serde_json::from_value(spec).unwrap()).await;
    let published = || async {
        let dir = directory::fetch(&h.admin, &h.ns, "id").await.ok()?;
        dir.index().expect("the published directory is always consistent");
        Some(
            dir.members
                .into_iter()
                .map(|m| (m.name, m.node_id.to_string()))
                .collect::<Vec<_>>(),
        )
    };
    let before = wait_for("three members published", WAIT, || async {
        published().await.filter(|m| m.len() == 3)
    })
    .await;

    // --- a Secret deleted by hand: a new identity, and a Warning that names both NodeIDs
    let old_id = before[0].1.clone();
    secrets
        .delete("xlattice-id-id-0", &DeleteParams::default())
        .await
        .unwrap();
    let new_id = wait_for("id-0 minted anew", WAIT, || async {
        let s = identity_secrets(&secrets, "id").await.remove("id-0")?;
        Some(announced_node_id(&s)).filter(|id| *id != old_id)
    })
    .await;
    let events: Api<Event> = Api::namespaced(h.admin.clone(), &h.ns);
    let note = wait_for("a ReplacedIdentity Warning regarding id-0", WAIT, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find_map(|e| {
            let about_pod = e.regarding.as_ref()?.name.as_deref() == Some("id-0");
            (e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some("ReplacedIdentity") && about_pod)
                .then(|| e.note.unwrap_or_default())
        })
    })
    .await;
    assert!(note.contains(&old_id) && note.contains(&new_id), "{note}");
    assert_eq!(
        operator.metric("xlattice_operator_identities_replaced_total").await,
        1.0
    );

    // --- a hand edit gives id-2 the NodeID of id-1: id-2 leaves the directory, Degraded
    let id1 = identity_secrets(&secrets, "id").await.remove("id-1").unwrap();
    let node_id_of_1 = id1.data.as_ref().unwrap()["node-id"].clone();
    let edit = json!({"data": {"node-id": node_id_of_1}});
    secrets
        .patch("xlattice-id-id-2", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .unwrap();
    let (_, message) = wait_for("Degraded: DuplicateNodeId", WAIT, || async {
        degraded(&clusters.get("id").await.ok()?).filter(|(reason, _)| reason == "DuplicateNodeId")
    })
    .await;
    assert!(
        message.contains("id-1") && message.contains("id-2"),
        "names both members: {message}"
    );
    wait_for("id-2 left out of the directory", WAIT, || async {
        published()
            .await
            .filter(|m| m.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>() == ["id-0", "id-1"])
    })
    .await;
    let ready = clusters.get("id").await.unwrap().status.unwrap();
    assert!(ready
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "False"));

    // --- a corrupt key instead: CorruptIdentity names the member, and the log says so
    let corrupt = json!({"data": {"sk.pem": ByteString(b"not a key".to_vec())}});
    secrets
        .patch("xlattice-id-id-2", &PatchParams::default(), &Patch::Merge(&corrupt))
        .await
        .unwrap();
    let (_, message) = wait_for("Degraded: CorruptIdentity", WAIT, || async {
        degraded(&clusters.get("id").await.ok()?).filter(|(reason, _)| reason == "CorruptIdentity")
    })
    .await;
    assert!(message.contains("member id-2"), "{message}");
    let log = std::fs::read_to_string(&operator.log).unwrap();
    assert!(
        log.contains("unreadable identity: member left out of the directory"),
        "{}",
        operator.log_tail()
    );

    // --- deleting the broken Secret heals the cluster with a new identity for id-2
    secrets
        .delete("xlattice-id-id-2", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("Ready again, three members", WAIT, || async {
        let c = clusters.get("id").await.ok()?;
        let ready = c
            .status
            .as_ref()?
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        (ready && published().await?.len() == 3).then_some(())
    })
    .await;
    clusters.delete("id", &DeleteParams::default()).await.unwrap();
}

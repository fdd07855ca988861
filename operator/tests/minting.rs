//! Minting as a user watches it, against a real kube-apiserver: the status tells the truth
//! while a batch is minted (Ready=False, "k of n"), each member's Event keeps its own note,
//! and deleting a cluster stops its minting instead of waiting for the batch.

mod support;

use std::time::Duration;

use k8s_openapi::api::{core::v1::Pod, events::v1::Event};
use kube::{
    api::{DeleteParams, ListParams, PostParams},
    Api,
};
use serde_json::json;
use support::*;
use xlattice_operator::XLatticeCluster;

const WAIT: Duration = Duration::from_secs(120);

fn cluster(name: &str, app: &str, rsa_bits: u32) -> XLatticeCluster {
    serde_json::from_value(json!({
        "apiVersion": "xlattice.io/v1alpha1", "kind": "XLatticeCluster",
        "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": {"app": app}}, "clusterPort": 7000, "clientPort": 8000,
                 "rsaBits": rsa_bits, "nodeIdBits": 160},
    }))
    .unwrap()
}

fn condition(c: &XLatticeCluster, type_: &str) -> Option<(String, String)> {
    let c = c.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.message.clone()))
}

#[tokio::test]
async fn status_events_and_deletion_while_minting() {
    let Some((h, operator)) = Harness::start("mint").await else {
        return;
    };
    let pods: Api<Pod> = Api::namespaced(h.admin.clone(), &h.ns);
    let clusters: Api<XLatticeCluster> = Api::namespaced(h.admin.clone(), &h.ns);
    let secrets = Api::namespaced(h.admin.clone(), &h.ns);

    // --- a batch of RSA-4096 members: the status shows progress, never a stale Ready=True
    for i in 0..12 {
        pods.create(&PostParams::default(), &member_pod(&format!("slow-{i}"), "slow", &[]))
            .await
            .unwrap();
    }
    apply(&clusters, &cluster("slow", "slow", 4096)).await;
    let seen_partial = std::cell::RefCell::new(None);
    let (seen, api) = (&seen_partial, &clusters);
    wait_for("slow Ready after showing progress", WAIT, || async move {
        let c = api.get("slow").await.ok()?;
        let (ready, message) = condition(&c, "Ready")?;
        let minted = c.status.as_ref()?.minted;
        if ready == "True" {
            assert_eq!(minted, 12, "Ready=True with {minted} of 12 minted");
            return Some(());
        }
        if (1..12).contains(&minted) && message.contains(&format!("{minted} of 12")) {
            seen.borrow_mut().get_or_insert(message);
        }
        None
    })
    .await;
    let partial = seen_partial
        .into_inner()
        .expect("the status showed a partial count while minting");
    eprintln!("while minting, Ready=False said: {partial}");

    // --- a few members: one Event each, regarding the member's pod, each with its own note
    for i in 0..3 {
        pods.create(&PostParams::default(), &member_pod(&format!("few-{i}"), "few", &[]))
            .await
            .unwrap();
    }
    apply(&clusters, &cluster("few", "few", 2048)).await;
    let events: Api<Event> = Api::namespaced(h.admin.clone(), &h.ns);
    wait_for("one MintedIdentity Event per member, on its pod", WAIT, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        let mut regarding: Vec<(String, String)> = list
            .items
            .iter()
            .filter(|e| e.reason.as_deref() == Some("MintedIdentity"))
            .filter(|e| e.related.as_ref().and_then(|r| r.name.as_deref()) == Some("few"))
            .map(|e| {
                let pod = e.regarding.as_ref().and_then(|r| r.name.clone()).unwrap_or_default();
                (pod, e.note.clone().unwrap_or_default())
            })
            .collect();
        regarding.sort();
        (regarding.len() == 3).then_some(regarding)
    })
    .await
    .iter()
    .for_each(|(pod, note)| assert!(note.ends_with(&format!("for pod {pod}")), "{pod}: {note}"));

    // --- deleting a cluster mid-batch stops its minting
    for i in 0..40 {
        pods.create(&PostParams::default(), &member_pod(&format!("big-{i}"), "big", &[]))
            .await
            .unwrap();
    }
    let before = operator.metric("xlattice_operator_identities_minted_total").await;
    apply(&clusters, &cluster("big", "big", 4096)).await;
    wait_for("big starts minting", WAIT, || async {
        (!identity_secrets(&secrets, "big").await.is_empty()).then_some(())
    })
    .await;
    clusters.delete("big", &DeleteParams::default()).await.unwrap();
    wait_for("big deleted", WAIT, || async {
        clusters.get_opt("big").await.ok()?.is_none().then_some(())
    })
    .await;
    let minted = operator.metric("xlattice_operator_identities_minted_total").await - before;
    assert!(minted < 40.0, "deletion did not stop minting: {minted} of 40 minted");
    assert!(
        identity_secrets(&secrets, "big").await.is_empty(),
        "big's identities left behind"
    );
    eprintln!("deleting big stopped minting after {minted} of 40");
    for name in ["slow", "few"] {
        clusters.delete(name, &DeleteParams::default()).await.unwrap();
    }
}

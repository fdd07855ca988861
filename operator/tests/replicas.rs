//! Two operator replicas at once, against the real API server: one leads and reconciles,
//! the other waits; when the leader dies without releasing its Lease, the other takes over
//! after the Lease expires, and every identity minted before survives unchanged.

mod support;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use k8s_openapi::api::{coordination::v1::Lease, core::v1::Pod, core::v1::Secret};
use kube::{api::PostParams, Api};
use serde_json::json;
use support::*;
use xlattice_operator::{names::announced_node_id, XLatticeCluster};

const WAIT: Duration = Duration::from_secs(60);
/// What support::Operator passes as --lease-seconds.
const LEASE: Duration = Duration::from_secs(6);

async fn node_ids(secrets: &Api<Secret>) -> BTreeMap<String, String> {
    identity_secrets(secrets, "ha")
        .await
        .iter()
        .map(|(member, secret)| (member.clone(), announced_node_id(secret)))
        .collect()
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases.get_opt("xlattice-operator").await.ok()??.spec?.holder_identity
}

async fn ready_with(clusters: &Api<XLatticeCluster>, members: i32) -> Option<()> {
    let status = clusters.get("ha").await.ok()?.status?;
    let ready = status
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    (ready && status.minted == members).then_some(())
}

#[tokio::test]
async fn a_standby_replica_takes_over_without_reminting() {
    let Some((harness, first)) = Harness::start("ha").await else {
        return;
    };
    let second = Operator::start(&harness.kubeconfig, &harness.op_ns, &harness.run, free_port());
    let replicas = [first, second];
    let (admin, ns) = (&harness.admin, &harness.ns);
    let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
    let clusters: Api<XLatticeCluster> = Api::namespaced(admin.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), ns);
    let leases: Api<Lease> = Api::namespaced(admin.clone(), &harness.op_ns);

    for name in ["ha-0", "ha-1", "ha-2"] {
        pods.create(&PostParams::default(), &member_pod(name, "ha", &[]))
            .await
            .unwrap();
    }
    let cluster: XLatticeCluster = serde_json::from_value(json!({
        "apiVersion": "xlattice.io/v1alpha1", "kind": "XLatticeCluster",
        "metadata": {"name": "ha"},
        "spec": {"selector": {"matchLabels": {"app": "ha"}}, "clusterPort": 7000, "clientPort": 8000},
    }))
    .unwrap();
    apply(&clusters, &cluster).await;
    wait_for("3 members minted and Ready", WAIT, || ready_with(&clusters, 3)).await;

    // --- exactly one replica leads: it holds the Lease and is the only one that wrote
    let leader_name = holder(&leases).await.expect("a Lease holder");
    let leader = replicas
        .iter()
        .position(|op| leader_name == format!("op-{}", op.metrics))
        .unwrap_or_else(|| panic!("Lease held by {leader_name:?}, not one of the replicas"));
    let standby = 1 - leader;
    assert!(replicas[leader].metric("xlattice_operator_writes_total").await > 0.0);
    assert_eq!(
        replicas[standby].metric("xlattice_operator_reconciles_total").await,
        0.0,
        "the standby reconciled:\n{}",
        replicas[standby].log_tail()
    );
    let before = node_ids(&secrets).await;
    assert_eq!(before.len(), 3);

    // --- the leader dies without releasing the Lease; the standby takes over once it expires
    let [mut a, mut b] = replicas;
    let (dead, survivor) = if leader == 0 {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    dead.kill();
    let killed = Instant::now();
    pods.create(&PostParams::default(), &member_pod("ha-3", "ha", &[]))
        .await
        .unwrap();
    wait_for("the standby mints the new member", WAIT, || ready_with(&clusters, 4)).await;
    let took = killed.elapsed();
    eprintln!("failover: the standby minted a new member {took:?} after the leader was killed (Lease {LEASE:?})");
    assert_eq!(holder(&leases).await, Some(format!("op-{}", survivor.metrics)));
    assert!(
        took >= LEASE / 2,
        "took over before the Lease could have expired: {took:?}"
    );

    // --- nothing minted before changed, and the newcomer got a NodeID of its own
    let after = node_ids(&secrets).await;
    assert_eq!(after.len(), 4);
    for (member, id) in &before {
        assert_eq!(&after[member], id, "{member}'s NodeID changed across the failover");
    }
    assert!(!before.values().any(|id| id == &after["ha-3"]));
    assert_eq!(
        survivor.metric("xlattice_operator_identities_minted_total").await,
        1.0,
        "the new leader minted more than the newcomer:\n{}",
        survivor.log_tail()
    );
}

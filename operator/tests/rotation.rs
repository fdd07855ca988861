//! Key rotation against a real kube-apiserver (hack/control-plane.sh), the operator running
//! as its ServiceAccount with exactly the chart's RBAC (so `update` on Secrets is tested).
//!
//!   hack/control-plane.sh up /tmp/xlattice-cp
//!   XLATTICE_KUBECONFIG=/tmp/xlattice-cp/kubeconfig cargo test -p xlattice-operator --test rotation

mod support;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    core::v1::{Pod, Secret},
    events::v1::Event,
};
use kube::{
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    Api, ResourceExt,
};
use serde_json::json;
use support::*;
use xlattice_operator::XLatticeCluster;
use xlattice_protocol::Identity;

const WAIT: Duration = Duration::from_secs(60);

/// What a member's identity Secret holds: (node-id annotation, sk.pem, ck.pem, resourceVersion).
#[derive(Clone, Debug, PartialEq)]
struct Keys {
    node_id: String,
    sk: Vec<u8>,
    ck: Vec<u8>,
    version: String,
    sk_public: String,
}

fn keys(secret: &Secret) -> Keys {
    let data = secret.data.clone().unwrap();
    let identity = Identity::from_files(|f| data.get(f).map(|b| b.0.as_slice())).expect("identity loads");
    assert_eq!(
        identity.node_id.to_string(),
        secret.annotations()["xlattice.io/node-id"],
        "node-id key and annotation agree"
    );
    Keys {
        node_id: secret.annotations()["xlattice.io/node-id"].clone(),
        sk: data["sk.pem"].0.clone(),
        ck: data["ck.pem"].0.clone(),
        version: secret.resource_version().unwrap(),
        sk_public: identity.sk_public().to_pem(),
    }
}

struct Env {
    secrets: Api<Secret>,
    admin: kube::Client,
    ns: String,
}

impl Env {
    async fn by_member(&self) -> BTreeMap<String, Secret> {
        identity_secrets(&self.secrets, "rot").await
    }

    async fn keys(&self) -> BTreeMap<String, Keys> {
        self.by_member()
            .await
            .iter()
            .map(|(m, s)| (m.clone(), keys(s)))
            .collect()
    }

    /// The directory's sk PEM by member.
    async fn directory_sks(&self) -> BTreeMap<String, String> {
        let dir = xlattice_operator::directory::fetch(&self.admin, &self.ns, "rot")
            .await
            .unwrap();
        dir.members.into_iter().map(|m| (m.name, m.sk)).collect()
    }

    /// Waits until the directory lists exactly `keys`' public sk of every member.
    async fn directory_shows(&self, keys: &BTreeMap<String, Keys>) {
        let want: BTreeMap<String, String> = keys.iter().map(|(m, k)| (m.clone(), k.sk_public.clone())).collect();
        wait_for("the directory shows the current public keys", WAIT, || async {
            (self.directory_sks().await == want).then_some(())
        })
        .await;
    }
}

async fn annotate<K>(api: &Api<K>, name: &str, token: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = json!({"metadata": {"annotations": {"xlattice.io/rotate": token}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

#[tokio::test]
async fn keys_rotate_on_demand_and_on_a_period_keeping_node_ids() {
    let Some((harness, mut operator)) = Harness::start("rot").await else {
        return;
    };
    let Harness {
        admin,
        run,
        ns,
        op_ns,
        kubeconfig,
        ..
    } = harness;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    let clusters: Api<XLatticeCluster> = Api::namespaced(admin.clone(), &ns);
    let env = Env {
        secrets: Api::namespaced(admin.clone(), &ns),
        admin: admin.clone(),
        ns: ns.clone(),
    };

    // --- two members minted
    for name in ["rot-0", "rot-1"] {
        pods.create(&PostParams::default(), &member_pod(name, "rot", &[]))
            .await
            .unwrap();
    }
    let cluster: XLatticeCluster = serde_json::from_value(json!({
        "apiVersion": "xlattice.io/v1alpha1", "kind": "XLatticeCluster",
        "metadata": {"name": "rot"},
        "spec": {
            "selector": {"matchLabels": {"app": "rot"}},
            "clusterPort": 7000, "clientPort": 8000, "nodeIdBits": 160, "rsaBits": 2048,
        },
    }))
    .unwrap();
    apply(&clusters, &cluster).await;
    wait_for("two identities", WAIT, || async {
        (env.by_member().await.len() == 2).then_some(())
    })
    .await;
    let minted = env.keys().await;
    env.directory_shows(&minted).await;

    // --- the cluster annotated: every member gets new keys, same NodeID; the directory follows
    let started = Instant::now();
    annotate(&clusters, "rot", "1").await;
    wait_for("both Secrets rotated for cluster token 1", WAIT, || async {
        let all = env.by_member().await;
        all.values()
            .all(|s| {
                s.annotations()
                    .get("xlattice.io/rotated-for-cluster")
                    .map(String::as_str)
                    == Some("1")
            })
            .then_some(())
    })
    .await;
    let rotated = env.keys().await;
    env.directory_shows(&rotated).await;
    eprintln!("2 members rotated, directory updated, in {:?}", started.elapsed());
    for (member, new) in &rotated {
        let old = &minted[member];
        assert_eq!(new.node_id, old.node_id, "{member}: NodeID kept");
        assert_ne!(new.sk, old.sk, "{member}: new sk");
        assert_ne!(new.ck, old.ck, "{member}: new ck");
    }
    assert_eq!(operator.metric("xlattice_operator_identities_rotated_total").await, 2.0);
    // The status is written after the Secrets (a later write of the same reconcile): a
    // reader may see the keys first.
    wait_for("status.lastRotation set", WAIT, || async {
        let status = clusters.get("rot").await.ok()?.status?;
        status.last_rotation.map(drop)
    })
    .await;
    let events: Api<Event> = Api::namespaced(admin.clone(), &ns);
    // The recorder folds repeats of a reason into one Event with a series count.
    wait_for("two RotatedKeys events", WAIT, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        let n: i32 = list
            .items
            .iter()
            .filter(|e| e.reason.as_deref() == Some("RotatedKeys"))
            .map(|e| e.series.as_ref().map_or(1, |s| s.count))
            .sum();
        (n == 2).then_some(())
    })
    .await;

    // --- one pod annotated: only that member rotates
    annotate(&pods, "rot-1", "a").await;
    wait_for("rot-1 rotated for pod token a", WAIT, || async {
        let all = env.by_member().await;
        (all["rot-1"]
            .annotations()
            .get("xlattice.io/rotated-for-pod")
            .map(String::as_str)
            == Some("a"))
        .then_some(())
    })
    .await;
    let after_pod = env.keys().await;
    assert_eq!(after_pod["rot-0"], rotated["rot-0"], "rot-0 untouched");
    assert_eq!(after_pod["rot-1"].node_id, rotated["rot-1"].node_id);
    assert_ne!(after_pod["rot-1"].sk, rotated["rot-1"].sk);
    env.directory_shows(&after_pod).await;

    // --- a member that joins while the cluster token is set is minted, not rotated at once
    pods.create(&PostParams::default(), &member_pod("rot-2", "rot", &[]))
        .await
        .unwrap();
    wait_for("rot-2 minted", WAIT, || async {
        env.by_member().await.contains_key("rot-2").then_some(())
    })
    .await;
    let rot2 = env.by_member().await["rot-2"].clone();
    assert_eq!(rot2.annotations()["xlattice.io/rotated-for-cluster"], "1");
    assert!(rot2.annotations().contains_key("xlattice.io/keys-created-at"));
    let settled = env.keys().await;
    env.directory_shows(&settled).await;

    // --- restart: nothing rotates again
    operator.kill();
    let mut operator = Operator::start(&kubeconfig, &op_ns, &run, free_port());
    wait_for("the restarted operator reconciles", WAIT, || async {
        (operator.metric("xlattice_operator_reconciles_total").await >= 1.0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.keys().await, settled, "a restart rotated:\n{}", operator.log_tail());
    assert_eq!(operator.metric("xlattice_operator_identities_rotated_total").await, 0.0);

    // --- a period: keys older than it are rotated, again and again (requeued, no event needed)
    let period = json!({"spec": {"rotation": {"period": "3s"}}});
    clusters
        .patch("rot", &PatchParams::default(), &Patch::Merge(&period))
        .await
        .unwrap();
    let started = Instant::now();
    let mut seen = settled["rot-0"].sk.clone();
    let mut first = None;
    for round in 1..=2 {
        let next = wait_for(&format!("periodic rotation {round} of rot-0"), WAIT, || async {
            let k = env.keys().await.remove("rot-0")?;
            (k.sk != seen).then_some(k)
        })
        .await;
        assert_eq!(next.node_id, settled["rot-0"].node_id);
        eprintln!("periodic rotation {round} of rot-0 after {:?}", started.elapsed());
        seen = next.sk;
        first.get_or_insert_with(Instant::now);
    }
    let between = first.unwrap().elapsed();
    assert!(
        between >= Duration::from_secs(2),
        "a 3s period rotated twice within {between:?}"
    );
    let off = json!({"spec": {"rotation": null}});
    clusters
        .patch("rot", &PatchParams::default(), &Patch::Merge(&off))
        .await
        .unwrap();

    // --- cleanup
    clusters.delete("rot", &DeleteParams::default()).await.unwrap();
    wait_for("cluster gone", WAIT, || async {
        clusters.get_opt("rot").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(env.by_member().await.is_empty(), "identity Secrets left behind");
    operator.kill();
}

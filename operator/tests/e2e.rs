//! The operator against a real kube-apiserver (hack/control-plane.sh): the operator runs as
//! a separate process, authenticated as its ServiceAccount with exactly the chart's RBAC.
//!
//!   hack/control-plane.sh up /tmp/xlattice-cp
//!   XLATTICE_KUBECONFIG=/tmp/xlattice-cp/kubeconfig cargo test -p xlattice-operator --test e2e
//!
//! Without an API server these tests fail (set XLATTICE_SKIP_E2E=1 to skip them loudly).

mod support;

use std::{collections::BTreeMap, time::Duration, time::Instant};

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, ReplicaSet, ReplicaSetSpec},
        core::v1::{ConfigMap, Pod, PodTemplateSpec, Secret, Service},
        networking::v1::NetworkPolicy,
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, OwnerReference},
        util::intstr::IntOrString,
    },
};
use kube::{
    api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams},
    core::ObjectMeta,
    Api, Client, ResourceExt,
};
use serde_json::json;
use support::*;
use xlattice_operator::{
    names::{directory_shard, directory_shard_name},
    XLatticeCluster,
};
use xlattice_protocol::{Identity, MemberDirectory};

const WAIT: Duration = Duration::from_secs(60);

fn cluster_from(name: &str, spec: serde_json::Value) -> XLatticeCluster {
    serde_json::from_value(json!({
        "apiVersion": "xlattice.io/v1alpha1",
        "kind": "XLatticeCluster",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

#[tokio::test]
async fn bad_manifests_are_refused_naming_the_field() {
    let Some(path) = kubeconfig_path() else { return };
    let admin = admin_client(&path).await;
    install_crd(&admin).await;
    let ns = format!("xl-validate-{}", suffix());
    create_namespace(&admin, &ns).await;
    let api: Api<XLatticeCluster> = Api::namespaced(admin.clone(), &ns);
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let base = json!({"selector": {"matchLabels": {"app": "store"}}, "clusterPort": 7000, "clientPort": 8000});

    let ok = api
        .create(&dry, &cluster_from("store", base.clone()))
        .await
        .expect("a valid cluster applies");
    assert_eq!(
        (
            ok.spec.node_id_bits,
            ok.spec.rsa_bits,
            ok.spec.member_grace_period_seconds
        ),
        (256, 2048, 300),
        "defaults"
    );

    let cases = [
        (json!({"clusterPort": 0}), "spec.clusterPort"),
        (json!({"clientPort": 70000}), "spec.clientPort"),
        (
            json!({"clientPort": 7000}),
            "spec.clusterPort and spec.clientPort must differ",
        ),
        (json!({"rsaBits": 1024}), "spec.rsaBits"),
        (json!({"nodeIdBits": 128}), "spec.nodeIdBits"),
        (json!({"upstream": {"clusterPort": 8000}}), "spec.upstream.clusterPort"),
        (json!({"service": {"type": "ExternalName"}}), "spec.service.type"),
        (json!({"rotation": {"period": "banana"}}), "spec.rotation.period"),
        (json!({"rotation": {"period": "99999999999h"}}), "spec.rotation.period"),
        (
            json!({"clientAccess": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}),
            "spec.clientAccess",
        ),
        (
            json!({"clientAccess": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0"]}}]}),
            "spec.clientAccess",
        ),
        (
            json!({"clusterPort": 15090}),
            "spec.clusterPort must not be 15001 or 15090",
        ),
        (
            json!({"clientPort": 15001}),
            "spec.clientPort must not be 15001 or 15090",
        ),
        // The application's default loopback port would be the public client port.
        (
            json!({"clientPort": 17000}),
            "spec.upstream.clusterPort (default clusterPort + 10000)",
        ),
        (
            json!({"upstream": {"clusterPort": 18000}}),
            "spec.upstream.clusterPort and spec.upstream.clientPort",
        ),
        (json!({"upstream": {"clientPort": 15001}}), "spec.upstream.clientPort"),
    ];
    // Untyped: the Rust types could not even hold most of these values.
    let resource = ApiResource::erase::<XLatticeCluster>(&());
    let raw: Api<DynamicObject> = Api::namespaced_with(admin.clone(), &ns, &resource);
    let manifest = |name: &str, spec: serde_json::Value| -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "xlattice.io/v1alpha1", "kind": "XLatticeCluster",
            "metadata": {"name": name}, "spec": spec,
        }))
        .unwrap()
    };
    for (change, needle) in cases {
        let mut spec = base.clone();
        spec.as_object_mut()
            .unwrap()
            .extend(change.as_object().unwrap().clone());
        let err = raw
            .create(&dry, &manifest("store", spec.clone()))
            .await
            .expect_err(&format!("{spec} must be refused"));
        let kube::Error::Api(status) = &err else {
            panic!("{err}")
        };
        assert_eq!(status.code, 422, "{status:?}");
        assert!(
            status.message.contains(needle),
            "refusal of {change} should name {needle:?}: {}",
            status.message
        );
    }
    // Selectors: the same table the operator's own check is unit-tested with.
    let selectors: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(repo_file("operator/tests/fixtures/selectors.json")).unwrap())
            .unwrap();
    for case in selectors {
        let mut spec = base.clone();
        spec["selector"] = case["selector"].clone();
        let created = raw.create(&dry, &manifest("store", spec)).await;
        match (created, case["refused"].as_str()) {
            (Ok(_), None) => {}
            (Err(kube::Error::Api(status)), Some(needle)) => {
                assert_eq!(status.code, 422, "{status:?}");
                assert!(
                    status.message.contains(needle),
                    "{case}: {} lacks {needle}",
                    status.message
                );
            }
            (got, want) => panic!("{case}: got {got:?}, want refusal {want:?}"),
        }
    }
    // Key sizes are fixed for the life of a cluster; ports may change.
    let live = raw
        .create(&PostParams::default(), &manifest("live", base.clone()))
        .await
        .unwrap();
    for (change, needle) in [
        (json!({"spec": {"nodeIdBits": 160}}), "spec.nodeIdBits cannot change"),
        (json!({"spec": {"rsaBits": 4096}}), "spec.rsaBits cannot change"),
    ] {
        let params = PatchParams {
            dry_run: true,
            ..Default::default()
        };
        let err = raw.patch("live", &params, &Patch::Merge(&change)).await.unwrap_err();
        assert!(err.to_string().contains(needle), "{change}: {err}");
    }
    let params = PatchParams {
        dry_run: true,
        ..Default::default()
    };
    raw.patch("live", &params, &Patch::Merge(&json!({"spec": {"clientPort": 8100}})))
        .await
        .expect("ports may change on a live cluster");
    raw.delete(&live.name_any(), &DeleteParams::default()).await.unwrap();

    let err = raw.create(&dry, &manifest("Bad_Name", base)).await.unwrap_err();
    assert!(err.to_string().contains("metadata.name"), "{err}");
}

struct Env {
    admin: Client,
    ns: String,
    pods: Api<Pod>,
    secrets: Api<Secret>,
    clusters: Api<XLatticeCluster>,
}

impl Env {
    async fn secrets_by_member(&self) -> BTreeMap<String, Secret> {
        identity_secrets(&self.secrets, "store").await
    }

    /// The directory as published (every shard merged); None before any shard exists.
    async fn directory(&self) -> Option<MemberDirectory> {
        let dir = xlattice_operator::directory::fetch(&self.admin, &self.ns, "store")
            .await
            .unwrap();
        (!dir.members.is_empty()).then_some(dir)
    }

    /// Names of the directory shard ConfigMaps that exist.
    async fn directory_shards(&self) -> Vec<String> {
        let mut names: Vec<String> = Api::<ConfigMap>::namespaced(self.admin.clone(), &self.ns)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|cm| cm.name_any())
            .filter(|n| n.starts_with("store-directory"))
            .collect();
        names.sort_by_key(|n| shard_number(n));
        names
    }

    async fn ready(&self) -> bool {
        let Ok(c) = self.clusters.get("store").await else {
            return false;
        };
        c.status
            .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    }

    /// Simulates a kubelet: a pod IP through the status subresource.
    async fn set_pod_ip(&self, pod: &str, ip: &str) {
        let status = json!({"status": {"podIP": ip, "podIPs": [{"ip": ip}]}});
        self.pods
            .patch_status(pod, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
    }
}

/// One operator process, one namespace, the life of a cluster from creation to deletion.
/// Sequential on purpose: a second operator with its own Lease would reconcile the same
/// clusters and blur what each step measures.
#[tokio::test]
async fn operator_as_service_account_end_to_end() {
    let webhook_port = free_port();
    let Some((harness, mut operator)) = Harness::start_with_webhook("e2e", webhook_port).await else {
        return;
    };
    let Harness {
        admin,
        path: admin_kubeconfig,
        run,
        ns,
        op_ns,
        kubeconfig,
        ..
    } = harness;
    let env = Env {
        admin: admin.clone(),
        ns: ns.clone(),
        pods: Api::namespaced(admin.clone(), &ns),
        secrets: Api::namespaced(admin.clone(), &ns),
        clusters: Api::namespaced(admin.clone(), &ns),
    };
    let started = Instant::now();

    // --- three member pods, then the cluster: identities, directory, policy, services, Ready
    for name in ["store-0", "store-1", "store-2"] {
        env.pods
            .create(&PostParams::default(), &member_pod(name, "store", &[]))
            .await
            .unwrap();
    }
    let spec = json!({
        "selector": {"matchLabels": {"app": "store"}},
        "clusterPort": 7000, "clientPort": 8000,
        "rsaBits": 2048, "nodeIdBits": 160,
        "memberGracePeriodSeconds": 3,
        "extraIngressPorts": [9100],
    });
    apply(&env.clusters, &cluster_from("store", spec)).await;
    wait_for("three identity Secrets", WAIT, || async {
        (env.secrets_by_member().await.len() == 3).then_some(())
    })
    .await;
    for (pod, ip) in [
        ("store-0", "10.1.0.10"),
        ("store-1", "10.1.0.11"),
        ("store-2", "10.1.0.12"),
    ] {
        env.set_pod_ip(pod, ip).await;
    }
    wait_for("Ready with endpoints in the directory", WAIT, || async {
        let dir = env.directory().await?;
        let endpoints = dir.members.len() == 3 && dir.members.iter().all(|m| m.cluster_endpoint.is_some());
        (endpoints && env.ready().await).then_some(())
    })
    .await;
    eprintln!("3 members Ready in {:?}", started.elapsed());

    let secrets = env.secrets_by_member().await;
    let dir = env.directory().await.unwrap();
    assert_eq!(dir.cluster, format!("{ns}/store"));
    assert_eq!(
        dir.members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
        ["store-0", "store-1", "store-2"]
    );
    dir.index()
        .expect("directory is consistent (unique NodeIDs, parseable keys)");
    for member in &dir.members {
        let secret = &secrets[&member.name];
        assert_eq!(
            secret.metadata.name.as_deref(),
            Some(format!("xlattice-id-{}", member.name).as_str())
        );
        assert_eq!(secret.type_.as_deref(), Some("xlattice.io/identity"));
        assert_eq!(secret.annotations()["xlattice.io/node-id"], member.node_id.to_string());
        let data = secret.data.clone().unwrap();
        assert_eq!(data.keys().collect::<Vec<_>>(), ["ck.pem", "node-id", "sk.pem"]);
        let identity = Identity::from_files(|f| data.get(f).map(|b| b.0.as_slice())).expect("identity loads");
        assert_eq!(identity.node_id, member.node_id);
        assert_eq!(identity.sk_public().to_pem(), member.sk);
        assert_eq!(identity.node_id.as_bytes().len(), 20, "nodeIdBits 160");
        let ip = &member.cluster_endpoint.as_ref().unwrap()[..9];
        assert_eq!(member.client_endpoint.as_deref(), Some(format!("{ip}:8000").as_str()));
    }

    let np = Api::<NetworkPolicy>::namespaced(admin.clone(), &ns)
        .get("store-xlattice")
        .await
        .unwrap();
    let np_spec = np.spec.unwrap();
    assert_eq!(
        np_spec.pod_selector.as_ref().unwrap().match_labels.as_ref().unwrap()["app"],
        "store"
    );
    assert_eq!(np_spec.policy_types.as_deref(), Some(&["Ingress".to_string()][..]));
    let rules = np_spec.ingress.unwrap();
    let port = |i: usize| {
        rules[i]
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| p.port.clone().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(port(0), [IntOrString::Int(7000)]);
    let peers = rules[0].from.as_ref().unwrap();
    assert_eq!(peers.len(), 1);
    assert_eq!(
        peers[0].pod_selector.as_ref().unwrap().match_labels.as_ref().unwrap()["app"],
        "store"
    );
    assert!(
        peers[0].namespace_selector.is_none() && peers[0].ip_block.is_none(),
        "cluster port: members only"
    );
    assert_eq!(port(1), [IntOrString::Int(8000)]);
    assert!(rules[1].from.is_none(), "client port: anyone");
    assert_eq!(port(2), [IntOrString::Int(9100), IntOrString::Int(15090)]);

    let services: Api<Service> = Api::namespaced(admin.clone(), &ns);
    let client_svc = services.get("store").await.unwrap().spec.unwrap();
    assert_eq!(client_svc.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(client_svc.ports.as_ref().unwrap()[0].port, 8000);
    let members_svc = services.get("store-members").await.unwrap().spec.unwrap();
    assert_eq!(members_svc.cluster_ip.as_deref(), Some("None"));
    assert_eq!(members_svc.publish_not_ready_addresses, Some(true));
    assert_eq!(members_svc.ports.as_ref().unwrap()[0].port, 7000);

    let status = env.clusters.get("store").await.unwrap().status.unwrap();
    assert_eq!((status.members, status.minted), (3, 3));
    assert_eq!(status.pods_without_sidecar, ["store-0", "store-1", "store-2"]);
    // Each member's record sits in the shard its name hashes to; only those shards exist.
    let shards = shards_of(&["store-0", "store-1", "store-2"]);
    assert_eq!(status.directory_config_maps, shards);
    assert_eq!(env.directory_shards().await, shards);

    // --- the directory command prints what external clients need: every shard, merged
    let printed = std::process::Command::new(env!("CARGO_BIN_EXE_xlattice-operator"))
        .args(["directory", "store", "--namespace", &ns])
        .env("KUBECONFIG", &admin_kubeconfig)
        .output()
        .unwrap();
    assert!(printed.status.success(), "{}", String::from_utf8_lossy(&printed.stderr));
    let printed = MemberDirectory::from_slice(&printed.stdout).unwrap();
    assert_eq!(Some(printed.clone()), env.directory().await);
    assert_eq!(printed.members.len(), 3);
    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_xlattice-operator"))
        .args(["directory", "nonesuch", "--namespace", &ns])
        .env("KUBECONFIG", &admin_kubeconfig)
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no directory published for XLatticeCluster"));

    // --- a resync of a settled cluster writes nothing
    let versions = |s: &BTreeMap<String, Secret>| s.values().map(|s| s.resource_version().unwrap()).collect::<Vec<_>>();
    let before = versions(&env.secrets_by_member().await);
    // Settled first: the reconciles that the pod IPs started may still be writing (their
    // Services, slices, status) when Ready is first seen; two quiet seconds in a row.
    let writes = wait_for("the operator's writes to settle", WAIT, || async {
        let before = operator.metric("xlattice_operator_writes_total").await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = operator.metric("xlattice_operator_writes_total").await;
        (before == after).then_some(after)
    })
    .await;
    let reconciles = operator.metric("xlattice_operator_reconciles_total").await;
    let touch = json!({"metadata": {"annotations": {"e2e/touch": "1"}}});
    env.clusters
        .patch("store", &PatchParams::default(), &Patch::Merge(&touch))
        .await
        .unwrap();
    wait_for("a reconcile after the touch", WAIT, || async {
        (operator.metric("xlattice_operator_reconciles_total").await > reconciles).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        operator.metric("xlattice_operator_writes_total").await,
        writes,
        "a resync wrote:\n{}",
        operator.log_tail()
    );
    assert_eq!(versions(&env.secrets_by_member().await), before);

    // --- restart: no identity changes, and the new process writes nothing at all
    let node_ids: Vec<String> = secrets
        .values()
        .map(|s| s.annotations()["xlattice.io/node-id"].clone())
        .collect();
    operator.kill();
    let mut operator = Operator::start(&kubeconfig, &op_ns, &run, webhook_port);
    wait_for("the restarted operator reconciles", WAIT, || async {
        (operator.metric("xlattice_operator_reconciles_total").await >= 1.0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = env.secrets_by_member().await;
    assert_eq!(versions(&after), before, "restart changed a Secret");
    assert_eq!(
        after
            .values()
            .map(|s| s.annotations()["xlattice.io/node-id"].clone())
            .collect::<Vec<_>>(),
        node_ids
    );
    assert_eq!(
        operator.metric("xlattice_operator_writes_total").await,
        0.0,
        "restart wrote:\n{}",
        operator.log_tail()
    );

    // --- webhook: registered by URL on loopback; the operator writes its caBundle
    webhook_injects(&env, &operator, &ns).await;

    // --- restartWorkloads: owners of sidecar-less pods are rolled one at a time
    restarts_workloads_one_at_a_time(&env).await;

    // --- a member leaves: its identity goes after the grace period, the directory at once
    env.pods.delete("store-2", &DeleteParams::default()).await.unwrap();
    let left = Instant::now();
    wait_for("store-2 leaves the directory", WAIT, || async {
        env.directory()
            .await
            .filter(|d| d.members.iter().all(|m| m.name != "store-2"))
            .map(|_| ())
    })
    .await;
    eprintln!(
        "store-2 left the directory {:?} after its pod was deleted",
        left.elapsed()
    );
    // store-2 was alone in its shard: the emptied shard is deleted.
    assert_eq!(env.directory_shards().await, shards_of(&["store-0", "store-1"]));
    assert!(
        env.secrets_by_member().await.contains_key("store-2"),
        "identity kept during the grace period"
    );
    wait_for("store-2's identity deleted after the grace period", WAIT, || async {
        (!env.secrets_by_member().await.contains_key("store-2")).then_some(())
    })
    .await;
    assert!(
        left.elapsed() >= Duration::from_secs(3),
        "deleted before the grace period: {:?}",
        left.elapsed()
    );

    // --- deleting the cluster cleans up everything it owns (no garbage collector here)
    env.clusters.delete("store", &DeleteParams::default()).await.unwrap();
    wait_for("cluster gone after its finalizer ran", WAIT, || async {
        env.clusters.get_opt("store").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(env.secrets_by_member().await.is_empty(), "identity Secrets left behind");
    assert_eq!(
        env.directory_shards().await,
        Vec::<String>::new(),
        "directory shards left behind"
    );
    assert!(Api::<NetworkPolicy>::namespaced(admin.clone(), &ns)
        .get_opt("store-xlattice")
        .await
        .unwrap()
        .is_none());
    assert!(services.get_opt("store").await.unwrap().is_none());
    assert!(services.get_opt("store-members").await.unwrap().is_none());
    eprintln!("end to end in {:?}", started.elapsed());
    operator.kill();
}

/// No controller-manager here: the Deployment → ReplicaSet → Pod chain is made by hand and
/// a finished rollout is simulated by writing the Deployment's status.
async fn restarts_workloads_one_at_a_time(env: &Env) {
    let deployments: Api<Deployment> = Api::namespaced(env.admin.clone(), &env.ns);
    let replica_sets: Api<ReplicaSet> = Api::namespaced(env.admin.clone(), &env.ns);
    let owner = |kind: &str, name: &str, uid: Option<String>| OwnerReference {
        api_version: "apps/v1".into(),
        kind: kind.into(),
        name: name.into(),
        uid: uid.unwrap(),
        controller: Some(true),
        ..Default::default()
    };
    for app in ["app-a", "app-b"] {
        let labels = BTreeMap::from([
            ("app".to_string(), "store".to_string()),
            ("tier".to_string(), app.to_string()),
        ]);
        let template = PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels.clone()),
                ..Default::default()
            }),
            spec: member_pod("x", "store", &[]).spec,
        };
        let selector = LabelSelector {
            match_labels: Some(labels.clone()),
            ..Default::default()
        };
        let d = Deployment {
            metadata: ObjectMeta {
                name: Some(app.into()),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(1),
                selector: selector.clone(),
                template: template.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let d = deployments.create(&PostParams::default(), &d).await.unwrap();
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(format!("{app}-5d8f7")),
                owner_references: Some(vec![owner("Deployment", app, d.uid())]),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(1),
                selector,
                template: Some(template),
                ..Default::default()
            }),
            ..Default::default()
        };
        let rs = replica_sets.create(&PostParams::default(), &rs).await.unwrap();
        let mut pod = member_pod(&format!("{app}-5d8f7-abcde"), "store", &[]);
        pod.metadata.labels = Some(labels);
        pod.metadata.owner_references = Some(vec![owner("ReplicaSet", &rs.name_any(), rs.uid())]);
        env.pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    let restarted = |d: &Deployment| {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref()?.get("xlattice.io/restarted-for").cloned())
    };
    let enable = json!({"spec": {"restartWorkloads": true}});
    env.clusters
        .patch("store", &PatchParams::default(), &Patch::Merge(&enable))
        .await
        .unwrap();
    wait_for("app-a restarted", WAIT, || async {
        restarted(&deployments.get("app-a").await.ok()?).map(|_| ())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        restarted(&deployments.get("app-b").await.unwrap()),
        None,
        "app-b restarted while app-a still rolls"
    );

    // app-a's rollout finishes: now app-b's turn.
    let a = deployments.get("app-a").await.unwrap();
    let status = json!({"status": {"observedGeneration": a.metadata.generation, "replicas": 1, "updatedReplicas": 1}});
    deployments
        .patch_status("app-a", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    wait_for("app-b restarted after app-a rolled out", WAIT, || async {
        restarted(&deployments.get("app-b").await.ok()?).map(|_| ())
    })
    .await;
    let disable = json!({"spec": {"restartWorkloads": false}});
    env.clusters
        .patch("store", &PatchParams::default(), &Patch::Merge(&disable))
        .await
        .unwrap();
    for pod in ["app-a-5d8f7-abcde", "app-b-5d8f7-abcde"] {
        env.pods.delete(pod, &DeleteParams::default()).await.unwrap();
    }
}

async fn webhook_injects(env: &Env, operator: &Operator, ns: &str) {
    let mwc_api = register_webhook(&env.admin, operator, ns).await;

    // A Deployment-style pod: generateName only. The webhook names it, so its Secret is known.
    let mut pod = member_pod("", "store", &[]);
    pod.metadata.name = None;
    pod.metadata.generate_name = Some("store-web-".into());
    let created = wait_for("the webhook admits a pod", WAIT, || async {
        match env.pods.create(&PostParams::default(), &pod).await {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("pod create (webhook may be starting): {e}");
                None
            }
        }
    })
    .await;
    let name = created.name_any();
    assert!(
        name.starts_with("store-web-") && name.len() == "store-web-".len() + 5,
        "{name}"
    );
    assert_eq!(created.annotations()["xlattice.io/injected"], "store");
    let spec = created.spec.unwrap();
    let sidecar = &spec.init_containers.as_ref().expect("init containers")[0];
    assert_eq!(sidecar.name, "xlattice-sidecar");
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
    assert_eq!(sidecar.image.as_deref(), Some("xlattice-sidecar:e2e"));
    let volumes = spec.volumes.unwrap();
    let secret_volume = volumes.iter().find_map(|v| v.secret.as_ref()).unwrap();
    assert_eq!(secret_volume.secret_name, Some(format!("xlattice-id-{name}")));
    // Readable by the sidecar's uid on a real kubelet (files are root-owned); the
    // real-node tests (hack/node-test.sh) prove the sidecar serves with it.
    assert_eq!(secret_volume.default_mode, Some(0o444));
    wait_for("the injected pod's identity is minted", WAIT, || async {
        env.secrets_by_member().await.contains_key(&name).then_some(())
    })
    .await;

    // The injected member carries the directory's version, which made the kubelet refresh
    // its volumes; members without the sidecar are never touched.
    let stamped = |pod: Pod| pod.annotations().get("xlattice.io/directory-version").cloned();
    wait_for("the injected member carries the directory's version", WAIT, || async {
        let version = env.directory().await?.version();
        let dir_has_it = env.directory().await?.members.iter().any(|m| m.name == name);
        (dir_has_it && stamped(env.pods.get(&name).await.ok()?) == Some(version)).then_some(())
    })
    .await;
    assert_eq!(
        stamped(env.pods.get("store-0").await.unwrap()),
        None,
        "store-0 has no sidecar"
    );
    // Any change of the directory (here a member's address) stamps the member again.
    let before = stamped(env.pods.get(&name).await.unwrap());
    env.set_pod_ip("store-0", "10.1.0.20").await;
    wait_for("the injected member carries the new version", WAIT, || async {
        let dir = env.directory().await?;
        let moved = dir
            .members
            .iter()
            .any(|m| m.cluster_endpoint.as_deref() == Some("10.1.0.20:7000"));
        let now = stamped(env.pods.get(&name).await.ok()?);
        (moved && now == Some(dir.version()) && now != before).then_some(())
    })
    .await;
    env.set_pod_ip("store-0", "10.1.0.10").await;

    // A pod whose app already listens on the client port cannot be served.
    let err = env
        .pods
        .create(&PostParams::default(), &member_pod("store-clash", "store", &[8000]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("spec.clientPort"), "{err}");

    // The ports change under a running member: its sidecar serves the old ones, and the
    // status says so (Ready=False) until the spec matches again.
    let ports = |client: i32| json!({"spec": {"clientPort": client}});
    let outdated = || async {
        let status = env.clusters.get("store").await.ok()?.status?;
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?.clone();
        Some((status.pods_with_outdated_sidecar, ready.status, ready.message))
    };
    env.clusters
        .patch("store", &PatchParams::default(), &Patch::Merge(&ports(8100)))
        .await
        .unwrap();
    let (_, _, message) = wait_for("the injected member is reported outdated", WAIT, || async {
        outdated()
            .await
            .filter(|(pods, ready, _)| *pods == [name.clone()] && ready == "False")
    })
    .await;
    assert!(message.contains("sidecar made for an earlier spec"), "{message}");
    env.clusters
        .patch("store", &PatchParams::default(), &Patch::Merge(&ports(8000)))
        .await
        .unwrap();
    wait_for("back to the injected spec: nothing outdated", WAIT, || async {
        outdated().await.filter(|(pods, _, _)| pods.is_empty())
    })
    .await;

    // The injected pod is no longer "without sidecar"; the old ones still are.
    wait_for("status lists only the un-injected members", WAIT, || async {
        let status = env.clusters.get("store").await.ok()?.status?;
        (status.members == 4 && !status.pods_without_sidecar.contains(&name)).then_some(())
    })
    .await;
    env.pods.delete(&name, &DeleteParams::default()).await.unwrap();
    mwc_api
        .delete("xlattice-sidecar-injector", &DeleteParams::default())
        .await
        .unwrap();
}

fn shard_number(name: &str) -> usize {
    name.rsplit('-')
        .next()
        .and_then(|k| k.parse().ok())
        .unwrap_or(usize::MAX)
}

/// The shard ConfigMaps the members' names put their records in, in shard order.
fn shards_of(members: &[&str]) -> Vec<String> {
    let shards: std::collections::BTreeSet<usize> = members.iter().map(|m| directory_shard(m)).collect();
    shards.into_iter().map(|k| directory_shard_name("store", k)).collect()
}

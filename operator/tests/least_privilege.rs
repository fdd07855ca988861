//! Least privilege, tried with the operator's own token against a real kube-apiserver: the
//! chart's RBAC and its ValidatingAdmissionPolicy together let the ServiceAccount write what
//! the operator owns and nothing else. Each escalation an attacker holding the token would
//! try is attempted and must be refused; what the operator does itself must still pass.

mod support;

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec},
        core::v1::{ConfigMap, Container, Pod, PodSpec, PodTemplateSpec, Secret, Service, ServicePort, ServiceSpec},
        events::v1::Event,
    },
    apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta},
    ByteString,
};
use kube::{
    api::{DeleteParams, Patch, PatchParams, PostParams},
    Api, Client,
};
use serde_json::json;
use support::*;

const MANAGED: (&str, &str) = ("app.kubernetes.io/managed-by", "xlattice-operator");

fn meta(name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
        ..Default::default()
    }
}

fn deployment(name: &str) -> Deployment {
    let labels = BTreeMap::from([("app".to_string(), name.to_string())]);
    Deployment {
        metadata: meta(name, &[]),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "app".into(),
                        image: Some("registry.invalid/app:1".into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The refusal's text, or a failure naming the write that got through.
fn refused<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>) -> String {
    match result {
        Ok(_) => panic!("the operator's token could {what}"),
        Err(kube::Error::Api(status)) => {
            assert!(matches!(status.code, 403 | 422), "{what}: {status:?}");
            status.message
        }
        Err(other) => panic!("{what}: {other}"),
    }
}

#[tokio::test]
async fn the_operators_token_writes_only_what_the_operator_owns() {
    let Some((h, mut operator)) = Harness::start("priv").await else {
        return;
    };
    // The token, not the process: the operator is not needed for this test.
    operator.kill();
    let op = admin_client(&h.kubeconfig).await; // any kubeconfig: this one holds the SA's token
    let ns = &h.ns;
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let patch_dry = PatchParams {
        dry_run: true,
        ..Default::default()
    };

    // What a user owns in a namespace the operator serves.
    let admin_secrets: Api<Secret> = Api::namespaced(h.admin.clone(), ns);
    let user_secret = Secret {
        metadata: meta("db-password", &[]),
        string_data: Some(BTreeMap::from([("password".to_string(), "hunter2".to_string())])),
        ..Default::default()
    };
    admin_secrets
        .create(&PostParams::default(), &user_secret)
        .await
        .unwrap();
    let admin_deploys: Api<Deployment> = Api::namespaced(h.admin.clone(), ns);
    admin_deploys
        .create(&PostParams::default(), &deployment("web"))
        .await
        .unwrap();
    let user_service = Service {
        metadata: meta("web", &[]),
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([("app".to_string(), "web".to_string())])),
            ports: Some(vec![ServicePort {
                port: 80,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    Api::<Service>::namespaced(h.admin.clone(), ns)
        .create(&PostParams::default(), &user_service)
        .await
        .unwrap();
    let admin_cms: Api<ConfigMap> = Api::namespaced(h.admin.clone(), ns);
    admin_cms
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: meta("settings", &[]),
                ..Default::default()
            },
        )
        .await
        .unwrap();

    let secrets: Api<Secret> = Api::namespaced(op.clone(), ns);
    let deploys: Api<Deployment> = Api::namespaced(op.clone(), ns);
    let services: Api<Service> = Api::namespaced(op.clone(), ns);
    let cms: Api<ConfigMap> = Api::namespaced(op.clone(), ns);

    // --- Secrets: none at all until a cluster lives in the namespace
    identities_only_where_a_cluster_lives(&h, &op).await;

    // --- Secrets: only identity Secrets it labels as its own
    let identity = Secret {
        metadata: meta("xlattice-id-probe", &[MANAGED]),
        type_: Some("xlattice.io/identity".into()),
        data: Some(BTreeMap::from([("node-id".to_string(), ByteString(b"00".to_vec()))])),
        ..Default::default()
    };
    // The policy is enforced a moment after it is stored.
    wait_for(
        "the admission policy refuses an Opaque Secret",
        Duration::from_secs(30),
        || async {
            let opaque = Secret {
                metadata: meta("planted", &[MANAGED]),
                ..Default::default()
            };
            secrets.create(&dry, &opaque).await.is_err().then_some(())
        },
    )
    .await;
    secrets
        .create(&dry, &identity)
        .await
        .expect("an identity Secret may be created");
    let message = refused(
        "create an unlabelled identity-typed Secret",
        secrets
            .create(
                &dry,
                &Secret {
                    metadata: meta("x", &[]),
                    ..identity.clone()
                },
            )
            .await,
    );
    assert!(message.contains("managed-by=xlattice-operator"), "{message}");
    let message = refused(
        "create a labelled Opaque Secret",
        secrets
            .create(
                &dry,
                &Secret {
                    type_: None,
                    ..identity.clone()
                },
            )
            .await,
    );
    assert!(message.contains("xlattice.io/identity"), "{message}");
    let steal = json!({"metadata": {"labels": {MANAGED.0: MANAGED.1}}, "type": "xlattice.io/identity"});
    refused(
        "adopt a user's Secret by labelling it",
        secrets.patch("db-password", &patch_dry, &Patch::Merge(&steal)).await,
    );
    refused(
        "overwrite a user's Secret",
        secrets
            .patch(
                "db-password",
                &patch_dry,
                &Patch::Merge(&json!({"stringData": {"password": "x"}})),
            )
            .await,
    );
    refused(
        "delete a user's Secret",
        secrets
            .delete(
                "db-password",
                &DeleteParams {
                    dry_run: true,
                    ..Default::default()
                },
            )
            .await,
    );

    // --- workloads: only the restart annotations of the pod template
    let image = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "evil/app:1"}]}}}});
    let message = refused(
        "change a Deployment's image",
        deploys.patch("web", &patch_dry, &Patch::Merge(&image)).await,
    );
    assert!(message.contains("restart annotations"), "{message}");
    let sa = json!({"spec": {"template": {"spec": {"serviceAccountName": "admin"}}}});
    refused(
        "change a Deployment's ServiceAccount",
        deploys.patch("web", &patch_dry, &Patch::Merge(&sa)).await,
    );
    let scale = json!({"spec": {"replicas": 0}});
    refused(
        "scale a Deployment to zero",
        deploys.patch("web", &patch_dry, &Patch::Merge(&scale)).await,
    );
    let sneak = json!({"spec": {"template": {"metadata": {"annotations": {"xlattice.io/restartedAt": "now", "sidecar.istio.io/inject": "false"}}}}});
    refused(
        "slip another annotation in with a restart",
        deploys.patch("web", &patch_dry, &Patch::Merge(&sneak)).await,
    );
    let restart = json!({"spec": {"template": {"metadata": {"annotations": {"xlattice.io/restartedAt": "now", "xlattice.io/restarted-for": "uid/hash"}}}}});
    deploys
        .patch("web", &patch_dry, &Patch::Merge(&restart))
        .await
        .expect("restartWorkloads' patch passes");
    refused(
        "delete a Deployment",
        deploys
            .delete(
                "web",
                &DeleteParams {
                    dry_run: true,
                    ..Default::default()
                },
            )
            .await,
    );

    // --- Services, ConfigMaps: only its own
    let hijack = json!({"spec": {"selector": {"app": "attacker"}}});
    refused(
        "redirect a user's Service",
        services.patch("web", &patch_dry, &Patch::Merge(&hijack)).await,
    );
    refused(
        "rewrite a user's ConfigMap",
        cms.patch("settings", &patch_dry, &Patch::Merge(&json!({"data": {"k": "v"}})))
            .await,
    );
    cms.create(
        &dry,
        &ConfigMap {
            metadata: meta("store-directory-0", &[MANAGED]),
            ..Default::default()
        },
    )
    .await
    .expect("a directory shard may be created");

    // --- pods: only the directory version, only on pods it injected
    let admin_pods: Api<Pod> = Api::namespaced(h.admin.clone(), ns);
    let mut injected = member_pod("member-0", "store", &[]);
    injected.metadata.annotations = Some(BTreeMap::from([(
        "xlattice.io/injected".to_string(),
        "store".to_string(),
    )]));
    admin_pods.create(&PostParams::default(), &injected).await.unwrap();
    admin_pods
        .create(&PostParams::default(), &member_pod("web-0", "web", &[]))
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(op.clone(), ns);
    let version = json!({"metadata": {"annotations": {"xlattice.io/directory-version": "0123456789abcdef"}}});
    pods.patch("member-0", &patch_dry, &Patch::Merge(&version))
        .await
        .expect("the directory version may be stamped on a member it injected");
    let message = refused(
        "stamp a pod it did not inject",
        pods.patch("web-0", &patch_dry, &Patch::Merge(&version)).await,
    );
    assert!(message.contains("directory-version"), "{message}");
    refused(
        "relabel a member pod (moving it out of a Service or a NetworkPolicy)",
        pods.patch(
            "member-0",
            &patch_dry,
            &Patch::Merge(&json!({"metadata": {"labels": {"app": "web"}}})),
        )
        .await,
    );
    refused(
        "slip another annotation in with the version",
        pods.patch(
            "member-0",
            &patch_dry,
            &Patch::Merge(
                &json!({"metadata": {"annotations": {"xlattice.io/directory-version": "x", "team": "evil"}}}),
            ),
        )
        .await,
    );
    refused(
        "drop the injected annotation",
        pods.patch(
            "member-0",
            &patch_dry,
            &Patch::Merge(&json!({"metadata": {"annotations": {"xlattice.io/injected": null}}})),
        )
        .await,
    );
    refused(
        "change a member's image",
        pods.patch(
            "member-0",
            &patch_dry,
            &Patch::Strategic(&json!({"spec": {"containers": [{"name": "app", "image": "evil/app:1"}]}})),
        )
        .await,
    );
    refused(
        "create a pod",
        pods.create(&dry, &member_pod("planted-0", "store", &[])).await,
    );
    refused(
        "delete a pod",
        pods.delete(
            "member-0",
            &DeleteParams {
                dry_run: true,
                ..Default::default()
            },
        )
        .await,
    );

    // --- its webhook configuration: the caBundle only
    let mwc_api = register_webhook_config(&h.admin).await;
    let mwcs: Api<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration> = Api::all(op.clone());
    let widen = json!({"webhooks": [{"name": "inject.xlattice.io", "failurePolicy": "Ignore"}]});
    refused(
        "change its webhook's failurePolicy",
        mwcs.patch("xlattice-sidecar-injector", &patch_dry, &Patch::Strategic(&widen))
            .await,
    );
    let ca = json!({"webhooks": [{"name": "inject.xlattice.io", "clientConfig": {"caBundle": "Zm9v"}}]});
    mwcs.patch("xlattice-sidecar-injector", &patch_dry, &Patch::Strategic(&ca))
        .await
        .expect("the caBundle may be written");
    mwc_api
        .delete("xlattice-sidecar-injector", &DeleteParams::default())
        .await
        .unwrap();
}

/// A webhook configuration like the chart's, without waiting for an operator's caBundle.
async fn register_webhook_config(
    admin: &Client,
) -> Api<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration> {
    use k8s_openapi::api::admissionregistration::v1::{
        MutatingWebhook, MutatingWebhookConfiguration, WebhookClientConfig,
    };
    let api: Api<MutatingWebhookConfiguration> = Api::all(admin.clone());
    let _ = api.delete("xlattice-sidecar-injector", &DeleteParams::default()).await;
    let mwc = MutatingWebhookConfiguration {
        metadata: meta("xlattice-sidecar-injector", &[]),
        webhooks: Some(vec![MutatingWebhook {
            name: "inject.xlattice.io".into(),
            admission_review_versions: vec!["v1".into()],
            side_effects: "None".into(),
            failure_policy: Some("Fail".into()),
            client_config: WebhookClientConfig {
                url: Some("https://127.0.0.1:1/mutate-pods".into()),
                ..Default::default()
            },
            // Selects nothing: no pod of any test depends on it.
            object_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([("xlattice.io/never".to_string(), "true".to_string())])),
                ..Default::default()
            }),
            ..Default::default()
        }]),
    };
    api.create(&PostParams::default(), &mwc).await.unwrap();
    api
}

/// With watchNamespaces, the token reads and writes nothing outside the namespaces it
/// serves (no Secret of kube-system, no list across the cluster), and the operator still
/// serves its namespace in full.
#[tokio::test]
async fn a_namespaced_operator_reads_nothing_elsewhere() {
    let Some((h, operator)) = Harness::start_scoped("scoped", free_port(), true).await else {
        return;
    };
    let op = admin_client(&h.kubeconfig).await;
    let elsewhere = format!("xl-scoped-other-{}", h.run);
    create_namespace(&h.admin, &elsewhere).await;
    let secret = Secret {
        metadata: meta("db-password", &[]),
        string_data: Some(BTreeMap::from([("password".to_string(), "hunter2".to_string())])),
        ..Default::default()
    };
    Api::<Secret>::namespaced(h.admin.clone(), &elsewhere)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let message = refused(
        "read a Secret of a namespace it does not serve",
        Api::<Secret>::namespaced(op.clone(), &elsewhere)
            .get("db-password")
            .await,
    );
    assert!(message.contains("forbidden"), "{message}");
    refused(
        "list kube-system's Secrets",
        Api::<Secret>::namespaced(op.clone(), "kube-system")
            .list(&Default::default())
            .await,
    );
    refused(
        "list every Secret",
        Api::<Secret>::all(op.clone()).list(&Default::default()).await,
    );
    refused(
        "list pods across the cluster",
        Api::<k8s_openapi::api::core::v1::Pod>::all(op.clone())
            .list(&Default::default())
            .await,
    );

    // The namespace it serves, in full: a member minted, the cluster Ready.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(h.admin.clone(), &h.ns);
    pods.create(&PostParams::default(), &member_pod("s-0", "s", &[]))
        .await
        .unwrap();
    let clusters: Api<xlattice_operator::XLatticeCluster> = Api::namespaced(h.admin.clone(), &h.ns);
    let spec = json!({"apiVersion": "xlattice.io/v1alpha1", "kind": "XLatticeCluster", "metadata": {"name": "s"},
        "spec": {"selector": {"matchLabels": {"app": "s"}}, "clusterPort": 7000, "clientPort": 8000}});
    apply(&clusters, &serde_json::from_value(spec).unwrap()).await;
    wait_for(
        "the namespaced operator makes s Ready",
        Duration::from_secs(60),
        || async {
            let status = clusters.get("s").await.ok()?.status?;
            let ready = status
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            (ready && status.minted == 1).then_some(())
        },
    )
    .await;
    let log = std::fs::read_to_string(&operator.log).unwrap();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "the namespaced operator was refused something:\n{}",
        operator.log_tail()
    );
    clusters.delete("s", &DeleteParams::default()).await.unwrap();
}

/// The chart's restartWorkloads.enabled=false: the workload permissions are not bound, so
/// the token cannot read or roll a Deployment, and a cluster that asks for restartWorkloads
/// is told so on a Warning Event instead of the operator trying and failing.
#[tokio::test]
async fn without_restart_workloads_the_token_cannot_touch_a_workload() {
    let Some((h, _operator)) = Harness::start_with("norestart", free_port(), false, false).await else {
        return;
    };
    let op = admin_client(&h.kubeconfig).await;
    Api::<Deployment>::namespaced(h.admin.clone(), &h.ns)
        .create(&PostParams::default(), &deployment("web"))
        .await
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(op.clone(), &h.ns);
    refused("read a Deployment", deployments.get("web").await);
    let restart = json!({"spec": {"template": {"metadata": {"annotations": {"xlattice.io/restarted-at": "now"}}}}});
    refused(
        "set the restart annotation on a Deployment",
        deployments
            .patch("web", &PatchParams::default(), &Patch::Merge(&restart))
            .await,
    );

    // A member that lacks the sidecar (no webhook here), in a cluster asking for restarts.
    Api::<Pod>::namespaced(h.admin.clone(), &h.ns)
        .create(&PostParams::default(), &member_pod("web-0", "web", &[]))
        .await
        .unwrap();
    let clusters: Api<xlattice_operator::XLatticeCluster> = Api::namespaced(h.admin.clone(), &h.ns);
    let spec = json!({"apiVersion": "xlattice.io/v1alpha1", "kind": "XLatticeCluster", "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "clusterPort": 7000, "clientPort": 8000,
                 "restartWorkloads": true}});
    apply(&clusters, &serde_json::from_value(spec).unwrap()).await;
    let events: Api<Event> = Api::namespaced(h.admin.clone(), &h.ns);
    let note = wait_for(
        "a RestartWorkloadsDisabled Warning",
        Duration::from_secs(60),
        || async {
            let list = events.list(&Default::default()).await.ok()?;
            list.items.into_iter().find_map(|e| {
                (e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some("RestartWorkloadsDisabled"))
                    .then(|| e.note.unwrap_or_default())
            })
        },
    )
    .await;
    assert!(
        note.contains("web-0") && note.contains("restartWorkloads.enabled=false"),
        "{note}"
    );
}

/// Serving every namespace, the token holds no Secret permission of its own: it may bind
/// the identities role to itself, under its one name, only in a namespace that holds an
/// XLatticeCluster (the admission policy), and then reads that namespace's Secrets only.
/// The binding is made here as the operator makes it (`desired::identities_binding`, by
/// server-side apply), with the operator's token; the refused ones are dry runs.
async fn identities_only_where_a_cluster_lives(h: &Harness, op: &Client) {
    use k8s_openapi::api::rbac::v1::{RoleBinding, Subject};
    use kube::api::DynamicObject;
    let ns = &h.ns;
    let secrets: Api<Secret> = Api::namespaced(op.clone(), ns);
    let kube_system: Api<Secret> = Api::namespaced(op.clone(), "kube-system");
    refused(
        "list Secrets where no cluster lives",
        secrets.list(&Default::default()).await,
    );
    refused(
        "list kube-system's Secrets",
        kube_system.list(&Default::default()).await,
    );
    refused(
        "list every Secret",
        Api::<Secret>::all(op.clone()).list(&Default::default()).await,
    );

    let me = Subject {
        kind: "ServiceAccount".into(),
        name: "xlattice-operator".into(),
        namespace: Some(h.op_ns.clone()),
        api_group: None,
    };
    let clusters = Api::<DynamicObject>::namespaced_with(h.admin.clone(), ns, &xlattice_operator::crd::api_resource());
    let spec = json!({"apiVersion": "xlattice.io/v1alpha1", "kind": "XLatticeCluster", "metadata": {"name": "p"},
        "spec": {"selector": {"matchLabels": {"app": "p"}}, "clusterPort": 7000, "clientPort": 8000}});
    let cluster = clusters
        .create(&PostParams::default(), &serde_json::from_value(spec).unwrap())
        .await
        .unwrap();
    let binding = xlattice_operator::desired::identities_binding(&cluster, &me);
    assert_eq!(
        binding.metadata.name.as_deref(),
        Some(format!("xlattice-identities.{}.xlattice-operator", h.op_ns).as_str())
    );
    let bind = |at: &str, edit: &dyn Fn(&mut RoleBinding), dry_run: bool| {
        let mut binding = binding.clone();
        binding.metadata.namespace = Some(at.to_string());
        edit(&mut binding);
        let api: Api<RoleBinding> = Api::namespaced(op.clone(), at);
        let params = PatchParams {
            dry_run,
            ..PatchParams::apply("xlattice-operator/p").force()
        };
        async move {
            api.patch(
                &binding.metadata.name.clone().unwrap(),
                &params,
                &Patch::Apply(&binding),
            )
            .await
        }
    };
    let keep = |_: &mut RoleBinding| {};
    // The policies are enforced a moment after they are stored.
    wait_for(
        "the admission policy refuses another name",
        Duration::from_secs(30),
        || async {
            bind(ns, &|b| b.metadata.name = Some("innocent".into()), true)
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
    // Where no cluster lives: refused, kube-system included.
    for elsewhere in ["kube-system", h.op_ns.as_str()] {
        let message = refused(
            &format!("bind the identities role in {elsewhere}"),
            bind(elsewhere, &keep, true).await,
        );
        assert!(message.contains("no params found"), "{message}");
    }
    let unlabelled = |b: &mut RoleBinding| b.metadata.labels = None;
    let message = refused(
        "bind it in kube-system without its label",
        bind("kube-system", &unlabelled, true).await,
    );
    assert!(message.contains("managed-by=xlattice-operator"), "{message}");
    refused(
        "bind it where the cluster lives without its label",
        bind(ns, &unlabelled, true).await,
    );
    let other_role = |b: &mut RoleBinding| {
        b.metadata.name = Some("xlattice-identities-view".into());
        b.role_ref.name = "view".into();
    };
    refused("bind another role to itself", bind(ns, &other_role, true).await);
    let friend = Subject {
        name: "default".into(),
        ..me.clone()
    };
    let shared = move |b: &mut RoleBinding| b.subjects.as_mut().unwrap().push(friend.clone());
    refused(
        "share the identities role with another account",
        bind(ns, &shared, true).await,
    );

    // Where the cluster lives: its own binding passes, and then its Secrets are readable.
    wait_for(
        "the identities binding where the cluster lives",
        Duration::from_secs(30),
        || async { bind(ns, &keep, false).await.ok().map(|_| ()) },
    )
    .await;
    wait_for(
        "Secrets readable where the cluster lives",
        Duration::from_secs(30),
        || async { secrets.list(&Default::default()).await.ok().map(|_| ()) },
    )
    .await;
    refused(
        "list kube-system's Secrets once bound elsewhere",
        kube_system.list(&Default::default()).await,
    );
}

/// A RoleBinding of the operator's name already in the namespace, binding another role (a
/// hand-made one, or left by a mistake): the operator cannot bind itself the identities
/// role there (a binding's role cannot change), says so on that cluster's status and in a
/// Warning Event, and serves another namespace's cluster meanwhile.
#[tokio::test]
async fn a_binding_in_the_way_is_reported_on_its_cluster_only() {
    use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
    let Some((h, _operator)) = Harness::start("inway").await else {
        return;
    };
    let name = format!("xlattice-identities.{}.xlattice-operator", h.op_ns);
    let squatter = RoleBinding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: "view".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: "default".into(),
            namespace: Some(h.ns.clone()),
            api_group: None,
        }]),
    };
    Api::<RoleBinding>::namespaced(h.admin.clone(), &h.ns)
        .create(&PostParams::default(), &squatter)
        .await
        .unwrap();
    let other_ns = format!("xl-inway-other-{}", h.run);
    create_namespace(&h.admin, &other_ns).await;
    let spec = |name: &str| {
        serde_json::from_value::<xlattice_operator::XLatticeCluster>(json!({"apiVersion": "xlattice.io/v1alpha1",
            "kind": "XLatticeCluster", "metadata": {"name": name},
            "spec": {"selector": {"matchLabels": {"app": name}}, "clusterPort": 7000, "clientPort": 8000}}))
        .unwrap()
    };
    let blocked: Api<xlattice_operator::XLatticeCluster> = Api::namespaced(h.admin.clone(), &h.ns);
    let fine: Api<xlattice_operator::XLatticeCluster> = Api::namespaced(h.admin.clone(), &other_ns);
    apply(&blocked, &spec("blocked")).await;
    apply(&fine, &spec("fine")).await;
    let condition = |api: Api<xlattice_operator::XLatticeCluster>, name: &'static str, type_: &'static str| async move {
        let status = api.get(name).await.ok()?.status?;
        let c = status
            .conditions
            .into_iter()
            .find(|c| c.type_ == type_ && c.status == "True")?;
        Some(format!("{}: {}", c.reason, c.message))
    };
    let degraded = wait_for("the blocked cluster is Degraded", Duration::from_secs(60), || {
        condition(blocked.clone(), "blocked", "Degraded")
    })
    .await;
    assert!(
        degraded.starts_with("MintingFailed: cannot bind the identities role"),
        "{degraded}"
    );
    assert!(degraded.contains(&name), "the message names the binding: {degraded}");
    wait_for(
        "the other namespace's cluster is Ready",
        Duration::from_secs(60),
        || condition(fine.clone(), "fine", "Ready"),
    )
    .await;
    let events: Api<Event> = Api::namespaced(h.admin.clone(), &h.ns);
    wait_for(
        "a MintingFailed Warning Event on the blocked cluster",
        Duration::from_secs(30),
        || async {
            let list = events.list(&Default::default()).await.ok()?;
            list.items
                .iter()
                .any(|e| e.reason.as_deref() == Some("MintingFailed") && e.type_.as_deref() == Some("Warning"))
                .then_some(())
        },
    )
    .await;
}

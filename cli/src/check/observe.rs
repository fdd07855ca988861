//! Reading what `check` judges: every read is kept with its error (forbidden, absent,
//! unreachable), so one thing the user may not read costs one check, not the whole run.
//! Nothing here writes: the webhook is tried with a server-side dry run.

use std::collections::BTreeMap;

use futures::{stream, StreamExt};
use k8s_openapi::{
    api::{
        admissionregistration::v1::MutatingWebhookConfiguration,
        authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec},
        coordination::v1::Lease,
        core::v1::{Container, Pod, PodSpec, Secret},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    api::{DynamicObject, ListParams, ObjectMeta, PostParams},
    Api, Client, ResourceExt,
};
use xlattice_operator::{crd, directory, names, webhook::certs};
use xlattice_protocol::MemberDirectory;

use super::{
    probe::{self, PolicyProbe},
    CheckArgs,
};

/// A read and what became of it: the message says why it failed (e.g. "forbidden: ...").
pub type Read<T> = Result<T, String>;

/// Everything `judge` needs, read once.
#[derive(Default)]
pub struct Observed {
    /// `major.minor` of the API server.
    pub version: Option<Read<(u32, u32)>>,
    /// Whether `admissionregistration.k8s.io/v1` serves ValidatingAdmissionPolicies.
    pub admission_policy_api: Option<Read<bool>>,
    /// For `--pre`: what the user may create, by kind.
    pub permissions: Vec<(&'static str, Read<bool>)>,
    pub crd: Option<Read<Option<CustomResourceDefinition>>>,
    pub webhook: Option<Read<Option<MutatingWebhookConfiguration>>>,
    /// The serving certificate (PEM) in the operator's TLS Secret.
    pub serving_cert: Option<Read<Option<String>>>,
    pub operator: Option<OperatorFacts>,
    pub clusters: Option<Read<Vec<ClusterFacts>>>,
    /// `--probe-network-policy`: what the two dials found.
    pub network_policy: Option<Read<PolicyProbe>>,
    /// The API server's own metrics (Prometheus text), for Secret encryption at rest.
    pub api_server_metrics: Option<Read<String>>,
}

pub struct OperatorFacts {
    pub namespace: String,
    pub pods: Read<Vec<Pod>>,
    pub lease: Read<Option<Lease>>,
}

pub struct ClusterFacts {
    pub object: DynamicObject,
    /// Every pod of the cluster's namespace (membership is decided in `judge`).
    pub pods: Read<Vec<Pod>>,
    pub directory: Read<MemberDirectory>,
    /// The pod a server-side dry run returned, if one could be built for the selector.
    pub dry_run: Option<Read<Pod>>,
    /// Each injected member's `xlattice_sidecar_directory_behind_seconds`, by pod name.
    pub behind: BTreeMap<String, Read<f64>>,
}

/// `forbidden: ...` / `not found: ...` / the transport error, for the finding's message.
pub fn describe(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) if status.code == 403 => format!("forbidden: {}", status.message),
        kube::Error::Api(status) => format!("{} ({})", status.message, status.code),
        other => other.to_string(),
    }
}

/// Reads what `args` asks to check.
pub async fn observe(client: &Client, args: &CheckArgs) -> Observed {
    let mut observed = Observed {
        version: Some(server_version(client).await),
        admission_policy_api: Some(admission_policy_api(client).await),
        api_server_metrics: Some(api_server_metrics(client).await),
        ..Default::default()
    };
    if args.pre {
        observed.permissions = permissions(client).await;
        observed.network_policy = network_policy(client, args, None).await;
        return observed;
    }
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    observed.crd = Some(crds.get_opt(super::CRD_NAME).await.map_err(|e| describe(&e)));
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    observed.webhook = Some(
        webhooks
            .get_opt(certs::WEBHOOK_CONFIGURATION)
            .await
            .map_err(|e| describe(&e)),
    );
    observed.serving_cert = Some(serving_cert(client, &args.operator_namespace).await);
    let operator = operator(client, args).await;
    observed.network_policy = network_policy(client, args, operator.pods.as_ref().ok()).await;
    observed.operator = Some(operator);
    let crd_installed = matches!(&observed.crd, Some(Ok(Some(_))));
    observed.clusters = if crd_installed {
        Some(clusters(client, args).await)
    } else {
        None
    };
    observed
}

/// The probe, if asked for, with `--probe-image` or else the sidecar image the operator
/// injects (read from its pods' arguments).
async fn network_policy(
    client: &Client,
    args: &CheckArgs,
    operator_pods: Option<&Vec<Pod>>,
) -> Option<Read<PolicyProbe>> {
    if !args.probe_network_policy {
        return None;
    }
    let operator_arg = |flag: &str| {
        let container = operator_pods?.first()?.spec.as_ref()?.containers.first()?;
        let prefix = format!("--{flag}=");
        let args = container.args.as_ref()?;
        args.iter().find_map(|a| a.strip_prefix(&prefix).map(str::to_string))
    };
    let Some(image) = args.probe_image.clone().or_else(|| operator_arg("sidecar-image")) else {
        return Some(Err(
            "no image for the probe pods: pass --probe-image (any image with `xlattice`)".into(),
        ));
    };
    Some(probe::network_policy(client, &image, operator_arg("sidecar-pull-policy")).await)
}

async fn server_version(client: &Client) -> Read<(u32, u32)> {
    let info = client.apiserver_version().await.map_err(|e| describe(&e))?;
    // Providers append to the minor version ("34+"): the leading digits are the version.
    let number = |s: &str| s.trim_end_matches(|c: char| !c.is_ascii_digit()).parse::<u32>();
    match (number(&info.major), number(&info.minor)) {
        (Ok(major), Ok(minor)) => Ok((major, minor)),
        _ => Err(format!("unreadable version {}.{}", info.major, info.minor)),
    }
}

async fn api_server_metrics(client: &Client) -> Read<String> {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    client.request_text(request).await.map_err(|e| describe(&e))
}

async fn admission_policy_api(client: &Client) -> Read<bool> {
    match client.list_api_group_resources("admissionregistration.k8s.io/v1").await {
        Ok(list) => Ok(list.resources.iter().any(|r| r.name == "validatingadmissionpolicies")),
        Err(e) => Err(describe(&e)),
    }
}

/// What installing needs to create, asked of the API server as the user.
async fn permissions(client: &Client) -> Vec<(&'static str, Read<bool>)> {
    const NEEDED: [(&str, &str, &str); 6] = [
        (
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            "CustomResourceDefinitions",
        ),
        (
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
            "MutatingWebhookConfigurations",
        ),
        (
            "admissionregistration.k8s.io",
            "validatingadmissionpolicies",
            "ValidatingAdmissionPolicies",
        ),
        ("rbac.authorization.k8s.io", "clusterroles", "ClusterRoles"),
        (
            "rbac.authorization.k8s.io",
            "clusterrolebindings",
            "ClusterRoleBindings",
        ),
        ("", "namespaces", "Namespaces"),
    ];
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let mut found = Vec::new();
    for (group, resource, kind) in NEEDED {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some(group.into()),
                    resource: Some(resource.into()),
                    verb: Some("create".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let allowed = api
            .create(&PostParams::default(), &review)
            .await
            .map(|r| r.status.is_some_and(|s| s.allowed))
            .map_err(|e| describe(&e));
        found.push((kind, allowed));
    }
    found
}

async fn serving_cert(client: &Client, namespace: &str) -> Read<Option<String>> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = secrets.get_opt(certs::TLS_SECRET).await.map_err(|e| describe(&e))?;
    Ok(secret
        .and_then(|s| s.data?.remove(certs::CERT_KEY))
        .and_then(|bytes| String::from_utf8(bytes.0).ok()))
}

async fn operator(client: &Client, args: &CheckArgs) -> OperatorFacts {
    let ns = &args.operator_namespace;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    OperatorFacts {
        namespace: ns.clone(),
        pods: pods
            .list(&ListParams::default().labels(&args.operator_selector))
            .await
            .map(|l| l.items)
            .map_err(|e| describe(&e)),
        lease: leases.get_opt(&args.lease_name).await.map_err(|e| describe(&e)),
    }
}

async fn clusters(client: &Client, args: &CheckArgs) -> Read<Vec<ClusterFacts>> {
    let resource = crd::api_resource();
    let api: Api<DynamicObject> = match &args.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    let objects = api.list(&ListParams::default()).await.map_err(|e| describe(&e))?.items;
    let mut found = Vec::with_capacity(objects.len());
    for object in objects {
        found.push(cluster(client, args, object).await);
    }
    Ok(found)
}

async fn cluster(client: &Client, args: &CheckArgs, object: DynamicObject) -> ClusterFacts {
    let (ns, name) = (object.namespace().unwrap_or_default(), object.name_any());
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pods = pods
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .map_err(|e| describe(&e));
    let directory = directory::fetch(client, &ns, &name).await.map_err(|e| e.to_string());
    let dry_run = match crd::decode_selector(&object).and_then(|s| s.match_labels) {
        Some(labels) if !labels.is_empty() => Some(dry_run_member(client, &ns, labels).await),
        _ => None,
    };
    let behind = match (&pods, args.skip_metrics) {
        (Ok(pods), false) => sidecars_behind(client, &ns, &object, pods).await,
        _ => BTreeMap::new(),
    };
    ClusterFacts {
        object,
        pods,
        directory,
        dry_run,
        behind,
    }
}

/// Asks the API server to create (dry run: nothing is stored, the webhook is still called)
/// a pod carrying the selector's labels, and returns the pod as admission left it.
async fn dry_run_member(client: &Client, ns: &str, labels: BTreeMap<String, String>) -> Read<Pod> {
    let pod = Pod {
        metadata: ObjectMeta {
            generate_name: Some("xlattice-check-".into()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "check".into(),
                // Never pulled: a dry run schedules and runs nothing.
                image: Some("xlattice-check.invalid/none:dry-run".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let params = PostParams {
        dry_run: true,
        field_manager: Some("kubectl-xlattice".into()),
    };
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&params, &pod)
        .await
        .map_err(|e| describe(&e))
}

/// Scrapes every running injected member's sidecar through the API server's pod proxy (the
/// user needs `get pods/proxy`), sixteen at a time.
async fn sidecars_behind(
    client: &Client,
    ns: &str,
    object: &DynamicObject,
    pods: &[Pod],
) -> BTreeMap<String, Read<f64>> {
    let injected_here = |p: &&Pod| {
        p.annotations().get(names::INJECTED_ANNOTATION) == Some(&object.name_any())
            && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            && p.metadata.deletion_timestamp.is_none()
    };
    stream::iter(pods.iter().filter(injected_here))
        .map(|pod| async move {
            let name = pod.name_any();
            let path = format!(
                "/api/v1/namespaces/{ns}/pods/{name}:{}/proxy/metrics",
                xlattice_operator::desired::SIDECAR_ADMIN_PORT
            );
            let text = match http::Request::get(path).body(Vec::new()) {
                Ok(request) => client.request_text(request).await.map_err(|e| describe(&e)),
                Err(e) => Err(e.to_string()),
            };
            (name, text.and_then(|t| metric_value(&t, super::BEHIND_METRIC)))
        })
        .buffer_unordered(16)
        .collect()
        .await
}

/// The value of an unlabelled gauge in Prometheus text.
pub fn metric_value(text: &str, name: &str) -> Read<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (metric, value) = l.split_once(' ')?;
            (metric == name).then(|| value.trim().parse::<f64>().ok())?
        })
        .ok_or_else(|| format!("{name} not in the sidecar's metrics"))
}

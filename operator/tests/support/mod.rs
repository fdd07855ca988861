//! Helpers for the tests against a real kube-apiserver (hack/control-plane.sh).

#![allow(dead_code)]

use std::{
    future::Future,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{
        admissionregistration::v1::{
            MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, WebhookClientConfig,
        },
        authentication::v1::{TokenRequest, TokenRequestSpec},
        core::v1::{Container, ContainerPort, Namespace, Pod, PodSpec, Secret, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding, RoleRef, Subject},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta},
};
use kube::{
    api::{Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    Api, Client, Config, ResourceExt,
};

pub const MANAGER: &str = "xlattice-e2e";

/// The identity Secrets of cluster `cluster`, by member (pod) name.
pub async fn identity_secrets(secrets: &Api<Secret>, cluster: &str) -> std::collections::BTreeMap<String, Secret> {
    let owned = kube::api::ListParams::default().labels(&format!("xlattice.io/cluster={cluster}"));
    secrets
        .list(&owned)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|s| (s.annotations()["xlattice.io/member"].clone(), s))
        .collect()
}

/// A pod labelled `app=<app>` (what the tests' cluster selectors match), declaring `ports`.
/// Nothing runs it: the bare API server has no kubelet.
pub fn member_pod(name: &str, app: &str, ports: &[i32]) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([("app".to_string(), app.to_string())].into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".into(),
                image: Some("registry.invalid/app:1".into()),
                ports: (!ports.is_empty()).then(|| {
                    ports
                        .iter()
                        .map(|p| ContainerPort {
                            container_port: *p,
                            ..Default::default()
                        })
                        .collect()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The control plane's kubeconfig, or a failure that says how to get one. A silent pass
/// without an API server would hide that nothing was tested.
pub fn kubeconfig_path() -> Option<PathBuf> {
    let path = std::env::var("XLATTICE_KUBECONFIG")
        .or_else(|_| std::env::var("KUBECONFIG"))
        .ok();
    match path {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ if std::env::var("XLATTICE_SKIP_E2E").as_deref() == Ok("1") => {
            // Straight to the stderr handle: the test harness captures eprintln!.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "\n!!!!!!!! SKIPPED: operator e2e tests against the API server (XLATTICE_SKIP_E2E=1) !!!!!!!!\n"
            );
            None
        }
        _ => panic!(
            "the operator e2e tests need a real API server. Start one with\n  \
             hack/control-plane.sh install && hack/control-plane.sh up /tmp/xlattice-cp\n  \
             export XLATTICE_KUBECONFIG=/tmp/xlattice-cp/kubeconfig\n\
             or set XLATTICE_SKIP_E2E=1 to skip them explicitly"
        ),
    }
}

pub async fn admin_client(path: &Path) -> Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let kubeconfig = Kubeconfig::read_from(path).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    Client::try_from(config).expect("client")
}

/// A short random lowercase suffix so runs and tests do not collide.
pub fn suffix() -> String {
    let mut bytes = [0u8; 4];
    aws_lc_rs::rand::fill(&mut bytes).unwrap();
    hex::encode(bytes)
}

pub fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

pub async fn apply<K>(api: &Api<K>, object: &K) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.patch(
        &object.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {}: {e}", object.name_any()))
}

/// Installs the committed CRD (not the generated one: what users apply is what is tested).
pub async fn install_crd(client: &Client) {
    let text = std::fs::read_to_string(repo_file("deploy/crds/xlatticeclusters.yaml")).unwrap();
    let crd: CustomResourceDefinition = serde_yaml::from_str(&text).unwrap();
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    apply(&api, &crd).await;
    wait_for("CRD established", Duration::from_secs(30), || async {
        let crd = api.get(&crd.name_any()).await.ok()?;
        let established = crd
            .status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        established.then_some(())
    })
    .await;
}

pub async fn create_namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    apply(&api, &ns).await;
}

/// Polls `check` until it yields, or fails the test naming what was awaited.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The operator's identity: a ServiceAccount bound to exactly the roles of
/// charts/xlattice-operator/rbac/roles.yaml, as the chart binds them (cluster-wide, or with
/// `watch` in that namespace only), and a kubeconfig holding its token.
pub async fn operator_kubeconfig(admin: &Client, admin_path: &Path, op_ns: &str, run: &str) -> PathBuf {
    operator_kubeconfig_for(admin, admin_path, op_ns, run, Grant::default()).await
}

/// What the chart grants the operator: everywhere or in `watch` only (watchNamespaces);
/// with or without the workload permissions of restartWorkloads (restartWorkloads.enabled).
#[derive(Clone, Copy)]
pub struct Grant<'a> {
    pub watch: Option<&'a str>,
    pub restart_workloads: bool,
}

impl Default for Grant<'_> {
    fn default() -> Self {
        Self {
            watch: None,
            restart_workloads: true,
        }
    }
}

pub async fn operator_kubeconfig_for(
    admin: &Client,
    admin_path: &Path,
    op_ns: &str,
    run: &str,
    grant: Grant<'_>,
) -> PathBuf {
    create_namespace(admin, op_ns).await;
    let text = std::fs::read_to_string(repo_file("charts/xlattice-operator/rbac/roles.yaml")).unwrap();
    let mut docs = serde_yaml::Deserializer::from_str(&text);
    let cluster_role: ClusterRole = serde::Deserialize::deserialize(docs.next().unwrap()).unwrap();
    let mut role: Role = serde::Deserialize::deserialize(docs.next().unwrap()).unwrap();
    let webhook_role: ClusterRole = serde::Deserialize::deserialize(docs.next().unwrap()).unwrap();
    let restart_role: ClusterRole = serde::Deserialize::deserialize(docs.next().unwrap()).unwrap();
    let identities_role: ClusterRole = serde::Deserialize::deserialize(docs.next().unwrap()).unwrap();
    let bind_role: ClusterRole = serde::Deserialize::deserialize(docs.next().unwrap()).unwrap();
    for role in [
        &cluster_role,
        &webhook_role,
        &restart_role,
        &identities_role,
        &bind_role,
    ] {
        apply(&Api::<ClusterRole>::all(admin.clone()), role).await;
    }
    role.metadata.namespace = Some(op_ns.into());
    apply(&Api::<Role>::namespaced(admin.clone(), op_ns), &role).await;

    let sa_api: Api<ServiceAccount> = Api::namespaced(admin.clone(), op_ns);
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("xlattice-operator".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    apply(&sa_api, &sa).await;
    let subject = Subject {
        kind: "ServiceAccount".into(),
        name: "xlattice-operator".into(),
        namespace: Some(op_ns.into()),
        ..Default::default()
    };
    let role_ref = |kind: &str, name: &str| RoleRef {
        api_group: "rbac.authorization.k8s.io".into(),
        kind: kind.into(),
        name: name.into(),
    };
    let cluster_binding = |name: String, role: &str| ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some(name),
            ..Default::default()
        },
        role_ref: role_ref("ClusterRole", role),
        subjects: Some(vec![subject.clone()]),
    };
    let role_binding = |ns: &str, kind: &str, role: &str| RoleBinding {
        metadata: ObjectMeta {
            name: Some(role.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        role_ref: role_ref(kind, role),
        subjects: Some(vec![subject.clone()]),
    };
    let bindings: Api<ClusterRoleBinding> = Api::all(admin.clone());
    apply(
        &bindings,
        &cluster_binding(format!("xlattice-operator-webhook-{run}"), "xlattice-operator-webhook"),
    )
    .await;
    // Identity Secrets as the chart grants them: in the watched namespace, or the right to
    // bind them where clusters are (the operator does it, src/access.rs).
    let mut roles = vec!["xlattice-operator"];
    roles.push(match grant.watch {
        Some(_) => "xlattice-operator-identities",
        None => "xlattice-operator-bind-identities",
    });
    if grant.restart_workloads {
        roles.push("xlattice-operator-restart-workloads");
    }
    for role in roles {
        match grant.watch {
            None => {
                apply(&bindings, &cluster_binding(format!("{role}-{run}"), role)).await;
            }
            Some(ns) => {
                let binding = role_binding(ns, "ClusterRole", role);
                apply(&Api::<RoleBinding>::namespaced(admin.clone(), ns), &binding).await;
            }
        }
    }
    let rb = role_binding(op_ns, "Role", "xlattice-operator");
    apply(&Api::<RoleBinding>::namespaced(admin.clone(), op_ns), &rb).await;

    install_admission_policy(admin, op_ns, run).await;

    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let token = sa_api
        .create_token_request("xlattice-operator", &PostParams::default(), &request)
        .await
        .expect("TokenRequest")
        .status
        .expect("token")
        .token;

    let kubeconfig = Kubeconfig::read_from(admin_path).unwrap();
    let cluster = kubeconfig.clusters[0].clone();
    let yaml = serde_yaml::to_string(&serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "xl", "cluster": cluster.cluster}],
        "users": [{"name": "xlattice-operator", "user": {"token": token}}],
        "contexts": [{"name": "xl", "context": {"cluster": "xl", "user": "xlattice-operator"}}],
        "current-context": "xl",
    }))
    .unwrap();
    let path = std::env::temp_dir().join(format!("xlattice-operator-{run}.kubeconfig"));
    std::fs::write(&path, yaml).unwrap();
    path
}

/// The chart's ValidatingAdmissionPolicy (charts/xlattice-operator/rbac/admission-policy.yaml)
/// for the operator's ServiceAccount in `op_ns`, named for this run, so that every e2e test
/// runs the operator under the policy users install. The API server enforces it a moment
/// after it is stored.
pub async fn install_admission_policy(admin: &Client, op_ns: &str, run: &str) {
    use k8s_openapi::api::admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding};
    let text = std::fs::read_to_string(repo_file("charts/xlattice-operator/rbac/admission-policy.yaml"))
        .unwrap()
        .replace("__IDENTITIES_NAME__", &format!("xlattice-operator-identities-{run}"))
        .replace("__NAME__", &format!("xlattice-operator-writes-{run}"))
        .replace("__OPERATOR_NAMESPACE__", op_ns)
        .replace(
            "__OPERATOR__",
            &format!("system:serviceaccount:{op_ns}:xlattice-operator"),
        );
    let mut docs = serde_yaml::Deserializer::from_str(&text);
    let policy: ValidatingAdmissionPolicy = serde::Deserialize::deserialize(docs.next().unwrap()).unwrap();
    let binding: ValidatingAdmissionPolicyBinding = serde::Deserialize::deserialize(docs.next().unwrap()).unwrap();
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(admin.clone());
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(admin.clone());
    apply(&policies, &policy).await;
    apply(&bindings, &binding).await;
    // The identities binding's two policies (which binding, and where), each with its binding.
    for _ in 0..2 {
        let policy: ValidatingAdmissionPolicy = serde::Deserialize::deserialize(docs.next().unwrap()).unwrap();
        let binding: ValidatingAdmissionPolicyBinding = serde::Deserialize::deserialize(docs.next().unwrap()).unwrap();
        apply(&policies, &policy).await;
        apply(&bindings, &binding).await;
    }
    // Type errors show in the policy's status, written by kube-controller-manager, which
    // this control plane does not run: hack/node-test.sh checks them on the real node.
}

/// The operator binary: cargo names it to the operator's own tests; other crates' tests that
/// include this module (`cli/tests/`) find it beside their own executable's directory, where
/// `cargo test --workspace` builds every binary before running any test.
pub fn operator_bin() -> PathBuf {
    if let Some(path) = option_env!("CARGO_BIN_EXE_xlattice-operator") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("xlattice-operator");
    assert!(
        bin.exists(),
        "{} is missing: cargo build -p xlattice-operator first",
        bin.display()
    );
    bin
}

/// The operator binary running as its ServiceAccount, killed on drop.
pub struct Operator {
    child: Child,
    pub metrics: u16,
    pub webhook: u16,
    pub log: PathBuf,
}

impl Operator {
    pub fn start(kubeconfig: &Path, op_ns: &str, run: &str, webhook: u16) -> Self {
        Self::start_watching(kubeconfig, op_ns, run, webhook, None)
    }

    /// With `watch`, the operator serves that namespace only (`--watch-namespace`).
    pub fn start_watching(kubeconfig: &Path, op_ns: &str, run: &str, webhook: u16, watch: Option<&str>) -> Self {
        Self::start_granted(
            kubeconfig,
            op_ns,
            run,
            webhook,
            Grant {
                watch,
                ..Grant::default()
            },
        )
    }

    /// Run with the flags the chart passes for `grant`.
    pub fn start_granted(kubeconfig: &Path, op_ns: &str, run: &str, webhook: u16, grant: Grant<'_>) -> Self {
        let watch = grant.watch;
        let metrics = free_port();
        let log = std::env::temp_dir().join(format!("xlattice-operator-{run}-{metrics}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(operator_bin())
            .args(["run", "--namespace", op_ns, "--lease-seconds", "6"])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics}")])
            .args(["--webhook-addr", &format!("127.0.0.1:{webhook}")])
            .args([
                "--sidecar-image",
                "xlattice-sidecar:e2e",
                "--pod-name",
                &format!("op-{metrics}"),
            ])
            .args(watch.map(|ns| format!("--watch-namespace={ns}")))
            .arg(format!("--restart-workloads={}", grant.restart_workloads))
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,kube=warn")
            .stdout(Stdio::null())
            .stderr(out.try_clone().unwrap())
            .spawn()
            .expect("spawn xlattice-operator");
        Self {
            child,
            metrics,
            webhook,
            log,
        }
    }

    pub async fn metrics_text(&self) -> Option<String> {
        http_get(self.metrics, "/metrics").await
    }

    /// Sum of a metric's samples (all label sets), 0 when absent.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics_text().await.unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How the process ended, if it has.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Minimal HTTP/1.0 GET on loopback (no client dependency for one probe).
pub async fn http_get(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    stream.read_to_string(&mut out).await.ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.lines().next()?.contains(" 200 ").then(|| body.to_string())
}

/// What every e2e test starts from: an admin client, the CRD, a fresh namespace for the
/// clusters and one for the operator, and the operator running as its ServiceAccount.
pub struct Harness {
    pub admin: Client,
    pub path: PathBuf,
    pub run: String,
    pub ns: String,
    pub op_ns: String,
    pub kubeconfig: PathBuf,
}

impl Harness {
    /// `None` only when the e2e tests are explicitly skipped (see `kubeconfig_path`).
    pub async fn start(prefix: &str) -> Option<(Self, Operator)> {
        Self::start_with_webhook(prefix, free_port()).await
    }

    pub async fn start_with_webhook(prefix: &str, webhook_port: u16) -> Option<(Self, Operator)> {
        Self::start_scoped(prefix, webhook_port, false).await
    }

    /// `namespaced`: the operator serves the test's namespace only, bound there only (the
    /// chart's watchNamespaces).
    pub async fn start_scoped(prefix: &str, webhook_port: u16, namespaced: bool) -> Option<(Self, Operator)> {
        Self::start_with(prefix, webhook_port, namespaced, true).await
    }

    /// `restart_workloads: false`: the chart's restartWorkloads.enabled=false (no workload
    /// permissions bound, the operator told so).
    pub async fn start_with(
        prefix: &str,
        webhook_port: u16,
        namespaced: bool,
        restart_workloads: bool,
    ) -> Option<(Self, Operator)> {
        let path = kubeconfig_path()?;
        let admin = admin_client(&path).await;
        install_crd(&admin).await;
        let run = suffix();
        let ns = format!("xl-{prefix}-{run}");
        let op_ns = format!("xl-{prefix}-op-{run}");
        create_namespace(&admin, &ns).await;
        let grant = Grant {
            watch: namespaced.then_some(ns.as_str()),
            restart_workloads,
        };
        let kubeconfig = operator_kubeconfig_for(&admin, &path, &op_ns, &run, grant).await;
        let operator = Operator::start_granted(&kubeconfig, &op_ns, &run, webhook_port, grant);
        Some((
            Self {
                admin,
                path,
                run,
                ns,
                op_ns,
                kubeconfig,
            },
            operator,
        ))
    }
}

/// Registers the operator's webhook (by URL on loopback) for pods of namespace `ns` only,
/// and waits until the operator has written its caBundle.
pub async fn register_webhook(admin: &Client, operator: &Operator, ns: &str) -> Api<MutatingWebhookConfiguration> {
    let mwc_api: Api<MutatingWebhookConfiguration> = Api::all(admin.clone());
    let _ = mwc_api
        .delete("xlattice-sidecar-injector", &kube::api::DeleteParams::default())
        .await;
    let mwc = MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some("xlattice-sidecar-injector".into()),
            ..Default::default()
        },
        webhooks: Some(vec![MutatingWebhook {
            name: "inject.xlattice.io".into(),
            admission_review_versions: vec!["v1".into()],
            side_effects: "None".into(),
            failure_policy: Some("Fail".into()),
            reinvocation_policy: Some("Never".into()),
            timeout_seconds: Some(10),
            client_config: WebhookClientConfig {
                url: Some(format!("https://127.0.0.1:{}/mutate-pods", operator.webhook)),
                ..Default::default()
            },
            // Only this test's namespace: other tests' pods must not depend on this operator.
            namespace_selector: Some(LabelSelector {
                match_labels: Some(std::collections::BTreeMap::from([(
                    "kubernetes.io/metadata.name".to_string(),
                    ns.to_string(),
                )])),
                ..Default::default()
            }),
            rules: Some(vec![RuleWithOperations {
                api_groups: Some(vec!["".into()]),
                api_versions: Some(vec!["v1".into()]),
                operations: Some(vec!["CREATE".into()]),
                resources: Some(vec!["pods".into()]),
                scope: Some("Namespaced".into()),
            }]),
            ..Default::default()
        }]),
    };
    mwc_api.create(&PostParams::default(), &mwc).await.unwrap();
    wait_for("the operator writes the caBundle", Duration::from_secs(60), || async {
        let mwc = mwc_api.get("xlattice-sidecar-injector").await.ok()?;
        mwc.webhooks?.first()?.client_config.ca_bundle.as_ref().map(|_| ())
    })
    .await;
    mwc_api
}

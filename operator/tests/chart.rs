//! The Helm chart as users install it: `helm template` renders it with default and
//! non-default values, every object is read into its k8s-openapi type and checked against
//! what the operator needs (its arguments parsed by its own parser, `cli::Cli`); the two
//! main renderings are compared with golden files; bad values are refused naming the
//! field; the monitoring objects follow their switches and every alert has a `promtool`
//! test in which it fires; the examples under deploy/examples agree with their cluster.
//! What needs an API server (install, upgrade, uninstall, RBAC) is hack/chart-test.sh's.
//!
//!   eval "$(hack/control-plane.sh env)"    # helm on PATH (or XLATTICE_HELM)
//!   cargo test -p xlattice-operator --test chart
//!
//! promtool comes from XLATTICE_PROMTOOL, PATH or `hack/promtool.sh path` (hack/setup.sh
//! builds it). After an intended change to the default or non-default rendering:
//! `XLATTICE_UPDATE_GOLDEN=1 cargo test -p xlattice-operator --test chart`.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use clap::{CommandFactory, Parser};
use k8s_openapi::{
    api::{
        admissionregistration::v1::MutatingWebhookConfiguration,
        apps::v1::{Deployment, StatefulSet},
        batch::v1::Job,
        core::v1::{ConfigMap, Container, PodSpec, ResourceRequirements, SeccompProfile, Service, ServiceAccount},
        policy::v1::PodDisruptionBudget,
        rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, LabelSelectorRequirement},
        util::intstr::IntOrString,
    },
};
use kube::core::{Selector, SelectorExt};
use serde::{de::DeserializeOwned, Deserialize};
use serde_yaml::Value;
use xlattice_operator::{
    cli::{Cli, Command as OperatorCommand, RunArgs},
    names,
    webhook::{certs::WEBHOOK_CONFIGURATION, inject::DIRECTORY_DIR, server::PATH as WEBHOOK_PATH},
    XLatticeCluster,
};

const CHART: &str = "charts/xlattice-operator";
const RESTART_ROLE: &str = "xlattice-operator-restart-workloads";

// ---- what a rendering must hold ----------------------------------------------------------

/// What one set of values must produce; `Want::defaults` is values.yaml's.
#[derive(Clone)]
struct Want {
    namespace: &'static str,
    replicas: i32,
    min_available: i32,
    operator_image: String,
    pull_policy: &'static str,
    sidecar_image: String,
    sidecar_pull_policy: &'static str,
    /// CPU request, memory request, memory limit of every injected sidecar.
    sidecar_resources: [&'static str; 3],
    operator_resources: Option<ResourceRequirements>,
    metrics_port: i32,
    metrics: bool,
    lease_seconds: u64,
    log_json: bool,
    log_level: &'static str,
    keygen_threads: Option<usize>,
    require_fips: bool,
    webhook: Option<WantWebhook>,
}

#[derive(Clone)]
struct WantWebhook {
    port: i32,
    failure_policy: &'static str,
    timeout_seconds: i32,
    sans: Vec<&'static str>,
    url: Option<&'static str>,
    also_excluded: Vec<&'static str>,
    namespaces_in: Vec<&'static str>,
    namespace_labels: Option<BTreeMap<String, String>>,
    object_selector: Option<LabelSelector>,
}

impl Want {
    fn defaults(namespace: &'static str) -> Self {
        let version = app_version();
        Want {
            namespace,
            replicas: 1,
            min_available: 1,
            operator_image: format!("ghcr.io/xlattice/xlattice-operator:{version}"),
            pull_policy: "IfNotPresent",
            sidecar_image: format!("ghcr.io/xlattice/xlattice-sidecar:{version}"),
            sidecar_pull_policy: "IfNotPresent",
            sidecar_resources: ["10m", "32Mi", "128Mi"],
            operator_resources: Some(resources(
                &[("cpu", "100m"), ("memory", "64Mi")],
                &[("memory", "256Mi")],
            )),
            metrics_port: 8080,
            metrics: true,
            lease_seconds: 15,
            log_json: false,
            log_level: "info",
            keygen_threads: None,
            require_fips: false,
            webhook: Some(WantWebhook {
                port: 9443,
                failure_policy: "Fail",
                timeout_seconds: 10,
                sans: vec!["127.0.0.1", "localhost"],
                url: None,
                also_excluded: vec![],
                namespaces_in: vec![],
                namespace_labels: None,
                object_selector: None,
            }),
        }
    }

    fn webhook(mut self, edit: impl FnOnce(&mut WantWebhook)) -> Self {
        edit(self.webhook.as_mut().expect("the webhook is enabled"));
        self
    }
}

// ---- the cases -------------------------------------------------------------------------

#[test]
fn default_values_render_as_documented() {
    let rendering = render("xlattice-system", &[]);
    rendering.golden("default");
    check_operator(&rendering, &Want::defaults("xlattice-system"));
}

#[test]
fn non_default_values_reach_every_object() {
    let values = fixture("custom-values.yaml");
    let rendering = render("ops", &["-f", values.to_str().unwrap()]);
    rendering.golden("custom");
    let want = Want {
        replicas: 3,
        min_available: 2,
        operator_image: "registry.example.com/xl/operator:1.2.3".into(),
        pull_policy: "Always",
        sidecar_image: format!("registry.example.com/xl/sidecar:1.2.3@{DIGEST}"),
        sidecar_pull_policy: "Never",
        sidecar_resources: ["50m", "48Mi", "96Mi"],
        operator_resources: Some(resources(
            &[("cpu", "250m"), ("memory", "128Mi")],
            &[("cpu", "2"), ("memory", "512Mi")],
        )),
        metrics_port: 9090,
        metrics: false,
        lease_seconds: 20,
        log_json: true,
        log_level: "debug",
        keygen_threads: Some(4),
        ..Want::defaults("ops")
    }
    .webhook(|w| {
        w.port = 10443;
        w.failure_policy = "Ignore";
        w.timeout_seconds = 5;
        w.sans.push("xlattice.example.com");
        w.also_excluded = vec!["monitoring"];
        w.namespaces_in = vec!["apps", "data"];
        w.namespace_labels = Some([("team".to_string(), "storage".to_string())].into());
        w.object_selector = Some(LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "xlattice.io/skip".into(),
                operator: "DoesNotExist".into(),
                values: None,
            }]),
            match_labels: None,
        });
    });
    check_operator(&rendering, &want);
}

/// The digest in tests/fixtures/chart/custom-values.yaml.
const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn a_webhook_url_replaces_the_service_and_joins_the_certificate() {
    let url = "https://127.0.0.1:9443/mutate-pods";
    let want = Want::defaults("dev").webhook(|w| w.url = Some(url));
    check_operator(&render("dev", &["--set", &format!("webhook.url={url}")]), &want);

    // An address outside the defaults becomes a SAN; two replicas bring the PDB.
    let url = "https://10.1.2.3:8443/mutate-pods";
    let want = Want {
        replicas: 2,
        ..Want::defaults("dev")
    }
    .webhook(|w| {
        w.url = Some(url);
        w.sans.push("10.1.2.3");
    });
    check_operator(
        &render("dev", &["--set", &format!("webhook.url={url}"), "--set", "replicas=2"]),
        &want,
    );
}

#[test]
fn without_the_webhook_no_configuration_is_rendered() {
    let want = Want {
        webhook: None,
        ..Want::defaults("xlattice-system")
    };
    check_operator(&render("xlattice-system", &["--set", "webhook.enabled=false"]), &want);
}

#[test]
fn fips_switches_the_default_tags_and_requires_the_module() {
    let version = app_version();
    let want = Want {
        operator_image: format!("ghcr.io/xlattice/xlattice-operator:{version}-fips"),
        sidecar_image: format!("ghcr.io/xlattice/xlattice-sidecar:{version}-fips"),
        require_fips: true,
        ..Want::defaults("xlattice-system")
    };
    check_operator(&render("xlattice-system", &["--set", "fips=true"]), &want);

    // Explicit tags are kept as given.
    let explicit = [
        "--set",
        "fips=true",
        "--set",
        "image.tag=9.9.9",
        "--set",
        "sidecar.image.tag=9.9.8",
    ];
    let want = Want {
        operator_image: "ghcr.io/xlattice/xlattice-operator:9.9.9".into(),
        sidecar_image: "ghcr.io/xlattice/xlattice-sidecar:9.9.8".into(),
        require_fips: true,
        ..Want::defaults("xlattice-system")
    };
    check_operator(&render("xlattice-system", &explicit), &want);
}

/// The workload role is always defined (rbac/roles.yaml is included whole) but bound only
/// with restartWorkloads.enabled, like the main role: cluster-wide or in each watched namespace.
#[test]
fn the_workload_role_is_bound_only_when_restarts_are_enabled() {
    for (enabled, watch, bindings) in [(true, "", 1), (false, "", 0), (true, "a,b", 2), (false, "a,b", 0)] {
        let mut args = vec!["--set".to_string(), format!("restartWorkloads.enabled={enabled}")];
        if !watch.is_empty() {
            args.extend(["--set".to_string(), format!("watchNamespaces={{{watch}}}")]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let rendering = render("xlattice-system", &args);
        let case = format!("restartWorkloads.enabled={enabled} watchNamespaces={watch:?}");
        assert!(
            rendering.named::<ClusterRole>(RESTART_ROLE).is_some(),
            "{case}: {RESTART_ROLE} is not defined"
        );
        let refs = rendering
            .all::<ClusterRoleBinding>()
            .into_iter()
            .map(|b| b.role_ref.name);
        let refs = refs.chain(rendering.all::<RoleBinding>().into_iter().map(|b| b.role_ref.name));
        assert_eq!(
            refs.filter(|r| r == RESTART_ROLE).count(),
            bindings,
            "{case}: bindings of {RESTART_ROLE}"
        );
        let args = rendering.operator().args;
        assert_eq!(args.restart_workloads, enabled, "{case}: --restart-workloads");
        let watched: Vec<&str> = watch.split(',').filter(|n| !n.is_empty()).collect();
        assert_eq!(args.watch_namespaces, watched, "{case}: --watch-namespace");
    }
}

#[test]
fn bad_values_are_refused_naming_the_field() {
    let cases: &[(&str, &[&str])] = &[
        ("/replicas", &["replicas=two"]),
        ("/replicas", &["replicas=0"]),
        ("/logLevel", &["logLevel=loud"]),
        ("/logFormat", &["logFormat=xml"]),
        ("/image/pullPolicy", &["image.pullPolicy=Sometimes"]),
        ("/image/repository", &["image.repository="]),
        ("/sidecar/image/pullPolicy", &["sidecar.image.pullPolicy=Sometimes"]),
        ("/sidecar/image/digest", &["sidecar.image.digest=md5:abc"]),
        (
            "/sidecar/resources/requests/memory",
            &["sidecar.resources.requests.memory=lots"],
        ),
        ("/sidecar/resources/limits", &["sidecar.resources.limits.cpu=1"]),
        ("/webhook/failurePolicy", &["webhook.failurePolicy=Maybe"]),
        ("/webhook/timeoutSeconds", &["webhook.timeoutSeconds=60"]),
        ("/webhook/url", &["webhook.url=http://insecure.example.com/mutate-pods"]),
        ("/webhook/port", &["webhook.port=443"]),
        ("/webhook/namespaces", &["webhook.namespaces[0]=Not_A_Namespace"]),
        ("/metrics/enabled", &["metrics.enabled=maybe"]),
        ("unknownKey", &["unknownKey=1"]),
        ("webhook.namespaces", &["webhook.namespaces={apps,kube-system}"]),
        ("webhook.namespaces", &["webhook.namespaces={ops}"]),
        (
            "leaderElection.enabled",
            &["replicas=2", "leaderElection.enabled=false"],
        ),
        ("metrics.port", &["webhook.port=8080"]),
        (
            "monitoring.serviceMonitor.enabled needs metrics.enabled",
            &["monitoring.serviceMonitor.enabled=true", "metrics.enabled=false"],
        ),
        (
            "certificateExpiryDays",
            &[
                "monitoring.prometheusRule.enabled=true",
                "monitoring.prometheusRule.certificateExpiryDays=200",
            ],
        ),
        ("/monitoring", &["monitoring.grafana=true"]),
        (
            "/monitoring/prometheusRule/degradedFor",
            &["monitoring.prometheusRule.degradedFor=soon"],
        ),
    ];
    let mut wrong = Vec::new();
    for (field, sets) in cases {
        let args: Vec<&str> = sets.iter().flat_map(|s| ["--set", *s]).collect();
        match helm_template("ops", &args) {
            Ok(_) => wrong.push(format!("{sets:?} was accepted")),
            Err(error) if !error.contains(field) => {
                wrong.push(format!("{sets:?} refused without naming {field}: {error}"))
            }
            Err(_) => {}
        }
    }
    assert!(wrong.is_empty(), "bad values:\n{}", wrong.join("\n"));
}

// ---- the operator's objects ----------------------------------------------------------------

fn check_operator(rendering: &Rendering, want: &Want) {
    let operator = rendering.operator();
    check_pod(&operator, want);
    check_arguments(&operator, want);
    check_env(&operator.container, want);
    check_rbac(rendering, &operator.pod, want.namespace);
    check_disruption(rendering, &operator, want);
    let service: Service = rendering.one("xlattice-operator");
    check_service(&service, &operator, want);
    check_webhook_configuration(rendering, &service, want);
    for (kind, name, namespace) in rendering.addresses() {
        assert!(
            namespace.is_none() || namespace.as_deref() == Some(want.namespace),
            "{kind} {name} is in namespace {namespace:?}, not {}",
            want.namespace
        );
    }
}

/// The operator's Deployment: its pod, its one container, and the arguments as the
/// operator's own parser reads them.
struct Operator {
    deployment: Deployment,
    pod: PodSpec,
    container: Container,
    args: RunArgs,
}

fn check_pod(operator: &Operator, want: &Want) {
    let deployment = &operator.deployment;
    assert_eq!(
        deployment.metadata.namespace.as_deref(),
        Some(want.namespace),
        "Deployment namespace"
    );
    let spec = deployment.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(want.replicas), "replicas");
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let selector = spec.selector.match_labels.clone().unwrap_or_default();
    assert!(
        !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
        "Deployment selector {selector:?} does not match its pod labels {labels:?}"
    );

    let pod = operator.pod.security_context.clone().unwrap_or_default();
    unprivileged("pod", pod.run_as_non_root, pod.run_as_user, pod.seccomp_profile);
    assert_eq!(operator.pod.containers.len(), 1, "containers in the operator pod");

    let c = &operator.container;
    let sc = c.security_context.clone().unwrap_or_default();
    assert_eq!(sc.allow_privilege_escalation, Some(false), "allowPrivilegeEscalation");
    assert_eq!(sc.read_only_root_filesystem, Some(true), "readOnlyRootFilesystem");
    assert_eq!(
        sc.capabilities.and_then(|c| c.drop),
        Some(vec!["ALL".to_string()]),
        "capabilities.drop"
    );
    unprivileged("container", sc.run_as_non_root, sc.run_as_user, sc.seccomp_profile);
    assert_eq!(c.image.as_deref(), Some(want.operator_image.as_str()), "operator image");
    assert_eq!(
        c.image_pull_policy.as_deref(),
        Some(want.pull_policy),
        "imagePullPolicy"
    );
    assert_eq!(port(c, "metrics"), Some(want.metrics_port), "metrics containerPort");
    for (probe, path) in [(&c.liveness_probe, "/livez"), (&c.readiness_probe, "/readyz")] {
        let get = probe.as_ref().and_then(|p| p.http_get.clone()).unwrap_or_default();
        let on_metrics = [
            IntOrString::String("metrics".into()),
            IntOrString::Int(want.metrics_port),
        ]
        .contains(&get.port);
        assert!(
            get.path.as_deref() == Some(path) && on_metrics,
            "probe is not GET {path} on the metrics port: {get:?}"
        );
    }
    if let Some(resources) = &want.operator_resources {
        assert_eq!(c.resources.as_ref(), Some(resources), "operator resources");
    }
}

/// The pod's and the container's security context alike: non-root uid 65532, the runtime's
/// default seccomp profile.
fn unprivileged(what: &str, non_root: Option<bool>, user: Option<i64>, seccomp: Option<SeccompProfile>) {
    assert_eq!(
        (non_root, user),
        (Some(true), Some(65532)),
        "{what} runs as non-root 65532"
    );
    let seccomp = seccomp.map(|p| p.type_);
    assert_eq!(seccomp.as_deref(), Some("RuntimeDefault"), "{what} seccompProfile");
}

fn check_arguments(operator: &Operator, want: &Want) {
    let args = &operator.args;
    assert_eq!(args.sidecar_image, want.sidecar_image, "--sidecar-image");
    assert_eq!(
        args.sidecar_pull_policy.as_deref(),
        Some(want.sidecar_pull_policy),
        "--sidecar-pull-policy"
    );
    let [cpu, memory, limit] = want.sidecar_resources;
    assert_eq!(
        args.sidecar_resources(),
        resources(&[("cpu", cpu), ("memory", memory)], &[("memory", limit)]),
        "the injected sidecar's resources"
    );
    assert_eq!(
        args.metrics_addr,
        format!("0.0.0.0:{}", want.metrics_port).parse().unwrap(),
        "--metrics-addr"
    );
    assert!(args.leader_elect, "--leader-elect");
    // rbac/roles.yaml grants the Lease by this name only.
    assert_eq!(args.lease_name, "xlattice-operator", "--lease-name");
    assert_eq!(args.lease_seconds, want.lease_seconds, "--lease-seconds");
    assert_eq!(args.log_json, want.log_json, "--log-json");
    assert_eq!(args.keygen_threads, want.keygen_threads, "--keygen-threads");
    assert_eq!(args.require_fips, want.require_fips, "--require-fips");
    assert_eq!(args.no_webhook, want.webhook.is_none(), "--no-webhook");
}

/// Every variable the chart sets is one the operator reads (clap's `env`), but RUST_LOG.
fn check_env(container: &Container, want: &Want) {
    let read: BTreeSet<String> = Cli::command()
        .find_subcommand("run")
        .expect("a run subcommand")
        .get_arguments()
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        .collect();
    let env = container.env.clone().unwrap_or_default();
    for var in &env {
        assert!(
            var.name == "RUST_LOG" || read.contains(&var.name),
            "env {} is read by nothing (the operator reads {read:?})",
            var.name
        );
    }
    let field = |name: &str| {
        let var = env.iter().find(|v| v.name == name);
        var.and_then(|v| v.value_from.clone())
            .and_then(|f| f.field_ref)
            .map(|f| f.field_path)
    };
    assert_eq!(
        field("POD_NAMESPACE").as_deref(),
        Some("metadata.namespace"),
        "POD_NAMESPACE from the downward API"
    );
    assert_eq!(
        field("POD_NAME").as_deref(),
        Some("metadata.name"),
        "POD_NAME from the downward API"
    );
    let log = env
        .iter()
        .find(|v| v.name == "RUST_LOG")
        .and_then(|v| v.value.clone())
        .unwrap_or_default();
    assert!(
        log.starts_with(want.log_level),
        "RUST_LOG {log:?} does not start with {}",
        want.log_level
    );
}

fn check_rbac(rendering: &Rendering, pod: &PodSpec, namespace: &str) {
    let account = pod.service_account_name.clone().expect("serviceAccountName");
    let sa: ServiceAccount = rendering.one(&account);
    assert_eq!(
        sa.metadata.namespace.as_deref(),
        Some(namespace),
        "ServiceAccount namespace"
    );
    let subjects = rendering
        .all::<ClusterRoleBinding>()
        .into_iter()
        .map(|b| (b.metadata.name, b.subjects));
    let subjects = subjects.chain(
        rendering
            .all::<RoleBinding>()
            .into_iter()
            .map(|b| (b.metadata.name, b.subjects)),
    );
    for (binding, subjects) in subjects {
        let bound = subjects
            .unwrap_or_default()
            .iter()
            .any(|s| s.kind == "ServiceAccount" && s.name == account && s.namespace.as_deref() == Some(namespace));
        assert!(
            bound,
            "binding {binding:?} does not bind ServiceAccount {namespace}/{account}"
        );
    }
    assert!(
        !rendering.all::<ClusterRole>().is_empty() && !rendering.all::<Role>().is_empty(),
        "RBAC roles missing"
    );
}

/// A PodDisruptionBudget and anti-affinity exactly when there is more than one replica.
fn check_disruption(rendering: &Rendering, operator: &Operator, want: &Want) {
    let pdbs = rendering.all::<PodDisruptionBudget>();
    let anti_affinity = operator
        .pod
        .affinity
        .as_ref()
        .and_then(|a| a.pod_anti_affinity.as_ref());
    if want.replicas == 1 {
        assert!(pdbs.is_empty(), "one replica, but a PodDisruptionBudget is rendered");
        return;
    }
    assert_eq!(pdbs.len(), 1, "{} replicas: PodDisruptionBudgets", want.replicas);
    let pdb = pdbs[0].spec.clone().unwrap_or_default();
    assert_eq!(
        pdb.min_available,
        Some(IntOrString::Int(want.min_available)),
        "PDB minAvailable"
    );
    let selector = operator.deployment.spec.as_ref().map(|s| s.selector.clone());
    assert_eq!(pdb.selector, selector, "PDB selector");
    assert!(
        anti_affinity.is_some(),
        "{} replicas without pod anti-affinity",
        want.replicas
    );
}

fn check_service(service: &Service, operator: &Operator, want: &Want) {
    let spec = service.spec.clone().unwrap_or_default();
    let selector = operator
        .deployment
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone());
    assert_eq!(spec.selector, selector, "Service selector");
    let ports = spec.ports.unwrap_or_default();
    let named = |name: &str| ports.iter().find(|p| p.name.as_deref() == Some(name));
    assert_eq!(
        named("metrics").is_some(),
        want.metrics,
        "the Service's metrics port follows metrics.enabled"
    );
    let annotations = operator
        .deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.clone())
        .and_then(|m| m.annotations)
        .unwrap_or_default();
    assert_eq!(
        annotations.contains_key("prometheus.io/scrape"),
        want.metrics,
        "prometheus.io annotations follow metrics.enabled"
    );
    let Some(webhook) = &want.webhook else { return };
    let port = named("webhook").expect("a webhook port on the Service");
    assert_eq!(
        (port.port, port.target_port.clone()),
        (443, Some(IntOrString::String("webhook".into()))),
        "Service 443 -> webhook"
    );
    assert_eq!(
        self::port(&operator.container, "webhook"),
        Some(webhook.port),
        "webhook containerPort"
    );
    let args = &operator.args;
    assert_eq!(
        args.webhook_addr,
        format!("0.0.0.0:{}", webhook.port).parse().unwrap(),
        "--webhook-addr"
    );
    assert_eq!(
        Some(&args.webhook_service),
        service.metadata.name.as_ref(),
        "--webhook-service names the Service"
    );
    let sans: BTreeSet<&str> = args.webhook_sans.iter().map(String::as_str).collect();
    assert_eq!(sans, webhook.sans.iter().copied().collect(), "--webhook-san");
}

fn check_webhook_configuration(rendering: &Rendering, service: &Service, want: &Want) {
    let configurations = rendering.all::<MutatingWebhookConfiguration>();
    let Some(w) = &want.webhook else {
        assert!(
            configurations.is_empty(),
            "webhook disabled, but a MutatingWebhookConfiguration is rendered"
        );
        return;
    };
    assert_eq!(configurations.len(), 1, "MutatingWebhookConfigurations");
    // The operator writes the caBundle of this name only.
    assert_eq!(configurations[0].metadata.name.as_deref(), Some(WEBHOOK_CONFIGURATION));
    let hooks = configurations[0].webhooks.clone().unwrap_or_default();
    assert_eq!(hooks.len(), 1, "webhooks");
    let h = &hooks[0];
    assert_eq!(h.side_effects, "None");
    assert_eq!(h.admission_review_versions, ["v1"]);
    assert_eq!(h.failure_policy.as_deref(), Some(w.failure_policy), "failurePolicy");
    assert_eq!(h.timeout_seconds, Some(w.timeout_seconds), "timeoutSeconds");
    let rules = h.rules.clone().unwrap_or_default();
    let pods_create = |r: &k8s_openapi::api::admissionregistration::v1::RuleWithOperations| {
        r.operations.as_deref() == Some(&["CREATE".to_string()][..])
            && r.resources.as_deref() == Some(&["pods".to_string()][..])
            && r.api_groups.as_deref() == Some(&[String::new()][..])
    };
    assert!(
        !rules.is_empty() && rules.iter().all(pods_create),
        "rules are not pods CREATE: {rules:?}"
    );
    let client = &h.client_config;
    match w.url {
        Some(url) => assert!(
            client.url.as_deref() == Some(url) && client.service.is_none(),
            "clientConfig is not url {url}: {client:?}"
        ),
        None => {
            let s = client.service.clone().expect("clientConfig.service");
            assert!(client.url.is_none(), "clientConfig has both a url and a service");
            assert_eq!(
                (Some(s.name), s.namespace, s.port, s.path.as_deref()),
                (
                    service.metadata.name.clone(),
                    want.namespace.to_string(),
                    Some(443),
                    Some(WEBHOOK_PATH)
                ),
                "clientConfig.service"
            );
        }
    }
    check_namespace_selector(h.namespace_selector.clone().unwrap_or_default(), want.namespace, w);
    assert_eq!(h.object_selector, w.object_selector, "objectSelector");
}

/// The webhook never sees its own namespace, kube-system or the excluded ones (so a dead
/// operator with failurePolicy Fail cannot keep itself from restarting).
fn check_namespace_selector(selector: LabelSelector, release: &str, w: &WantWebhook) {
    let exprs = selector.match_expressions.unwrap_or_default();
    let names = |op: &str| -> Vec<Vec<String>> {
        let on_name = exprs
            .iter()
            .filter(|e| e.key == "kubernetes.io/metadata.name" && e.operator == op);
        on_name.map(|e| e.values.clone().unwrap_or_default()).collect()
    };
    let not_in: BTreeSet<String> = names("NotIn").into_iter().flatten().collect();
    for ns in [release, "kube-system"].iter().chain(&w.also_excluded) {
        assert!(
            not_in.contains(*ns),
            "the namespaceSelector does not exclude {ns:?} (NotIn {not_in:?})"
        );
    }
    let within: Vec<String> = w.namespaces_in.iter().map(|n| n.to_string()).collect();
    let want_in = if within.is_empty() { vec![] } else { vec![within] };
    assert_eq!(names("In"), want_in, "namespaceSelector In");
    if let Some(labels) = &w.namespace_labels {
        assert_eq!(
            selector.match_labels.as_ref(),
            Some(labels),
            "namespaceSelector.matchLabels"
        );
    }
}

// ---- monitoring --------------------------------------------------------------------------

/// Each monitoring part: its switch under monitoring.*, and the object it renders.
const PARTS: [(&str, &str, &str); 4] = [
    ("dashboard", "ConfigMap", "xlattice-dashboard"),
    ("serviceMonitor", "ServiceMonitor", "xlattice-operator"),
    ("podMonitor", "PodMonitor", "xlattice-sidecars"),
    ("prometheusRule", "PrometheusRule", "xlattice-operator"),
];

#[test]
fn monitoring_is_off_by_default_and_each_part_follows_its_switch() {
    check_monitoring(&render("xlattice-system", &[]), "xlattice-system", &[]);
    let all: Vec<&str> = PARTS.iter().map(|p| p.0).collect();
    for on in std::iter::once(all.clone()).chain(all.iter().map(|p| vec![*p])) {
        let mut args = vec!["--set".to_string(), "monitoring.labels.release=prom".to_string()];
        args.extend(
            on.iter()
                .flat_map(|p| ["--set".to_string(), format!("monitoring.{p}.enabled=true")]),
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        check_monitoring(&render("mon", &args), "mon", &on);
    }
}

fn check_monitoring(rendering: &Rendering, namespace: &str, on: &[&str]) {
    for (part, kind, name) in PARTS {
        let found: Vec<&Value> = rendering
            .docs
            .iter()
            .filter(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .collect();
        assert_eq!(
            found.len(),
            usize::from(on.contains(&part)),
            "{part} with {on:?} switched on: {kind}/{name} rendered"
        );
        let Some(doc) = found.first() else { continue };
        assert_eq!(doc["metadata"]["namespace"], namespace, "{part}'s namespace");
        assert_eq!(
            doc["metadata"]["labels"]["release"], "prom",
            "{part} lacks the monitoring.labels label"
        );
        match part {
            "dashboard" => check_dashboard(doc),
            "serviceMonitor" => assert!(
                ports_of(&doc["spec"]["endpoints"]).contains(&"metrics"),
                "the ServiceMonitor does not scrape the Service's metrics port"
            ),
            "podMonitor" => check_pod_monitor(doc),
            _ => check_alerts(doc),
        }
    }
}

fn ports_of(endpoints: &Value) -> Vec<&str> {
    let endpoints = endpoints.as_sequence().map(Vec::as_slice).unwrap_or_default();
    endpoints.iter().filter_map(|e| e["port"].as_str()).collect()
}

fn check_dashboard(doc: &Value) {
    let map: ConfigMap = serde_yaml::from_value(doc.clone()).expect("the dashboard is a ConfigMap");
    let labels = map.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels.get("grafana_dashboard").map(String::as_str),
        Some("1"),
        "the dashboard ConfigMap's grafana_dashboard label"
    );
    let shipped = std::fs::read_to_string(repo().join(CHART).join("dashboards/xlattice.json")).unwrap();
    let shipped: serde_json::Value = serde_json::from_str(&shipped).expect("dashboards/xlattice.json is JSON");
    assert!(
        shipped["panels"].as_array().is_some_and(|p| !p.is_empty()) && shipped["uid"].is_string(),
        "dashboards/xlattice.json is not a Grafana dashboard (panels, uid)"
    );
    let data = map.data.unwrap_or_default();
    let rendered: serde_json::Value =
        serde_json::from_str(&data["xlattice.json"]).expect("the ConfigMap's xlattice.json is JSON");
    assert_eq!(
        rendered, shipped,
        "the ConfigMap's xlattice.json differs from the chart's dashboard"
    );
}

fn check_pod_monitor(doc: &Value) {
    let endpoints = &doc["spec"]["podMetricsEndpoints"];
    assert_eq!(
        ports_of(endpoints),
        ["xl-admin"],
        "the PodMonitor scrapes the sidecar's xl-admin port (15090)"
    );
    let text = serde_yaml::to_string(endpoints).unwrap();
    for label in ["xlattice_cluster", "xlattice_namespace"] {
        assert!(
            text.contains(&format!("targetLabel: {label}")),
            "the PodMonitor does not set {label}"
        );
    }
}

/// The PrometheusRule: no helm syntax left, and every alert annotated.
fn check_alerts(doc: &Value) {
    let text = serde_yaml::to_string(doc).unwrap();
    assert!(
        !text.contains("{{ .") && !text.contains("{{- "),
        "helm template syntax left in the PrometheusRule"
    );
    let alerts = alerts_of(doc);
    assert!(alerts.len() >= 9, "only {} alerts: {alerts:?}", alerts.len());
    for (alert, annotations) in &alerts {
        for key in ["summary", "description", "runbook"] {
            assert!(
                annotations[key].as_str().is_some_and(|s| !s.is_empty()),
                "alert {alert} has no {key}"
            );
        }
    }
}

/// The rule rendered with the default values (the thresholds, `for` durations and release
/// namespace hack/monitoring/alerts.test.yaml asserts): `promtool check rules` accepts its
/// spec, the tests pass, and every alert has a test in which it fires.
#[test]
fn every_alert_fires_in_a_promtool_test() {
    let rendering = render("xlattice-system", &["--set", "monitoring.prometheusRule.enabled=true"]);
    let rule = rendering
        .docs
        .iter()
        .find(|d| d["kind"] == "PrometheusRule")
        .expect("a PrometheusRule");
    let tested = fired_in(&read(&repo().join("hack/monitoring/alerts.test.yaml")));
    let untested: Vec<String> = alerts_of(rule).into_keys().filter(|a| !tested.contains(a)).collect();
    assert!(
        untested.is_empty(),
        "alerts with no test in which they fire: {untested:?}"
    );
    promtool(&rule["spec"]);
}

/// Alert name -> its annotations, over every group of a PrometheusRule.
fn alerts_of(doc: &Value) -> BTreeMap<String, Value> {
    let groups = doc["spec"]["groups"].as_sequence().expect("spec.groups");
    let rules = groups
        .iter()
        .flat_map(|g| g["rules"].as_sequence().into_iter().flatten());
    let alerts = rules.filter_map(|r| Some((r["alert"].as_str()?.to_string(), r["annotations"].clone())));
    alerts.collect()
}

/// The alerts that some test of a promtool test file expects to fire (anchors resolved).
fn fired_in(tests: &str) -> BTreeSet<String> {
    let tests: Value = serde_yaml::from_str(tests).expect("the alert tests are YAML");
    let cases = tests["tests"].as_sequence().into_iter().flatten();
    let checks = cases.flat_map(|t| t["alert_rule_test"].as_sequence().into_iter().flatten());
    let firing = checks.filter(|c| c["exp_alerts"].as_sequence().is_some_and(|a| !a.is_empty()));
    firing
        .filter_map(|c| c["alertname"].as_str().map(String::from))
        .collect()
}

/// The rule's spec is a plain Prometheus rules file: `promtool check rules` and `promtool
/// test rules` with the alert tests beside it, as they name it (`xlattice-rules.yaml`).
fn promtool(spec: &Value) {
    let promtool = promtool_path();
    let dir = tempdir("alerts");
    std::fs::write(dir.join("xlattice-rules.yaml"), serde_yaml::to_string(spec).unwrap()).unwrap();
    std::fs::copy(
        repo().join("hack/monitoring/alerts.test.yaml"),
        dir.join("alerts.test.yaml"),
    )
    .unwrap();
    for args in [
        &["check", "rules", "--lint-fatal", "xlattice-rules.yaml"][..],
        &["test", "rules", "alerts.test.yaml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool runs");
        let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "promtool {}: {said}", args.join(" "));
    }
    std::fs::remove_dir_all(dir).ok();
}

// ---- the examples ------------------------------------------------------------------------

/// deploy/examples: each workload is claimed by exactly one example cluster, declares none
/// of the sidecar's ports, mentions the upstream ports its application must listen on (the
/// operator's own defaults), and a StatefulSet's serviceName is the operator's headless
/// Service; the client Job runs `xlattice connect` with every directory shard mounted.
#[test]
fn the_examples_agree_with_their_cluster() {
    let files = ["statefulset-cluster.yaml", "deployment-cluster.yaml", "client-job.yaml"];
    let docs: Vec<Value> = files
        .iter()
        .flat_map(|f| yaml_docs(&read(&repo().join("deploy/examples").join(f))))
        .collect();
    let examples = Rendering {
        text: String::new(),
        docs,
    };
    let clusters = examples.all::<XLatticeCluster>();
    assert!(clusters.len() >= 2, "example clusters: {}", clusters.len());
    let workloads = examples.all::<StatefulSet>().into_iter().map(|s| {
        let spec = s.spec.unwrap();
        (s.metadata.name.unwrap(), spec.template, spec.service_name)
    });
    let workloads = workloads.chain(
        examples
            .all::<Deployment>()
            .into_iter()
            .map(|d| (d.metadata.name.unwrap(), d.spec.unwrap().template, None)),
    );
    let mut seen = 0;
    for (name, template, service_name) in workloads {
        seen += 1;
        let labels = template.metadata.clone().and_then(|m| m.labels).unwrap_or_default();
        let mine: Vec<&XLatticeCluster> = clusters.iter().filter(|c| selects(c, &labels)).collect();
        assert_eq!(mine.len(), 1, "{name} is claimed by {} example clusters", mine.len());
        let (cluster, spec) = (mine[0].metadata.name.clone().unwrap(), &mine[0].spec);
        let pod = template.spec.clone().unwrap();
        for c in &pod.containers {
            for p in c.ports.iter().flatten() {
                assert!(
                    ![spec.cluster_port, spec.client_port].contains(&p.container_port),
                    "{name}: container {} declares port {}, which the sidecar owns",
                    c.name,
                    p.container_port
                );
            }
        }
        let text = serde_json::to_string(&template).unwrap();
        let (cluster_up, client_up) = spec.upstream_ports();
        for up in [cluster_up, client_up] {
            assert!(
                text.contains(&up.to_string()),
                "{name} never mentions upstream port {up} of cluster {cluster}"
            );
        }
        if let Some(service) = service_name {
            assert_eq!(
                service,
                names::members_service_name(&cluster),
                "{name}: serviceName is not the operator's headless Service"
            );
        }
    }
    assert!(seen >= 2, "example workloads: {seen}");
    let jobs = examples.all::<Job>();
    assert!(!jobs.is_empty(), "no client Job among the examples");
    for job in jobs {
        check_client_job(&job, &clusters);
    }
}

fn selects(cluster: &XLatticeCluster, labels: &BTreeMap<String, String>) -> bool {
    let selector = Selector::try_from(cluster.spec.selector.clone()).expect("an example's selector parses");
    selector.matches(labels)
}

fn check_client_job(job: &Job, clusters: &[XLatticeCluster]) {
    let pod = job.spec.clone().unwrap().template.spec.unwrap();
    let c = &pod.containers[0];
    assert_eq!(
        c.args.as_ref().and_then(|a| a.first()).map(String::as_str),
        Some("connect"),
        "the Job runs `xlattice connect`"
    );
    let mount = c.volume_mounts.iter().flatten().find(|m| m.mount_path == DIRECTORY_DIR);
    let volume = mount.and_then(|m| pod.volumes.iter().flatten().find(|v| v.name == m.name));
    let sources = volume
        .and_then(|v| v.projected.clone())
        .and_then(|p| p.sources)
        .unwrap_or_default();
    let mut shards: Vec<String> = sources
        .into_iter()
        .filter_map(|s| s.config_map.map(|c| c.name))
        .collect();
    shards.sort();
    let all_of = |c: &XLatticeCluster| {
        let name = c.metadata.name.clone().unwrap();
        let mut all: Vec<String> = (0..names::DIRECTORY_SHARDS)
            .map(|k| names::directory_shard_name(&name, k))
            .collect();
        all.sort();
        all
    };
    assert!(
        clusters.iter().any(|c| all_of(c) == shards),
        "the Job does not project every directory shard of a cluster at {DIRECTORY_DIR}: {shards:?}"
    );
}

// ---- rendering -----------------------------------------------------------------------------

/// One `helm template` output: its text (for the golden files) and its objects.
struct Rendering {
    text: String,
    docs: Vec<Value>,
}

impl Rendering {
    /// Every object of type K (kind and apiVersion both match), read into K.
    fn all<K: kube::Resource<DynamicType = ()> + DeserializeOwned>(&self) -> Vec<K> {
        let (kind, api_version) = (K::kind(&()), K::api_version(&()));
        let of_k = self
            .docs
            .iter()
            .filter(|d| d["kind"] == *kind && d["apiVersion"] == *api_version);
        of_k.map(|d| {
            serde_yaml::from_value(d.clone()).unwrap_or_else(|e| panic!("a {kind} that is not one: {e}\n{d:?}"))
        })
        .collect()
    }

    fn named<K: kube::Resource<DynamicType = ()> + DeserializeOwned>(&self, name: &str) -> Option<K> {
        let mut found: Vec<K> = self
            .all::<K>()
            .into_iter()
            .filter(|o| o.meta().name.as_deref() == Some(name))
            .collect();
        assert!(
            found.len() <= 1,
            "{} {name} rendered {} times",
            K::kind(&()),
            found.len()
        );
        found.pop()
    }

    fn one<K: kube::Resource<DynamicType = ()> + DeserializeOwned>(&self, name: &str) -> K {
        self.named(name)
            .unwrap_or_else(|| panic!("no {} {name} rendered", K::kind(&())))
    }

    /// Kind, name and namespace of every object.
    fn addresses(&self) -> Vec<(String, String, Option<String>)> {
        let text = |v: &Value| v.as_str().map(String::from);
        let address = |d: &Value| {
            (
                text(&d["kind"]).unwrap_or_default(),
                text(&d["metadata"]["name"]).unwrap_or_default(),
                text(&d["metadata"]["namespace"]),
            )
        };
        self.docs.iter().map(address).collect()
    }

    /// The operator's Deployment, its container and its arguments through `cli::Cli`: an
    /// argument the operator does not know fails here as it would fail the pod.
    fn operator(&self) -> Operator {
        let deployment: Deployment = self.one("xlattice-operator");
        let pod = deployment
            .spec
            .clone()
            .and_then(|s| s.template.spec)
            .expect("a pod template");
        let container = pod.containers.first().cloned().expect("a container");
        let argv = std::iter::once("xlattice-operator".to_string()).chain(container.args.clone().unwrap_or_default());
        let args = match Cli::try_parse_from(argv) {
            Ok(Cli {
                command: OperatorCommand::Run(args),
            }) => *args,
            Ok(_) => panic!("the operator's arguments do not start with `run`: {:?}", container.args),
            Err(e) => panic!("the operator refuses the chart's arguments {:?}:\n{e}", container.args),
        };
        Operator {
            deployment,
            pod,
            container,
            args,
        }
    }

    /// Compared byte for byte with tests/fixtures/chart/NAME.yaml (rewritten with
    /// XLATTICE_UPDATE_GOLDEN=1), so any change to what users install shows in review.
    fn golden(&self, name: &str) {
        let path = fixture(&format!("{name}.yaml"));
        if std::env::var_os("XLATTICE_UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, &self.text).unwrap();
            return;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        if self.text != want {
            let line = self
                .text
                .lines()
                .zip(want.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(0)
                + 1;
            panic!(
                "the {name} rendering differs from {} from line {line} (if intended: XLATTICE_UPDATE_GOLDEN=1):\n{}",
                path.display(),
                self.text
                    .lines()
                    .skip(line.saturating_sub(3))
                    .take(8)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}

fn render(namespace: &str, args: &[&str]) -> Rendering {
    let text = helm_template(namespace, args)
        .unwrap_or_else(|e| panic!("helm template --namespace {namespace} {args:?}: {e}"));
    Rendering {
        docs: yaml_docs(&text),
        text,
    }
}

/// `helm template xlattice CHART`: the rendering, or helm's complaint.
fn helm_template(namespace: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(helm())
        .args(["template", "xlattice", CHART, "--namespace", namespace])
        .args(args)
        .current_dir(repo())
        .output()
        .expect("helm runs");
    match out.status.success() {
        true => Ok(String::from_utf8(out.stdout).expect("UTF-8")),
        false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

fn yaml_docs(text: &str) -> Vec<Value> {
    let docs = serde_yaml::Deserializer::from_str(text).map(|d| Value::deserialize(d).expect("YAML"));
    docs.filter(|d| !d.is_null()).collect()
}

// ---- small things ----------------------------------------------------------------------------

fn resources(requests: &[(&str, &str)], limits: &[(&str, &str)]) -> ResourceRequirements {
    let map = |kv: &[(&str, &str)]| {
        Some(
            kv.iter()
                .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                .collect(),
        )
    };
    ResourceRequirements {
        requests: map(requests),
        limits: map(limits),
        ..Default::default()
    }
}

fn port(container: &Container, name: &str) -> Option<i32> {
    let ports = container.ports.iter().flatten();
    ports
        .filter(|p| p.name.as_deref() == Some(name))
        .map(|p| p.container_port)
        .next()
}

fn app_version() -> String {
    let chart: Value = serde_yaml::from_str(&read(&repo().join(CHART).join("Chart.yaml"))).unwrap();
    chart["appVersion"].as_str().expect("Chart.yaml appVersion").to_string()
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/chart")
        .join(name)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn tempdir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xlattice-chart-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// helm: XLATTICE_HELM, or on PATH. Missing, the test fails saying how to get it: a pass
/// that rendered nothing would hide that nothing was checked.
fn helm() -> PathBuf {
    std::env::var_os("XLATTICE_HELM").map(PathBuf::from).or_else(|| on_path("helm")).unwrap_or_else(|| {
        panic!("helm is not on PATH: hack/control-plane.sh install && eval \"$(hack/control-plane.sh env)\", or set XLATTICE_HELM")
    })
}

fn promtool_path() -> PathBuf {
    let cached = || {
        let out = Command::new(repo().join("hack/promtool.sh"))
            .arg("path")
            .output()
            .ok()?;
        let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
        (out.status.success() && path.is_file()).then_some(path)
    };
    let found = std::env::var_os("XLATTICE_PROMTOOL")
        .map(PathBuf::from)
        .or_else(|| on_path("promtool"))
        .or_else(cached);
    found.unwrap_or_else(|| {
        panic!("promtool not found: hack/promtool.sh install (hack/setup.sh does), or set XLATTICE_PROMTOOL")
    })
}

fn on_path(tool: &str) -> Option<PathBuf> {
    let dirs = std::env::var_os("PATH")?;
    std::env::split_paths(&dirs).map(|d| d.join(tool)).find(|p| p.is_file())
}

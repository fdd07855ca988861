//! Pure: what `check` concludes from what it read. Each function takes one part of
//! `Observed` and returns its findings; the membership rules are the operator's own
//! (`xlattice_operator::membership`), so `check` and the operator never disagree on who is
//! a member or whose sidecar is out of date.

use jiff::Timestamp;
use k8s_openapi::{
    api::{admissionregistration::v1::MutatingWebhookConfiguration, coordination::v1::Lease, core::v1::Pod},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{core::Selector, CustomResourceExt, ResourceExt};
use xlattice_operator::{
    crd, membership, names, status,
    webhook::{
        certs::{validities, Validity},
        inject,
    },
    XLatticeCluster,
};

use super::{
    observe::{ClusterFacts, Observed, OperatorFacts, Read},
    probe::PolicyProbe,
    report::Finding,
    CRD_NAME,
};

/// The oldest API server the CRD and chart work on: the CRD's CIDR rule (`isCIDR`, 1.31);
/// ValidatingAdmissionPolicy v1 (1.30); native sidecar containers (on by default since 1.29).
pub const MIN_VERSION: (u32, u32) = (1, 31);
/// The operator renews a certificate when a third of its life is left: below a quarter,
/// the renewal is late.
const LATE_FRACTION: i64 = 4;
/// A sidecar behind its pod's directory for longer than this is stuck, not catching up.
const STUCK_SECONDS: f64 = 30.0;
/// Names listed in one message at most; the rest are counted.
const LISTED: usize = 5;

const API_SERVER: &str = "API server";

pub fn judge(observed: &Observed, now: Timestamp) -> Vec<Finding> {
    let mut found = Vec::new();
    if let Some(version) = &observed.version {
        found.push(version_finding(version));
    }
    if let Some(api) = &observed.admission_policy_api {
        found.push(admission_policy_finding(api));
    }
    if let Some(metrics) = &observed.api_server_metrics {
        found.push(super::at_rest::finding(metrics));
    }
    for (kind, allowed) in &observed.permissions {
        found.push(permission_finding(kind, allowed));
    }
    if let Some(crd) = &observed.crd {
        found.push(crd_finding(crd));
    }
    if let Some(webhook) = &observed.webhook {
        found.extend(webhook_findings(webhook, observed.serving_cert.as_ref(), now));
    }
    if let Some(operator) = &observed.operator {
        found.extend(operator_findings(operator, now));
    }
    found.push(network_policy_finding(observed.network_policy.as_ref()));
    match &observed.clusters {
        Some(Ok(clusters)) if clusters.is_empty() => found.push(Finding::skip(
            "clusters",
            "XLatticeClusters",
            "none yet: nothing more to check",
        )),
        Some(Ok(clusters)) => found.extend(clusters.iter().flat_map(cluster_findings)),
        Some(Err(e)) => found.push(Finding::fail(
            "clusters",
            "XLatticeClusters",
            format!("cannot list: {e}"),
            "run check as a user who may list xlatticeclusters, pods and configmaps",
        )),
        None => {}
    }
    found
}

fn version_finding(version: &Read<(u32, u32)>) -> Finding {
    const CHECK: &str = "kubernetes-version";
    match version {
        Ok(v) if *v >= MIN_VERSION => Finding::pass(CHECK, API_SERVER, format!("{}.{}", v.0, v.1)),
        Ok(v) => Finding::fail(
            CHECK,
            API_SERVER,
            format!("{}.{}, older than {}.{}", v.0, v.1, MIN_VERSION.0, MIN_VERSION.1),
            "upgrade Kubernetes: the CRD validates CIDRs with isCIDR (1.31), the chart needs ValidatingAdmissionPolicy v1 (1.30)",
        ),
        Err(e) => Finding::fail(CHECK, API_SERVER, format!("cannot read /version: {e}"), "is the kubeconfig's server reachable?"),
    }
}

fn admission_policy_finding(api: &Read<bool>) -> Finding {
    const CHECK: &str = "admission-policy-api";
    match api {
        Ok(true) => Finding::pass(
            CHECK,
            API_SERVER,
            "admissionregistration.k8s.io/v1 serves validatingadmissionpolicies",
        ),
        Ok(false) => Finding::fail(
            CHECK,
            API_SERVER,
            "admissionregistration.k8s.io/v1 does not serve validatingadmissionpolicies",
            "the chart's policy narrows what the operator may write; it needs Kubernetes 1.31 or later",
        ),
        Err(e) => Finding::fail(
            CHECK,
            API_SERVER,
            format!("cannot read the API group: {e}"),
            "is the kubeconfig's server reachable?",
        ),
    }
}

fn permission_finding(kind: &str, allowed: &Read<bool>) -> Finding {
    const CHECK: &str = "permission";
    match allowed {
        Ok(true) => Finding::pass(CHECK, kind, "you may create them"),
        Ok(false) => Finding::fail(
            CHECK,
            kind,
            "you may not create them",
            "install as a cluster administrator",
        ),
        Err(e) => Finding::fail(
            CHECK,
            kind,
            format!("cannot ask: {e}"),
            "install as a cluster administrator",
        ),
    }
}

fn crd_finding(crd: &Read<Option<CustomResourceDefinition>>) -> Finding {
    const CHECK: &str = "crd";
    let installed = match crd {
        Ok(Some(installed)) => installed,
        Ok(None) => {
            return Finding::fail(
                CHECK,
                CRD_NAME,
                "not installed",
                "helm install the chart, or kubectl apply -f deploy/",
            )
        }
        Err(e) => {
            return Finding::fail(
                CHECK,
                CRD_NAME,
                format!("cannot read: {e}"),
                "run check as a user who may read CRDs",
            )
        }
    };
    let established = installed
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Established" && c.status == "True"));
    if !established {
        return Finding::fail(
            CHECK,
            CRD_NAME,
            "not Established",
            "kubectl describe crd xlatticeclusters.xlattice.io",
        );
    }
    // The versions with their schemas, as this release generates them.
    let versions = |crd: &CustomResourceDefinition| serde_json::to_value(&crd.spec.versions).unwrap_or_default();
    let ours = XLatticeCluster::crd();
    if versions(installed) != versions(&ours) {
        let names: Vec<&str> = installed.spec.versions.iter().map(|v| v.name.as_str()).collect();
        return Finding::fail(
            CHECK,
            CRD_NAME,
            format!(
                "installed versions [{}] differ from this release's schema",
                names.join(", ")
            ),
            "helm never upgrades CRDs: kubectl apply -f charts/xlattice-operator/crds/ (or deploy/xlattice-crds.yaml), then upgrade the operator",
        );
    }
    Finding::pass(CHECK, CRD_NAME, "installed, Established, same schema as this release")
}

fn network_policy_finding(probe: Option<&Read<PolicyProbe>>) -> Finding {
    const CHECK: &str = "network-policy";
    const SUBJECT: &str = "pod network";
    let hint = "install a NetworkPolicy provider (Calico, Cilium, kube-router...): without one, only the sidecar's member proof guards the cluster port";
    match probe {
        None => Finding::skip(CHECK, SUBJECT, "not probed (--probe-network-policy: two pods in a temporary namespace)"),
        Some(Ok(PolicyProbe {
            open_without_policy: true,
            blocked_with_policy: true,
        })) => Finding::pass(CHECK, SUBJECT, "enforced: a deny-all policy closed a port that was open without it"),
        Some(Ok(PolicyProbe {
            open_without_policy: true,
            blocked_with_policy: false,
        })) => Finding::fail(CHECK, SUBJECT, "NOT enforced: a deny-all policy left the port open", hint),
        Some(Ok(_)) => Finding::fail(
            CHECK,
            SUBJECT,
            "a probe pod could not reach the other even without a policy",
            "pods cannot reach each other on the pod network: check the CNI",
        ),
        Some(Err(e)) => Finding::fail(
            CHECK,
            SUBJECT,
            format!("the probe did not finish: {e}"),
            "pass --probe-image with an image the nodes can pull, or check the events of the xlattice-check-* namespace",
        ),
    }
}

// === the webhook ===

fn webhook_findings(
    config: &Read<Option<MutatingWebhookConfiguration>>,
    serving_cert: Option<&Read<Option<String>>>,
    now: Timestamp,
) -> Vec<Finding> {
    const CHECK: &str = "webhook";
    let subject = xlattice_operator::webhook::certs::WEBHOOK_CONFIGURATION;
    let config = match config {
        Ok(Some(config)) => config,
        Ok(None) => {
            return vec![Finding::fail(
                CHECK,
                subject,
                "not installed: no pod gets the sidecar",
                "helm install the chart with webhook.enabled=true (the default)",
            )]
        }
        Err(e) => {
            return vec![Finding::fail(
                CHECK,
                subject,
                format!("cannot read: {e}"),
                "run check as a cluster administrator",
            )]
        }
    };
    let bundle = config
        .webhooks
        .iter()
        .flatten()
        .find_map(|w| w.client_config.ca_bundle.as_ref())
        .map(|b| b.0.clone())
        .unwrap_or_default();
    let cas = match validities(&bundle) {
        Ok(cas) if !cas.is_empty() => cas,
        Ok(_) => {
            return vec![Finding::fail(
                CHECK,
                subject,
                "caBundle is empty: the API server cannot call the webhook",
                "the operator writes it when it starts: check the operator below",
            )]
        }
        Err(e) => {
            return vec![Finding::fail(
                CHECK,
                subject,
                format!("caBundle: {e}"),
                "restart the operator: it rewrites the caBundle",
            )]
        }
    };
    let mut found = vec![Finding::pass(
        CHECK,
        subject,
        format!("installed, caBundle holds {} CA(s)", cas.len()),
    )];
    // The first CA is the current one (the previous one stays after it while renewing).
    found.push(expiry_finding("webhook-ca", subject, &cas[0], now));
    found.push(match serving_cert {
        Some(Ok(Some(pem))) => match validities(pem.as_bytes()) {
            Ok(certs) if !certs.is_empty() => expiry_finding("webhook-cert", subject, &certs[0], now),
            _ => Finding::fail(
                "webhook-cert",
                subject,
                "the TLS Secret's certificate is unreadable",
                "delete the Secret xlattice-webhook-tls: the operator mints a new one",
            ),
        },
        Some(Ok(None)) => Finding::fail(
            "webhook-cert",
            subject,
            "no serving certificate in Secret xlattice-webhook-tls",
            "the operator writes it when it starts: check the operator below",
        ),
        Some(Err(e)) => Finding::skip("webhook-cert", subject, format!("cannot read the TLS Secret: {e}")),
        None => Finding::skip("webhook-cert", subject, "not read"),
    });
    found
}

fn expiry_finding(check: &'static str, subject: &str, cert: &Validity, now: Timestamp) -> Finding {
    let left = cert.not_after - now.as_second();
    let life = (cert.not_after - cert.not_before).max(1);
    let days = left as f64 / 86_400.0;
    let hint = "the operator renews after two thirds of the life: check its logs for certificate errors, or delete the Secret xlattice-webhook-tls to mint anew";
    if left <= 0 {
        Finding::fail(check, subject, "expired: the API server cannot call the webhook", hint)
    } else if left < life / LATE_FRACTION {
        Finding::warn(
            check,
            subject,
            format!("expires in {days:.1} days, past its renewal"),
            hint,
        )
    } else {
        Finding::pass(check, subject, format!("valid for {days:.0} more days"))
    }
}

// === the operator ===

fn operator_findings(operator: &OperatorFacts, now: Timestamp) -> Vec<Finding> {
    let ns = operator.namespace.as_str();
    let pods = match &operator.pods {
        Ok(pods) => pods,
        Err(e) => {
            return vec![Finding::fail(
                "operator",
                ns,
                format!("cannot list its pods: {e}"),
                "run check as a user who may list pods there",
            )]
        }
    };
    let ready: Vec<String> = pods.iter().filter(|p| pod_ready(p)).map(|p| p.name_any()).collect();
    let pods_finding = if pods.is_empty() {
        Finding::fail(
            "operator",
            ns,
            "no operator pod",
            "helm install the chart there, or pass --operator-namespace",
        )
    } else if ready.is_empty() {
        Finding::fail(
            "operator",
            ns,
            format!(
                "none of {} pod(s) ready: no reconciling, and pods the webhook must see are refused",
                pods.len()
            ),
            format!("kubectl -n {ns} describe pods -l app.kubernetes.io/name=xlattice-operator"),
        )
    } else {
        Finding::pass(
            "operator",
            ns,
            format!("{} of {} pod(s) ready", ready.len(), pods.len()),
        )
    };
    vec![pods_finding, leader_finding(ns, &operator.lease, &ready, now)]
}

fn pod_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn leader_finding(ns: &str, lease: &Read<Option<Lease>>, ready: &[String], now: Timestamp) -> Finding {
    const CHECK: &str = "leader";
    let lease = match lease {
        Ok(Some(lease)) => lease,
        Ok(None) if ready.is_empty() => {
            return Finding::fail(
                CHECK,
                ns,
                "no replica leads: none is ready",
                "see the operator check above",
            )
        }
        Ok(None) if ready.len() == 1 => {
            return Finding::pass(CHECK, ns, "no Lease (leader election off), one ready replica")
        }
        Ok(None) => {
            return Finding::fail(
                CHECK,
                ns,
                format!("no Lease and {} ready replicas", ready.len()),
                "with more than one replica, leader election must be on (leaderElection.enabled)",
            )
        }
        Err(e) => return Finding::skip(CHECK, ns, format!("cannot read the Lease: {e}")),
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.unwrap_or_default();
    let renewed = spec.renew_time.map(|t| t.0.as_second()).unwrap_or(0);
    let expires = renewed + i64::from(spec.lease_duration_seconds.unwrap_or(0));
    let hint = "the replicas elect a leader within the Lease's duration; if none takes it, read the operator's logs";
    if holder.is_empty() || expires <= now.as_second() {
        Finding::fail(
            CHECK,
            ns,
            format!("no replica holds Lease {} (expired)", lease.name_any()),
            hint,
        )
    } else if !ready.contains(&holder) {
        Finding::fail(
            CHECK,
            ns,
            format!("Lease held by {holder}, which is not a ready operator pod"),
            hint,
        )
    } else {
        Finding::pass(CHECK, ns, format!("{holder} leads"))
    }
}

// === each cluster ===

fn cluster_findings(facts: &ClusterFacts) -> Vec<Finding> {
    let subject = format!(
        "{}/{}",
        facts.object.namespace().unwrap_or_default(),
        facts.object.name_any()
    );
    let cluster = match crd::decode(&facts.object) {
        Ok(cluster) => cluster,
        Err(e) => {
            return vec![Finding::fail(
                "cluster-spec",
                subject,
                format!("this release cannot read it: {e}"),
                "fix the field named (kubectl edit), or upgrade the CRD and operator together",
            )]
        }
    };
    let mut found = vec![ready_finding(&subject, &cluster)];
    found.push(match &facts.pods {
        Ok(pods) => sidecars_finding(&subject, &cluster, pods),
        Err(e) => Finding::fail(
            "sidecars",
            &subject,
            format!("cannot list pods: {e}"),
            "run check as a user who may list pods",
        ),
    });
    found.push(injection_finding(&subject, facts.dry_run.as_ref()));
    if let Ok(pods) = &facts.pods {
        found.push(stamps_finding(&subject, &cluster, pods, &facts.directory));
    }
    found.push(sidecar_directory_finding(&subject, facts));
    found
}

fn ready_finding(subject: &str, cluster: &XLatticeCluster) -> Finding {
    const CHECK: &str = "cluster-ready";
    let status = cluster.status.clone().unwrap_or_default();
    let condition = |kind: &str| status.conditions.iter().find(|c| c.type_ == kind);
    let hint = format!("kubectl describe xlatticecluster -n {}", subject.replacen('/', " ", 1));
    let generation = cluster.metadata.generation;
    if status.observed_generation.is_none() || status.observed_generation < generation {
        return Finding::fail(
            CHECK,
            subject,
            format!("generation {} not yet reconciled", generation.unwrap_or(0)),
            "is the operator running and leading? (see the operator checks)",
        );
    }
    match condition(status::READY) {
        Some(ready) if ready.status == "True" => Finding::pass(
            CHECK,
            subject,
            format!("Ready: {} members, {} minted", status.members, status.minted),
        ),
        Some(ready) => {
            let degraded = condition(status::DEGRADED).filter(|d| d.status == "True");
            let why = degraded.map_or_else(
                || format!("{}: {}", ready.reason, ready.message),
                |d| format!("{}: {}", d.reason, d.message),
            );
            Finding::fail(CHECK, subject, format!("not Ready ({why})"), hint)
        }
        None => Finding::fail(CHECK, subject, "no Ready condition yet", hint),
    }
}

fn members<'a>(cluster: &XLatticeCluster, pods: &'a [Pod]) -> Vec<&'a Pod> {
    match Selector::try_from(cluster.spec.selector.clone()) {
        Ok(selector) => membership::members(&selector, pods),
        Err(_) => Vec::new(),
    }
}

fn sidecars_finding(subject: &str, cluster: &XLatticeCluster, pods: &[Pod]) -> Finding {
    const CHECK: &str = "sidecars";
    let members = members(cluster, pods);
    let missing = membership::without_sidecar(&members);
    let outdated = membership::outdated_sidecar(&cluster.name_any(), &members, &inject::sidecar_args(cluster));
    if missing.is_empty() && outdated.is_empty() {
        return Finding::pass(
            CHECK,
            subject,
            format!("all {} members run the sidecar for this spec", members.len()),
        );
    }
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!("without the sidecar: {}", listed(&missing)));
    }
    if !outdated.is_empty() {
        problems.push(format!(
            "sidecar for an earlier spec (old ports): {}",
            listed(&outdated)
        ));
    }
    Finding::fail(
        CHECK,
        subject,
        problems.join("; "),
        "restart their workloads (kubectl rollout restart), or set spec.restartWorkloads: true",
    )
}

fn injection_finding(subject: &str, dry_run: Option<&Read<Pod>>) -> Finding {
    const CHECK: &str = "webhook-injects";
    match dry_run {
        None => Finding::skip(CHECK, subject, "the selector has no matchLabels to build a pod from"),
        Some(Ok(pod)) if has_sidecar(pod) => {
            Finding::pass(CHECK, subject, "a pod with the selector's labels gets the sidecar (server-side dry run)")
        }
        Some(Ok(_)) => Finding::fail(
            CHECK,
            subject,
            "a pod with the selector's labels was admitted without the sidecar",
            "the namespace may be outside the webhook (webhook.namespaces, excludeNamespaces, label xlattice.io/injection=disabled)",
        ),
        Some(Err(e)) => Finding::fail(
            CHECK,
            subject,
            format!("a pod with the selector's labels was refused: {e}"),
            "the API server could not get an answer from the webhook: check the operator's pods, its Service and the caBundle",
        ),
    }
}

fn has_sidecar(pod: &Pod) -> bool {
    let init = pod.spec.as_ref().and_then(|s| s.init_containers.as_ref());
    init.into_iter().flatten().any(|c| c.name == names::SIDECAR_NAME)
}

fn stamps_finding(
    subject: &str,
    cluster: &XLatticeCluster,
    pods: &[Pod],
    directory: &Read<xlattice_protocol::MemberDirectory>,
) -> Finding {
    const CHECK: &str = "directory-stamps";
    let dir = match directory {
        Ok(dir) => dir,
        Err(e) => {
            return Finding::fail(
                CHECK,
                subject,
                format!("the directory is unreadable: {e}"),
                "read the operator's logs",
            )
        }
    };
    let version = dir.version();
    let members = members(cluster, pods);
    let behind: Vec<String> = membership::directory_behind(&members, &version)
        .iter()
        .map(|p| p.name_any())
        .collect();
    if behind.is_empty() {
        return Finding::pass(
            CHECK,
            subject,
            format!("every injected member's pod carries directory {version}"),
        );
    }
    Finding::warn(
        CHECK,
        subject,
        format!("pods not yet stamped with directory {version}: {}", listed(&behind)),
        "the operator stamps member pods within seconds of a change so the kubelet refreshes their volumes; if this stays, is --refresh-member-pods off?",
    )
}

fn sidecar_directory_finding(subject: &str, facts: &ClusterFacts) -> Finding {
    const CHECK: &str = "sidecar-directory";
    if facts.behind.is_empty() {
        return Finding::skip(CHECK, subject, "no running sidecar scraped");
    }
    let mut stuck = Vec::new();
    let mut catching_up = Vec::new();
    let mut unread = Vec::new();
    for (pod, behind) in &facts.behind {
        match behind {
            Ok(s) if *s > STUCK_SECONDS => stuck.push(format!("{pod} ({s:.0} s)")),
            Ok(s) if *s > 0.0 => catching_up.push(format!("{pod} ({s:.0} s)")),
            Ok(_) => {}
            Err(e) => unread.push(format!("{pod} ({e})")),
        }
    }
    let hint = "a sidecar serves the directory it last loaded; see its log (kubectl logs POD -c xlattice-sidecar) and its mounted files";
    if !stuck.is_empty() {
        Finding::fail(
            CHECK,
            subject,
            format!("sidecars behind their pod's directory: {}", listed(&stuck)),
            hint,
        )
    } else if !catching_up.is_empty() || !unread.is_empty() {
        let mut what = Vec::new();
        if !catching_up.is_empty() {
            what.push(format!("catching up: {}", listed(&catching_up)));
        }
        if !unread.is_empty() {
            what.push(format!("metrics unreadable: {}", listed(&unread)));
        }
        Finding::warn(CHECK, subject, what.join("; "), hint)
    } else {
        Finding::pass(
            CHECK,
            subject,
            format!("all {} sidecars serve their pod's directory", facts.behind.len()),
        )
    }
}

fn listed(names: &[String]) -> String {
    let shown = names.iter().take(LISTED).cloned().collect::<Vec<_>>().join(", ");
    match names.len().saturating_sub(LISTED) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

#[cfg(test)]
#[path = "judge_tests.rs"]
mod tests;

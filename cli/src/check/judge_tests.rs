//! `judge` against hand-built observations: each failure the check must catch, and the
//! healthy case that must pass.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::{
    api::{
        admissionregistration::v1::{MutatingWebhook, MutatingWebhookConfiguration, WebhookClientConfig},
        coordination::v1::{Lease, LeaseSpec},
        core::v1::Pod,
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::{
        CustomResourceDefinitionCondition, CustomResourceDefinitionStatus,
    },
    apimachinery::pkg::apis::meta::v1::MicroTime,
    ByteString,
};
use kube::{api::DynamicObject, CustomResourceExt};
use serde_json::json;
use xlattice_operator::XLatticeCluster;

use super::*;
use crate::check::{observe::OperatorFacts, report::Verdict};

fn now() -> Timestamp {
    "2026-12-03T10:00:00Z".parse().unwrap()
}

fn verdicts(found: &[Finding]) -> Vec<(&'static str, Verdict)> {
    found.iter().map(|f| (f.check, f.verdict)).collect()
}

fn one(found: &[Finding], check: &str) -> Finding {
    let mut matching = found.iter().filter(|f| f.check == check);
    let first = matching
        .next()
        .unwrap_or_else(|| panic!("no {check} finding in {found:#?}"))
        .clone();
    assert!(matching.next().is_none(), "two {check} findings");
    first
}

#[test]
fn versions_older_than_1_31_fail() {
    assert_eq!(version_finding(&Ok((1, 34))).verdict, Verdict::Pass);
    assert_eq!(version_finding(&Ok((1, 31))).verdict, Verdict::Pass);
    assert_eq!(version_finding(&Ok((1, 30))).verdict, Verdict::Fail);
    assert_eq!(
        version_finding(&Err("connection refused".into())).verdict,
        Verdict::Fail
    );
    assert_eq!(admission_policy_finding(&Ok(false)).verdict, Verdict::Fail);
}

fn established(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    crd.status = Some(CustomResourceDefinitionStatus {
        conditions: Some(vec![CustomResourceDefinitionCondition {
            type_: "Established".into(),
            status: "True".into(),
            ..Default::default()
        }]),
        ..Default::default()
    });
    crd
}

#[test]
fn the_crd_must_be_installed_established_and_this_release_s() {
    assert_eq!(
        crd_finding(&Ok(Some(established(XLatticeCluster::crd())))).verdict,
        Verdict::Pass
    );
    assert_eq!(crd_finding(&Ok(None)).verdict, Verdict::Fail);
    assert_eq!(
        crd_finding(&Ok(Some(XLatticeCluster::crd()))).message,
        "not Established"
    );
    let mut older = established(XLatticeCluster::crd());
    let schema = older.spec.versions[0]
        .schema
        .as_mut()
        .unwrap()
        .open_api_v3_schema
        .as_mut()
        .unwrap();
    schema.properties.as_mut().unwrap().remove("status");
    let found = crd_finding(&Ok(Some(older)));
    assert_eq!(found.verdict, Verdict::Fail);
    assert!(found.message.contains("differ"), "{}", found.message);
}

/// A self-signed certificate valid over [now + from_days, now + to_days].
fn cert_pem(from_days: i64, to_days: i64) -> String {
    let day = 86_400;
    let mut params = rcgen::CertificateParams::new(vec!["x".to_string()]).unwrap();
    params.not_before = time::OffsetDateTime::from_unix_timestamp(now().as_second() + from_days * day).unwrap();
    params.not_after = time::OffsetDateTime::from_unix_timestamp(now().as_second() + to_days * day).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().pem()
}

fn webhook_config(ca_bundle: &str) -> MutatingWebhookConfiguration {
    MutatingWebhookConfiguration {
        webhooks: Some(vec![MutatingWebhook {
            client_config: WebhookClientConfig {
                ca_bundle: Some(ByteString(ca_bundle.as_bytes().to_vec())),
                ..Default::default()
            },
            ..Default::default()
        }]),
        ..Default::default()
    }
}

#[test]
fn webhook_certificates_expired_or_past_renewal_are_reported() {
    let fresh = cert_pem(-1, 364);
    let found = webhook_findings(&Ok(Some(webhook_config(&fresh))), Some(&Ok(Some(fresh.clone()))), now());
    assert_eq!(
        verdicts(&found),
        [
            ("webhook", Verdict::Pass),
            ("webhook-ca", Verdict::Pass),
            ("webhook-cert", Verdict::Pass)
        ]
    );
    // 20 of 365 days left: the renewal at two thirds did not happen.
    let late = cert_pem(-345, 20);
    let found = webhook_findings(&Ok(Some(webhook_config(&fresh))), Some(&Ok(Some(late))), now());
    assert_eq!(one(&found, "webhook-cert").verdict, Verdict::Warn);
    let expired = cert_pem(-365, -1);
    let found = webhook_findings(&Ok(Some(webhook_config(&expired))), Some(&Ok(Some(fresh))), now());
    assert_eq!(one(&found, "webhook-ca").verdict, Verdict::Fail);
}

#[test]
fn a_missing_webhook_or_empty_ca_bundle_fails() {
    let found = webhook_findings(&Ok(None), None, now());
    assert_eq!(verdicts(&found), [("webhook", Verdict::Fail)]);
    let found = webhook_findings(&Ok(Some(webhook_config(""))), None, now());
    assert_eq!(verdicts(&found), [("webhook", Verdict::Fail)]);
    assert!(found[0].message.contains("caBundle is empty"));
    let fresh = cert_pem(-1, 364);
    let found = webhook_findings(
        &Ok(Some(webhook_config(&fresh))),
        Some(&Err("forbidden: no".into())),
        now(),
    );
    assert_eq!(one(&found, "webhook-cert").verdict, Verdict::Skip);
}

fn operator_pod(name: &str, ready: bool) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
    }))
    .unwrap()
}

fn lease(holder: &str, renewed_ago: i64) -> Lease {
    Lease {
        metadata: kube::api::ObjectMeta {
            name: Some("xlattice-operator".into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(now() - jiff::SignedDuration::from_secs(renewed_ago))),
            ..Default::default()
        }),
    }
}

fn operator(pods: Vec<Pod>, lease: Option<Lease>) -> Vec<Finding> {
    let facts = OperatorFacts {
        namespace: "xlattice-system".into(),
        pods: Ok(pods),
        lease: Ok(lease),
    };
    operator_findings(&facts, now())
}

#[test]
fn the_operator_needs_a_ready_pod_holding_a_live_lease() {
    let healthy = operator(
        vec![operator_pod("op-a", true), operator_pod("op-b", true)],
        Some(lease("op-a", 3)),
    );
    assert_eq!(
        verdicts(&healthy),
        [("operator", Verdict::Pass), ("leader", Verdict::Pass)]
    );
    let none = operator(vec![], None);
    assert_eq!(one(&none, "operator").verdict, Verdict::Fail);
    let unready = operator(vec![operator_pod("op-a", false)], Some(lease("op-a", 3)));
    assert_eq!(
        verdicts(&unready),
        [("operator", Verdict::Fail), ("leader", Verdict::Fail)]
    );
    let expired = operator(vec![operator_pod("op-a", true)], Some(lease("op-a", 60)));
    assert!(one(&expired, "leader").message.contains("expired"));
    let elsewhere = operator(vec![operator_pod("op-a", true)], Some(lease("laptop", 1)));
    assert_eq!(one(&elsewhere, "leader").verdict, Verdict::Fail);
    // Leader election off: fine with one replica, not with two.
    assert_eq!(
        one(&operator(vec![operator_pod("op-a", true)], None), "leader").verdict,
        Verdict::Pass
    );
    let two = operator(vec![operator_pod("op-a", true), operator_pod("op-b", true)], None);
    assert_eq!(one(&two, "leader").verdict, Verdict::Fail);
}

fn cluster_object(generation: i64, status: serde_json::Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "xlattice.io/v1alpha1",
        "kind": "XLatticeCluster",
        "metadata": {"name": "web", "namespace": "shop", "generation": generation},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "clusterPort": 7000, "clientPort": 7001},
        "status": status
    }))
    .unwrap()
}

fn ready_status(generation: i64) -> serde_json::Value {
    json!({"observedGeneration": generation, "members": 1, "minted": 1,
           "conditions": [{"type": "Ready", "status": "True", "reason": "Ready", "message": "",
                           "lastTransitionTime": "2026-12-03T09:00:00Z"}]})
}

/// A member pod of `web`, with the sidecar the webhook injects for `object` when `injected`.
fn member(name: &str, object: &DynamicObject, injected: bool, stamp: Option<&str>) -> Pod {
    let cluster = xlattice_operator::crd::decode(object).unwrap();
    let mut annotations = serde_json::Map::new();
    let mut init = Vec::new();
    if injected {
        annotations.insert(names::INJECTED_ANNOTATION.into(), json!("web"));
        init.push(json!({"name": names::SIDECAR_NAME, "args": inject::sidecar_args(&cluster)}));
    }
    if let Some(version) = stamp {
        annotations.insert(names::DIRECTORY_VERSION_ANNOTATION.into(), json!(version));
    }
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "web"}, "annotations": annotations},
        "spec": {"containers": [{"name": "app"}], "initContainers": init},
        "status": {"phase": "Running"}
    }))
    .unwrap()
}

fn facts(object: DynamicObject, pods: Vec<Pod>) -> ClusterFacts {
    let directory = xlattice_protocol::MemberDirectory::from_slice(b"cluster: web\nmembers: []\n");
    ClusterFacts {
        object,
        pods: Ok(pods),
        directory: directory.map_err(|e| e.to_string()),
        dry_run: None,
        behind: BTreeMap::new(),
    }
}

fn version_of(found: &ClusterFacts) -> String {
    found.directory.as_ref().unwrap().version()
}

#[test]
fn a_healthy_cluster_passes_every_check() {
    let object = cluster_object(2, ready_status(2));
    let mut f = facts(object.clone(), vec![]);
    let version = version_of(&f);
    f.pods = Ok(vec![member("web-0", &object, true, Some(&version))]);
    f.dry_run = Some(Ok(member("probe", &object, true, None)));
    f.behind = [("web-0".to_string(), Ok(0.0))].into();
    assert_eq!(
        verdicts(&cluster_findings(&f)),
        [
            ("cluster-ready", Verdict::Pass),
            ("sidecars", Verdict::Pass),
            ("webhook-injects", Verdict::Pass),
            ("directory-stamps", Verdict::Pass),
            ("sidecar-directory", Verdict::Pass),
        ]
    );
}

#[test]
fn stale_or_degraded_status_fails_ready() {
    let stale = cluster_findings(&facts(cluster_object(3, ready_status(2)), vec![]));
    assert!(one(&stale, "cluster-ready")
        .message
        .contains("generation 3 not yet reconciled"));
    let degraded = json!({"observedGeneration": 1, "conditions": [
        {"type": "Ready", "status": "False", "reason": "Degraded", "message": "see Degraded", "lastTransitionTime": "2026-12-03T09:00:00Z"},
        {"type": "Degraded", "status": "True", "reason": "SecretsUnreadable", "message": "xlattice-id-web-0 is corrupt", "lastTransitionTime": "2026-12-03T09:00:00Z"}]});
    let found = one(
        &cluster_findings(&facts(cluster_object(1, degraded), vec![])),
        "cluster-ready",
    );
    assert_eq!(found.verdict, Verdict::Fail);
    assert!(
        found
            .message
            .contains("SecretsUnreadable: xlattice-id-web-0 is corrupt"),
        "{}",
        found.message
    );
}

#[test]
fn members_without_or_with_an_old_sidecar_fail() {
    let object = cluster_object(1, ready_status(1));
    let mut old = member("web-1", &object, true, None);
    old.spec.as_mut().unwrap().init_containers.as_mut().unwrap()[0].args = Some(vec!["run".into()]);
    let f = facts(object.clone(), vec![member("web-0", &object, false, None), old]);
    let found = one(&cluster_findings(&f), "sidecars");
    assert_eq!(found.verdict, Verdict::Fail);
    assert_eq!(
        found.message,
        "without the sidecar: web-0; sidecar for an earlier spec (old ports): web-1"
    );
}

#[test]
fn a_refused_or_uninjected_dry_run_fails() {
    let object = cluster_object(1, ready_status(1));
    let mut f = facts(object.clone(), vec![]);
    assert_eq!(one(&cluster_findings(&f), "webhook-injects").verdict, Verdict::Skip);
    f.dry_run = Some(Ok(member("probe", &object, false, None)));
    assert_eq!(one(&cluster_findings(&f), "webhook-injects").verdict, Verdict::Fail);
    f.dry_run = Some(Err("Internal error occurred: failed calling webhook".into()));
    let found = one(&cluster_findings(&f), "webhook-injects");
    assert!(found.message.contains("failed calling webhook"));
}

#[test]
fn unstamped_pods_warn_and_stuck_sidecars_fail() {
    let object = cluster_object(1, ready_status(1));
    let mut f = facts(
        object.clone(),
        vec![member("web-0", &object, true, Some("0123456789abcdef"))],
    );
    assert_eq!(one(&cluster_findings(&f), "directory-stamps").verdict, Verdict::Warn);
    f.behind = [("web-0".to_string(), Ok(5.0))].into();
    assert_eq!(one(&cluster_findings(&f), "sidecar-directory").verdict, Verdict::Warn);
    f.behind = [
        ("web-0".to_string(), Ok(45.0)),
        ("web-1".to_string(), Err("forbidden".into())),
    ]
    .into();
    let found = one(&cluster_findings(&f), "sidecar-directory");
    assert_eq!(
        (found.verdict, found.message.as_str()),
        (Verdict::Fail, "sidecars behind their pod's directory: web-0 (45 s)")
    );
    f.behind = [("web-1".to_string(), Err("forbidden".into()))].into();
    assert_eq!(one(&cluster_findings(&f), "sidecar-directory").verdict, Verdict::Warn);
}

#[test]
fn a_cluster_this_release_cannot_read_names_the_field() {
    let mut object = cluster_object(1, ready_status(1));
    object.data["spec"]["clusterPort"] = json!("seven thousand");
    let found = cluster_findings(&facts(object, vec![]));
    assert_eq!(verdicts(&found), [("cluster-spec", Verdict::Fail)]);
    assert!(found[0].message.contains("spec.clusterPort"), "{}", found[0].message);
}

#[test]
fn long_lists_are_cut() {
    let names: Vec<String> = (0..8).map(|i| format!("p{i}")).collect();
    assert_eq!(listed(&names), "p0, p1, p2, p3, p4 and 3 more");
}

#[test]
fn the_gauge_is_read_from_prometheus_text() {
    let text = "# HELP xlattice_sidecar_directory_behind_seconds x\nxlattice_sidecar_directory_behind_seconds 12\nxlattice_sidecar_directory_behind_seconds_x 3\n";
    assert_eq!(crate::check::metric_value(text, crate::check::BEHIND_METRIC), Ok(12.0));
    assert!(crate::check::metric_value("", crate::check::BEHIND_METRIC).is_err());
}

#[test]
fn network_policy_must_close_a_port_that_was_open() {
    let probe = |open_without_policy, blocked_with_policy| {
        network_policy_finding(Some(&Ok(PolicyProbe {
            open_without_policy,
            blocked_with_policy,
        })))
        .verdict
    };
    assert_eq!(probe(true, true), Verdict::Pass);
    assert_eq!(probe(true, false), Verdict::Fail);
    // Blocked with the policy proves nothing if the port was never open.
    assert_eq!(probe(false, true), Verdict::Fail);
    assert_eq!(network_policy_finding(None).verdict, Verdict::Skip);
    assert_eq!(
        network_policy_finding(Some(&Err("image".into()))).verdict,
        Verdict::Fail
    );
}

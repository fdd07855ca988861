//! `kubectl xlattice check` against a real API server, with the operator running as its
//! ServiceAccount: a healthy cluster passes, then each failure is made on purpose and must
//! be named (a member without the sidecar, the operator gone, a spec it has not seen, a
//! user who may not install). The real-node run (`hack/node-test.sh`) adds the operator's
//! pods, the Lease and the sidecars' own metrics.

#[path = "../../operator/tests/support/mod.rs"]
mod support;

use std::{path::Path, process::Command, time::Duration};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    api::{DeleteParams, Patch, PatchParams, PostParams},
    Api, ResourceExt,
};
use serde_json::{json, Value};
use support::*;
use xlattice_operator::XLatticeCluster;

const WAIT: Duration = Duration::from_secs(60);

/// Runs the plugin with `--output json`; its exit code and report.
fn check(kubeconfig: &Path, args: &[&str]) -> (i32, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_kubectl-xlattice"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["check", "--output", "json"])
        .args(args)
        .output()
        .expect("run kubectl-xlattice");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "not a JSON report ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), report)
}

/// The verdict and message of the one finding `check` made about `subject`.
fn finding(report: &Value, check: &str, subject: &str) -> (String, String) {
    let found: Vec<&Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == check && f["subject"] == subject)
        .collect();
    assert_eq!(found.len(), 1, "one {check} finding for {subject} in {report:#}");
    let text = |k: &str| found[0][k].as_str().unwrap_or_default().to_string();
    (text("verdict"), text("message"))
}

fn assert_verdict(report: &Value, check: &str, subject: &str, verdict: &str) -> String {
    let (found, message) = finding(report, check, subject);
    assert_eq!(found, verdict, "{check} {subject}: {message}\n{report:#}");
    message
}

#[tokio::test]
async fn check_names_each_failure_made_on_purpose() {
    let Some((h, mut operator)) = Harness::start("check").await else {
        return;
    };
    let admin_path = h.path.clone();
    let mwc = register_webhook(&h.admin, &operator, &h.ns).await;
    let clusters: Api<XLatticeCluster> = Api::namespaced(h.admin.clone(), &h.ns);
    let pods: Api<Pod> = Api::namespaced(h.admin.clone(), &h.ns);
    let cluster: XLatticeCluster = serde_json::from_value(json!({
        "apiVersion": "xlattice.io/v1alpha1", "kind": "XLatticeCluster",
        "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "clusterPort": 7000, "clientPort": 8000,
                 "rsaBits": 2048, "nodeIdBits": 160},
    }))
    .unwrap();
    apply(&clusters, &cluster).await;
    let mut member = member_pod("", "web", &[]);
    member.metadata.generate_name = Some("web-".into());
    wait_for("the webhook admits a member", WAIT, || async {
        pods.create(&PostParams::default(), &member).await.ok()
    })
    .await;
    let subject = format!("{}/web", h.ns);
    let args = ["-n", h.ns.as_str(), "--operator-namespace", h.op_ns.as_str()];

    // --- healthy, but for the operator's pods: here it runs as a process, not a pod
    let report = wait_for("Ready, and the member stamped", WAIT, || async {
        let (_, report) = check(&admin_path, &args);
        let ready = finding(&report, "cluster-ready", &subject).0 == "pass";
        let stamped = finding(&report, "directory-stamps", &subject).0 == "pass";
        (ready && stamped).then_some(report)
    })
    .await;
    for (name, about) in [
        ("crd", "xlatticeclusters.xlattice.io"),
        ("webhook", "xlattice-sidecar-injector"),
        ("webhook-ca", "xlattice-sidecar-injector"),
        ("webhook-cert", "xlattice-sidecar-injector"),
        ("sidecars", &subject),
        ("webhook-injects", &subject),
        ("kubernetes-version", "API server"),
        ("admission-policy-api", "API server"),
        // The control plane encrypts Secrets (secretbox): the API server's metrics show it.
        ("secrets-at-rest", "Secrets"),
    ] {
        assert_verdict(&report, name, about, "pass");
    }
    assert_verdict(&report, "operator", &h.op_ns, "fail");
    // No kubelet: no sidecar runs, so none is scraped.
    assert_verdict(&report, "sidecar-directory", &subject, "skip");

    // --- a member that never saw the webhook: labelled into the cluster after creation
    let late = pods
        .create(&PostParams::default(), &member_pod("late", "other", &[]))
        .await
        .unwrap();
    let relabel = json!({"metadata": {"labels": {"app": "web"}}});
    pods.patch(&late.name_any(), &PatchParams::default(), &Patch::Merge(&relabel))
        .await
        .unwrap();
    let (code, report) = check(&admin_path, &args);
    assert_eq!(code, 1);
    let message = assert_verdict(&report, "sidecars", &subject, "fail");
    assert_eq!(message, "without the sidecar: late");
    pods.delete("late", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();

    // --- the operator stops: pods are refused, a spec change is not reconciled
    operator.kill();
    let change = json!({"spec": {"memberGracePeriodSeconds": 5}});
    clusters
        .patch("web", &PatchParams::default(), &Patch::Merge(&change))
        .await
        .unwrap();
    let (code, report) = check(&admin_path, &args);
    assert_eq!(code, 1);
    let message = assert_verdict(&report, "webhook-injects", &subject, "fail");
    assert!(message.contains("refused"), "{message}");
    let message = assert_verdict(&report, "cluster-ready", &subject, "fail");
    assert!(message.contains("not yet reconciled"), "{message}");

    // --- before installing: the admin may, the operator's ServiceAccount may not
    let (code, report) = check(&admin_path, &["--pre"]);
    assert_eq!((code, report["failed"].as_u64()), (0, Some(0)), "{report:#}");
    assert_verdict(&report, "permission", "CustomResourceDefinitions", "pass");
    let (code, report) = check(&h.kubeconfig, &["--pre"]);
    assert_eq!(code, 1, "{report:#}");
    assert_verdict(&report, "permission", "CustomResourceDefinitions", "fail");
    // Nor may it read the API server's metrics: that check is skipped, saying why.
    let message = assert_verdict(&report, "secrets-at-rest", "Secrets", "skip");
    assert!(message.contains("forbidden"), "{message}");

    let _ = mwc.delete("xlattice-sidecar-injector", &DeleteParams::default()).await;
}

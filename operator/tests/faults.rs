//! The operator through faults, against a real kube-apiserver: the API server unreachable
//! for longer than the Lease, and the Lease taken by someone else. The process stays up
//! and keeps its webhook and probes serving; the controller stops acting without the Lease
//! and resumes when it gets it back; no identity changes.
//!
//! The outage is real for this operator only: it reaches the API server through a TCP
//! relay on loopback that the test cuts (every open connection closed, new ones refused).

mod support;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use k8s_openapi::{
    api::{coordination::v1::Lease, core::v1::Pod, core::v1::Secret},
    apimachinery::pkg::apis::meta::v1::MicroTime,
};
use kube::{
    api::{PostParams, ResourceExt},
    Api,
};
use serde_json::json;
use support::*;
use tokio::{net::TcpListener, sync::Notify};
use xlattice_operator::{names::announced_node_id, XLatticeCluster};

const WAIT: Duration = Duration::from_secs(60);

/// A TCP relay to `upstream` that can be cut and restored.
struct Relay {
    port: u16,
    cut: Arc<AtomicBool>,
    cutting: Arc<Notify>,
}

impl Relay {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cut, cutting) = (Arc::new(AtomicBool::new(false)), Arc::new(Notify::new()));
        let (is_cut, on_cut) = (cut.clone(), cutting.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if is_cut.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is reset
                }
                let (upstream, on_cut) = (upstream.clone(), on_cut.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        () = on_cut.notified() => {}
                    }
                });
            }
        });
        Self { port, cut, cutting }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.cutting.notify_waiters();
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// The API server's host:port in a kubeconfig.
fn server(kubeconfig: &std::path::Path) -> String {
    let config: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(kubeconfig).unwrap()).unwrap();
    let url = config["clusters"][0]["cluster"]["server"].as_str().unwrap();
    url.trim_start_matches("https://").to_string()
}

/// The operator's kubeconfig, pointed at the relay instead of the API server (the server's
/// certificate names 127.0.0.1, where the relay listens too).
fn through(kubeconfig: &std::path::Path, relay: &Relay) -> std::path::PathBuf {
    let text = std::fs::read_to_string(kubeconfig).unwrap();
    let mut config: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    config["clusters"][0]["cluster"]["server"] = format!("https://127.0.0.1:{}", relay.port).into();
    let path = kubeconfig.with_extension("relayed");
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    path
}

fn alive(operator: &mut Operator) -> bool {
    operator.exited().is_none()
}

#[tokio::test]
async fn outage_and_lost_lease_keep_the_process_and_its_identities() {
    let Some((h, mut first)) = Harness::start("faults").await else {
        return;
    };
    // This test's operator goes through the relay; the harness's one steps aside.
    first.kill();
    let relay = Relay::start(server(&h.kubeconfig)).await;
    let kubeconfig = through(&h.kubeconfig, &relay);
    let webhook = free_port();
    let mut operator = Operator::start(&kubeconfig, &h.op_ns, &h.run, webhook);

    let pods: Api<Pod> = Api::namespaced(h.admin.clone(), &h.ns);
    let clusters: Api<XLatticeCluster> = Api::namespaced(h.admin.clone(), &h.ns);
    let secrets: Api<Secret> = Api::namespaced(h.admin.clone(), &h.ns);
    let leases: Api<Lease> = Api::namespaced(h.admin.clone(), &h.op_ns);
    pods.create(&PostParams::default(), &member_pod("f-0", "f", &[]))
        .await
        .unwrap();
    let spec = json!({"apiVersion": "xlattice.io/v1alpha1", "kind": "XLatticeCluster", "metadata": {"name": "f"},
        "spec": {"selector": {"matchLabels": {"app": "f"}}, "clusterPort": 7000, "clientPort": 8000}});
    apply(&clusters, &serde_json::from_value(spec).unwrap()).await;
    let minted = |member: &'static str| {
        let secrets = secrets.clone();
        async move { identity_secrets(&secrets, "f").await.get(member).map(announced_node_id) }
    };
    let f0 = wait_for("f-0 minted", WAIT, || minted("f-0")).await;

    // --- the API server unreachable for 15 s: more than two Lease renewals (6 s Lease)
    relay.cut();
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert!(
        alive(&mut operator),
        "the operator exited during the outage:\n{}",
        operator.log_tail()
    );
    assert!(
        http_get(operator.metrics, "/readyz").await.is_some(),
        "probes stopped answering during the outage"
    );
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", webhook)).await.is_ok(),
        "the webhook stopped listening during the outage"
    );
    let log = std::fs::read_to_string(&operator.log).unwrap();
    assert!(
        log.contains("stopped reconciling"),
        "the outage cost the Lease:\n{}",
        operator.log_tail()
    );
    relay.restore();
    pods.create(&PostParams::default(), &member_pod("f-1", "f", &[]))
        .await
        .unwrap();
    wait_for("f-1 minted once the API server is back", WAIT, || minted("f-1")).await;

    // --- someone else holds the Lease: the controller stops acting until it is free again
    let taken = MicroTime(k8s_openapi::jiff::Timestamp::now());
    let mut lease = leases.get("xlattice-operator").await.unwrap();
    let spec = lease.spec.as_mut().unwrap();
    spec.holder_identity = Some("intruder".into());
    spec.renew_time = Some(taken);
    spec.lease_duration_seconds = Some(10);
    leases
        .replace("xlattice-operator", &PostParams::default(), &lease)
        .await
        .unwrap();
    wait_for("the operator notices it lost the Lease", WAIT, || async {
        let log = std::fs::read_to_string(&operator.log).ok()?;
        (log.matches("stopped reconciling").count() >= 2).then_some(())
    })
    .await;
    pods.create(&PostParams::default(), &member_pod("f-2", "f", &[]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(minted("f-2").await, None, "minted without the Lease");
    assert!(alive(&mut operator), "the operator exited when it lost the Lease");
    wait_for("f-2 minted once the intruder's Lease expired", WAIT, || minted("f-2")).await;
    assert_eq!(minted("f-0").await, Some(f0), "f-0's identity changed");
    let holder = leases
        .get("xlattice-operator")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity;
    assert_eq!(holder.as_deref(), Some(format!("op-{}", operator.metrics).as_str()));
    assert_eq!(pods.get("f-2").await.unwrap().name_any(), "f-2");
    operator.kill();
}

//! Issue 5's benchmark: time from applying an N-member cluster (pods created directly) to
//! all identities minted and Ready, on the real API server, against the time N identities
//! (2N RSA key generations) take alone on all cores of the same machine: the limit.
//!
//!   XLATTICE_KUBECONFIG=/tmp/xlattice-cp/kubeconfig XLATTICE_BENCH_PODS=100 \
//!     cargo test --release -p xlattice-operator --test bench -- --ignored --nocapture

mod support;

use std::{collections::BTreeMap, sync::Arc, time::Duration, time::Instant};

use futures::{stream, StreamExt};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use kube::{api::PostParams, core::ObjectMeta, Api};
use serde_json::json;
use support::*;
use xlattice_operator::XLatticeCluster;
use xlattice_protocol::{Identity, NodeIdBits, RsaBits};

#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: run explicitly with --ignored"]
async fn time_to_ready_vs_raw_key_generation() {
    let Some(path) = kubeconfig_path() else { return };
    let n: usize = std::env::var("XLATTICE_BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);

    // The limit: N identities generated on every core, nothing else.
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(cpus));
    stream::iter(0..n)
        .map(|_| {
            let sem = sem.clone();
            async move {
                let _p = sem.acquire_owned().await.unwrap();
                tokio::task::spawn_blocking(|| Identity::generate(NodeIdBits::B256, RsaBits::B2048).unwrap())
                    .await
                    .unwrap()
            }
        })
        .buffer_unordered(cpus * 2)
        .collect::<Vec<_>>()
        .await;
    let limit = started.elapsed();

    let admin = admin_client(&path).await;
    install_crd(&admin).await;
    let run = suffix();
    let (ns, op_ns) = (format!("xl-bench-{run}"), format!("xl-bop-{run}"));
    create_namespace(&admin, &ns).await;
    let kubeconfig = operator_kubeconfig(&admin, &path, &op_ns, &run).await;
    let operator = Operator::start(&kubeconfig, &op_ns, &run, free_port());
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    wait_for("operator up", Duration::from_secs(30), || async {
        operator.metrics_text().await.map(|_| ())
    })
    .await;

    let started = Instant::now();
    stream::iter(0..n)
        .map(|i| {
            let pods = pods.clone();
            async move {
                let pod = Pod {
                    metadata: ObjectMeta {
                        name: Some(format!("m-{i}")),
                        labels: Some(BTreeMap::from([("app".to_string(), "bench".to_string())])),
                        ..Default::default()
                    },
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "app".into(),
                            image: Some("x".into()),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                pods.create(&PostParams::default(), &pod).await.unwrap();
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let cluster: XLatticeCluster = serde_json::from_value(json!({
        "apiVersion": "xlattice.io/v1alpha1", "kind": "XLatticeCluster",
        "metadata": {"name": "bench"},
        "spec": {"selector": {"matchLabels": {"app": "bench"}}, "clusterPort": 7000, "clientPort": 8000},
    }))
    .unwrap();
    let clusters: Api<XLatticeCluster> = Api::namespaced(admin.clone(), &ns);
    apply(&clusters, &cluster).await;
    wait_for("all minted and Ready", Duration::from_secs(3600), || async {
        let s = clusters.get("bench").await.ok()?.status?;
        let ready = s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
        (ready && s.minted as usize == n).then_some(())
    })
    .await;
    let took = started.elapsed();
    let rss = std::fs::read_to_string(format!("/proc/{}/status", operator.pid()))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l.to_string()))
        .unwrap_or_default();
    eprintln!(
        "BENCH n={n} cpus={cpus}: pods+cluster to Ready {took:?}; raw generation of {n} identities {limit:?}; ratio {:.2}; operator peak {rss}",
        took.as_secs_f64() / limit.as_secs_f64()
    );
    clusters.delete("bench", &Default::default()).await.unwrap();
}

//! Issue 5's benchmark: time from applying an N-member cluster (pods created directly) to
//! all identities minted and Ready, on the real API server, against the time N identities
//! (2N RSA key generations) take alone on all cores of the same machine: the limit.
//!
//!   XLATTICE_KUBECONFIG=/tmp/xlattice-cp/kubeconfig XLATTICE_BENCH_PODS=100 \
//!     cargo test --release -p xlattice-operator --test bench -- --ignored --nocapture

mod support;

use std::{collections::BTreeMap, sync::Arc, time::Duration, time::Instant};

use futures::{stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::{api::PostParams, Api, ResourceExt};
use serde_json::json;
use support::*;
use xlattice_operator::XLatticeCluster;
use xlattice_protocol::{Identity, NodeIdBits, RsaBits};

/// Pods `m-0`..`m-<n-1>` labelled `app=<app>`, 16 created at a time; with `injected`, the
/// annotation the webhook leaves on the pods it injects for that cluster.
async fn create_members(pods: &Api<Pod>, n: usize, app: &str, injected: Option<&str>) {
    stream::iter(0..n)
        .map(|i| {
            let mut pod = member_pod(&format!("m-{i}"), app, &[]);
            pod.metadata.annotations =
                injected.map(|c| BTreeMap::from([("xlattice.io/injected".to_string(), c.to_string())]));
            async move { pods.create(&PostParams::default(), &pod).await.unwrap() }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
}

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
    create_members(&pods, n, "bench", None).await;
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

/// Sum of the samples of `name` in Prometheus text whose labels contain every `needles`.
fn sum_of(text: &str, name: &str, needles: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// What the API server has served and spent so far: (PATCHes of pods, all requests, CPU s).
async fn apiserver_counts(admin: &kube::Client) -> (f64, f64, f64) {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = admin.request_text(request).await.unwrap();
    (
        sum_of(
            &text,
            "apiserver_request_total",
            &["verb=\"PATCH\"", "resource=\"pods\""],
        ),
        sum_of(&text, "apiserver_request_total", &[]),
        sum_of(&text, "process_cpu_seconds_total", &[]),
    )
}

/// Issue 14's cost of revocation in seconds at scale: one member leaves an N-member cluster
/// (default 1,000) whose pods all carry the sidecar annotation, and the operator stamps the
/// new directory version on every survivor. Reports the time until every survivor carries
/// it, the API requests (pod PATCHes and all) and the CPU the API server and the operator
/// spent on it, against one settled minute of the same cluster (the baseline).
///
///   XLATTICE_KUBECONFIG=/tmp/xl-cp/kubeconfig XLATTICE_BENCH_PODS=1000 \
///     cargo test --release -p xlattice-operator --test bench directory_change -- --ignored --nocapture
#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: run explicitly with --ignored"]
async fn directory_change_cost_at_scale() {
    let Some(path) = kubeconfig_path() else { return };
    let n: usize = std::env::var("XLATTICE_BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let admin = admin_client(&path).await;
    install_crd(&admin).await;
    let run = suffix();
    let (ns, op_ns) = (format!("xl-stamp-{run}"), format!("xl-sop-{run}"));
    create_namespace(&admin, &ns).await;
    let kubeconfig = operator_kubeconfig(&admin, &path, &op_ns, &run).await;
    let operator = Operator::start(&kubeconfig, &op_ns, &run, free_port());
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    // As the webhook leaves them: the operator stamps only injected members.
    create_members(&pods, n, "stamp", Some("stamp")).await;
    let cluster: XLatticeCluster = serde_json::from_value(json!({
        "apiVersion": "xlattice.io/v1alpha1", "kind": "XLatticeCluster",
        "metadata": {"name": "stamp"},
        "spec": {"selector": {"matchLabels": {"app": "stamp"}}, "clusterPort": 7000, "clientPort": 8000,
                 "nodeIdBits": 160, "memberGracePeriodSeconds": 3600},
    }))
    .unwrap();
    let clusters: Api<XLatticeCluster> = Api::namespaced(admin.clone(), &ns);
    apply(&clusters, &cluster).await;
    let stamped = |version: String| {
        let pods = pods.clone();
        async move {
            let list = pods.list(&Default::default()).await.ok()?;
            let all = list
                .items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .all(|p| p.annotations().get("xlattice.io/directory-version") == Some(&version));
            all.then_some(())
        }
    };
    // The version of the published directory once it lists `members`.
    let version = |members: usize| {
        let (admin, ns) = (admin.clone(), ns.clone());
        async move {
            let dir = xlattice_operator::directory::fetch(&admin, &ns, "stamp").await.ok()?;
            (dir.members.len() == members).then(|| dir.version())
        }
    };
    let settle = Duration::from_secs(3600);
    wait_for("all minted", settle, || async {
        let s = clusters.get("stamp").await.ok()?.status?;
        (s.minted as usize == n).then_some(())
    })
    .await;
    let v1 = wait_for("the directory of all members", settle, || version(n)).await;
    wait_for("every member stamped", settle, || stamped(v1.clone())).await;

    // The baseline: a settled minute.
    let cpu = |pid: u32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
        (ticks(11) + ticks(12)) / 100.0 // utime + stime, in clock ticks of 1/100 s
    };
    let (p0, r0, c0) = apiserver_counts(&admin).await;
    let o0 = cpu(operator.pid());
    tokio::time::sleep(Duration::from_secs(60)).await;
    let (p1, r1, c1) = apiserver_counts(&admin).await;
    let o1 = cpu(operator.pid());

    // One member leaves.
    let started = Instant::now();
    pods.delete("m-0", &kube::api::DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let v2 = wait_for("a new directory without m-0", settle, || version(n - 1)).await;
    let published = started.elapsed();
    wait_for("every survivor stamped", settle, || stamped(v2.clone())).await;
    let took = started.elapsed();
    let (p2, r2, c2) = apiserver_counts(&admin).await;
    let o2 = cpu(operator.pid());
    eprintln!(
        "BENCH n={n}: directory without m-0 published after {published:?}, all {} survivors stamped after {took:?}; \
         pod PATCHes {:.0}, API requests {:.0}, API server CPU {:.2} s, operator CPU {:.2} s; \
         baseline (a settled minute): pod PATCHes {:.0}, requests {:.0}, API server CPU {:.2} s, operator CPU {:.2} s",
        n - 1,
        p2 - p1,
        r2 - r1,
        c2 - c1,
        o2 - o1,
        p1 - p0,
        r1 - r0,
        c1 - c0,
        o1 - o0,
    );
    clusters.delete("stamp", &Default::default()).await.unwrap();
}

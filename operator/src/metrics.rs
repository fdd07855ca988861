//! Prometheus metrics and the health endpoints, served on one plain-HTTP port.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{extract::State, http::StatusCode, routing::get, Router};
use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::status::DegradedReason;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

/// One XLatticeCluster. Not `namespace`/`cluster`: Prometheus gives a scraped label that
/// collides with a target label (`namespace` of the operator's pod) an `exported_` prefix,
/// and `cluster` is often an external label. The PodMonitor gives the sidecars' series the
/// same two labels, so operator and sidecar series join.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub xlattice_namespace: String,
    pub xlattice_cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DegradedLabels {
    pub xlattice_namespace: String,
    pub xlattice_cluster: String,
    /// One of `DegradedReason`: every reason has a series (0 or 1), so none goes stale.
    pub reason: &'static str,
}

/// The webhook's answers, bounded: what `webhook_requests_total{result}` can say.
pub const INJECTED: &str = "injected";
pub const ADMITTED: &str = "admitted";
pub const DENIED: &str = "denied";
pub const ERROR: &str = "error";
pub const WEBHOOK_RESULTS: [&str; 4] = [INJECTED, ADMITTED, DENIED, ERROR];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabel {
    /// injected, admitted (unchanged), denied (the pod's or its cluster's fault), error
    /// (the webhook's: a malformed review, the clusters unreadable, a bad patch).
    pub result: &'static str,
}

/// What a cluster's status says now, for the cluster gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterGauges {
    pub members: usize,
    pub minted: usize,
    pub without_sidecar: usize,
    pub outdated_sidecar: usize,
    pub ready: bool,
    pub degraded: Option<DegradedReason>,
}

/// The operator's metrics. Cheap to clone pieces of: every metric is an Arc inside.
pub struct Metrics {
    registry: Registry,
    pub reconciles: Counter,
    pub failures: Family<ReasonLabel, Counter>,
    pub duration: Histogram,
    pub minted: Counter,
    pub rotated: Counter,
    pub deleted: Counter,
    /// Members whose identity Secret vanished (deleted by hand?) and was minted anew.
    pub replaced: Counter,
    /// Writes by kind, so "a settled cluster writes nothing" can be checked from outside.
    pub writes: Family<KindLabel, Counter>,
    /// Per cluster, as its status last said (set by the leader only, cleared when it loses
    /// the Lease, so a former leader reports nothing stale).
    pub cluster_members: Family<ClusterLabels, Gauge>,
    pub cluster_minted: Family<ClusterLabels, Gauge>,
    pub cluster_without_sidecar: Family<ClusterLabels, Gauge>,
    pub cluster_outdated_sidecar: Family<ClusterLabels, Gauge>,
    pub cluster_ready: Family<ClusterLabels, Gauge>,
    pub cluster_degraded: Family<DegradedLabels, Gauge>,
    pub webhook_requests: Family<WebhookLabel, Counter>,
    pub webhook_duration: Histogram,
    /// notAfter of the webhook's serving certificate (Unix seconds): an alert can see a
    /// renewal that keeps failing long before the API server stops trusting the webhook.
    pub webhook_certificate_expiry: Gauge,
    ready: AtomicBool,
}

// === impl Metrics ===

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("xlattice_operator");
        let build_info = Family::<Vec<(&'static str, String)>, Gauge>::default();
        build_info
            .get_or_create(&xlattice_protocol::crypto::build_info_labels(env!("CARGO_PKG_VERSION")))
            .set(1);
        registry.register(
            "build_info",
            "Always 1: the operator's version, its cryptographic module, and whether it runs in FIPS mode",
            build_info,
        );
        let reconciles = Counter::default();
        let failures = Family::<ReasonLabel, Counter>::default();
        let duration = Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]);
        let minted = Counter::default();
        let rotated = Counter::default();
        let deleted = Counter::default();
        let replaced = Counter::default();
        let writes = Family::<KindLabel, Counter>::default();
        let cluster_members = Family::<ClusterLabels, Gauge>::default();
        let cluster_minted = Family::<ClusterLabels, Gauge>::default();
        let cluster_without_sidecar = Family::<ClusterLabels, Gauge>::default();
        let cluster_outdated_sidecar = Family::<ClusterLabels, Gauge>::default();
        let cluster_ready = Family::<ClusterLabels, Gauge>::default();
        let cluster_degraded = Family::<DegradedLabels, Gauge>::default();
        let webhook_requests = Family::<WebhookLabel, Counter>::default();
        // Every result exists at 0 from the start: a first error is then an increase that
        // rate() and increase() see, not a series that appears (which they miss).
        for result in WEBHOOK_RESULTS {
            let _ = webhook_requests.get_or_create(&WebhookLabel { result });
        }
        let webhook_duration = Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        let webhook_certificate_expiry = Gauge::default();
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register("reconcile_failures", "Reconciles failed, by reason", failures.clone());
        registry.register("reconcile_duration_seconds", "Time a reconcile took", duration.clone());
        registry.register("identities_minted", "Identities minted into Secrets", minted.clone());
        registry.register(
            "identities_rotated",
            "Identities whose keys were rotated (same NodeID)",
            rotated.clone(),
        );
        registry.register(
            "identities_deleted",
            "Identities deleted after their grace period",
            deleted.clone(),
        );
        registry.register(
            "identities_replaced",
            "Published members whose identity Secret vanished and who got a new identity (new NodeID)",
            replaced.clone(),
        );
        registry.register(
            "writes",
            "Write requests issued by the reconciler, by kind",
            writes.clone(),
        );
        registry.register(
            "cluster_members",
            "Pods the cluster's selector matches (status.members)",
            cluster_members.clone(),
        );
        registry.register(
            "cluster_members_minted",
            "Members with an identity (status.minted)",
            cluster_minted.clone(),
        );
        registry.register(
            "cluster_members_without_sidecar",
            "Members running without the sidecar (status.podsWithoutSidecar)",
            cluster_without_sidecar.clone(),
        );
        registry.register(
            "cluster_members_outdated_sidecar",
            "Members running a sidecar made for an earlier spec (status.podsWithOutdatedSidecar)",
            cluster_outdated_sidecar.clone(),
        );
        registry.register(
            "cluster_ready",
            "1 when the cluster's Ready condition is True",
            cluster_ready.clone(),
        );
        registry.register(
            "cluster_degraded",
            "1 for the reason of the cluster's Degraded=True condition, 0 for the other reasons",
            cluster_degraded.clone(),
        );
        registry.register(
            "webhook_requests",
            "Admission requests answered, by result (injected, admitted, denied, error)",
            webhook_requests.clone(),
        );
        registry.register(
            "webhook_duration_seconds",
            "Time the webhook took to answer an admission request",
            webhook_duration.clone(),
        );
        registry.register(
            "webhook_certificate_expiry_timestamp_seconds",
            "notAfter of the webhook's serving certificate this replica presents (Unix seconds)",
            webhook_certificate_expiry.clone(),
        );
        Self {
            registry,
            reconciles,
            failures,
            duration,
            minted,
            rotated,
            deleted,
            replaced,
            writes,
            cluster_members,
            cluster_minted,
            cluster_without_sidecar,
            cluster_outdated_sidecar,
            cluster_ready,
            cluster_degraded,
            webhook_requests,
            webhook_duration,
            webhook_certificate_expiry,
            ready: AtomicBool::new(false),
        }
    }
}

impl Metrics {
    pub fn write(&self, kind: &str) {
        self.writes_of(kind, 1);
    }

    pub fn writes_of(&self, kind: &str, count: u64) {
        self.writes
            .get_or_create(&KindLabel { kind: kind.to_string() })
            .inc_by(count);
    }

    pub fn failure(&self, reason: &str) {
        self.failures
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn observe(&self, took: Duration) {
        self.duration.observe(took.as_secs_f64());
    }

    /// Sets the gauges of cluster `namespace/name` to what its status says.
    pub fn cluster(&self, namespace: &str, name: &str, gauges: ClusterGauges) {
        let labels = cluster_labels(namespace, name);
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.cluster_members.get_or_create(&labels).set(count(gauges.members));
        self.cluster_minted.get_or_create(&labels).set(count(gauges.minted));
        self.cluster_without_sidecar
            .get_or_create(&labels)
            .set(count(gauges.without_sidecar));
        self.cluster_outdated_sidecar
            .get_or_create(&labels)
            .set(count(gauges.outdated_sidecar));
        self.cluster_ready.get_or_create(&labels).set(i64::from(gauges.ready));
        for reason in DegradedReason::ALL {
            self.cluster_degraded
                .get_or_create(&degraded_labels(namespace, name, reason))
                .set(i64::from(gauges.degraded == Some(reason)));
        }
    }

    /// Drops the series of a deleted cluster.
    pub fn forget_cluster(&self, namespace: &str, name: &str) {
        let labels = cluster_labels(namespace, name);
        for family in self.cluster_families() {
            family.remove(&labels);
        }
        for reason in DegradedReason::ALL {
            self.cluster_degraded.remove(&degraded_labels(namespace, name, reason));
        }
    }

    /// Drops every cluster's series: this replica no longer reconciles, so they would go stale.
    pub fn forget_clusters(&self) {
        for family in self.cluster_families() {
            family.clear();
        }
        self.cluster_degraded.clear();
    }

    fn cluster_families(&self) -> [&Family<ClusterLabels, Gauge>; 5] {
        [
            &self.cluster_members,
            &self.cluster_minted,
            &self.cluster_without_sidecar,
            &self.cluster_outdated_sidecar,
            &self.cluster_ready,
        ]
    }

    /// `result`: one of WEBHOOK_RESULTS.
    pub fn webhook(&self, result: &'static str, took: Duration) {
        self.webhook_requests.get_or_create(&WebhookLabel { result }).inc();
        self.webhook_duration.observe(took.as_secs_f64());
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

fn cluster_labels(namespace: &str, name: &str) -> ClusterLabels {
    ClusterLabels {
        xlattice_namespace: namespace.to_string(),
        xlattice_cluster: name.to_string(),
    }
}

fn degraded_labels(namespace: &str, name: &str, reason: DegradedReason) -> DegradedLabels {
    DegradedLabels {
        xlattice_namespace: namespace.to_string(),
        xlattice_cluster: name.to_string(),
        reason: reason.as_str(),
    }
}

/// Serves /metrics, /livez and /readyz until the process ends.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(m): State<Arc<Metrics>>| async move { m.render() }),
        )
        .route("/livez", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(m): State<Arc<Metrics>>| async move {
                if m.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "starting")
                }
            }),
        )
        .with_state(metrics);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving metrics and health");
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(metrics: &Metrics, prefix: &str) -> Vec<String> {
        let text = metrics.render();
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn every_webhook_result_is_a_series_from_the_start() {
        let found = lines(&Metrics::default(), "xlattice_operator_webhook_requests_total");
        for result in WEBHOOK_RESULTS {
            let line = format!("xlattice_operator_webhook_requests_total{{result=\"{result}\"}} 0");
            assert!(found.contains(&line), "{line} not in {found:?}");
        }
    }

    #[test]
    fn cluster_gauges_follow_the_status_and_go_with_the_cluster() {
        let metrics = Metrics::default();
        let gauges = ClusterGauges {
            members: 3,
            minted: 2,
            without_sidecar: 1,
            degraded: Some(DegradedReason::MintingFailed),
            ..Default::default()
        };
        metrics.cluster("demo", "store", gauges);
        let labels = r#"{xlattice_namespace="demo",xlattice_cluster="store"}"#;
        for (name, value) in [
            ("cluster_members", 3),
            ("cluster_members_minted", 2),
            ("cluster_members_without_sidecar", 1),
            ("cluster_members_outdated_sidecar", 0),
            ("cluster_ready", 0),
        ] {
            let line = format!("xlattice_operator_{name}{labels} {value}");
            assert_eq!(lines(&metrics, &line), vec![line], "{name}");
        }
        // Every reason has a series, so an alert sees a reason end as well as begin.
        let degraded = lines(&metrics, "xlattice_operator_cluster_degraded{");
        assert_eq!(degraded.len(), DegradedReason::ALL.len());
        assert_eq!(degraded.iter().filter(|l| l.ends_with(" 1")).count(), 1);
        assert!(degraded.contains(
            &r#"xlattice_operator_cluster_degraded{xlattice_namespace="demo",xlattice_cluster="store",reason="MintingFailed"} 1"#
                .to_string()
        ));

        metrics.cluster("demo", "store", ClusterGauges { ready: true, ..gauges });
        assert_eq!(
            lines(&metrics, "xlattice_operator_cluster_ready{"),
            [format!("xlattice_operator_cluster_ready{labels} 1")]
        );
        metrics.cluster("demo", "other", gauges);
        metrics.forget_cluster("demo", "store");
        assert!(lines(&metrics, "xlattice_operator_cluster_")
            .iter()
            .all(|l| l.contains(r#""other""#)));
        metrics.forget_clusters();
        assert!(lines(&metrics, "xlattice_operator_cluster_").is_empty());
    }
}

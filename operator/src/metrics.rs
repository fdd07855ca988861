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
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
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
    ready: AtomicBool,
}

// === impl Metrics ===

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("xlattice_operator");
        let reconciles = Counter::default();
        let failures = Family::<ReasonLabel, Counter>::default();
        let duration = Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]);
        let minted = Counter::default();
        let rotated = Counter::default();
        let deleted = Counter::default();
        let replaced = Counter::default();
        let writes = Family::<KindLabel, Counter>::default();
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

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
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

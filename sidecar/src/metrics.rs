//! Prometheus metrics, rendered in the text exposition format on /metrics.

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    /// cluster, client or outbound.
    pub port: &'static str,
    /// ok, error, or relayed (passed on to the member it was for).
    pub result: &'static str,
    /// Why it failed (HandshakeError::reason, RelayError::reason, or busy: no handshake
    /// slot came free before the deadline), empty otherwise.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PortLabel {
    pub port: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabels {
    pub port: &'static str,
    /// in: from the network peer; out: to it.
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndingLabels {
    pub port: &'static str,
    /// accounting::Ending::label: clean, truncated, forged, bad_length, bad_content_type,
    /// sequence_exhausted, network_error, app_error, idle, revoked, app_unreachable, aborted.
    pub ending: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub port: &'static str,
    /// classical (protocol version 1) or hybrid (version 2, with ML-KEM-768).
    pub version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

impl ResultLabel {
    pub fn ok() -> Self {
        Self { result: "ok" }
    }

    pub fn error() -> Self {
        Self { result: "error" }
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    ])
}

#[derive(Clone)]
pub struct Metrics {
    pub handshakes: Family<HandshakeLabels, Counter>,
    pub handshake_seconds: Family<PortLabel, Histogram, fn() -> Histogram>,
    pub open_sessions: Family<PortLabel, Gauge>,
    pub bytes: Family<BytesLabels, Counter>,
    pub sessions_ended: Family<EndingLabels, Counter>,
    pub session_versions: Family<VersionLabels, Counter>,
    pub refused_connections: Family<PortLabel, Counter>,
    pub accept_pauses: Family<PortLabel, Counter>,
    pub reloads: Family<ResultLabel, Counter>,
    /// Set from the buffer budget when scraped.
    pub buffer_bytes: Gauge,
    /// The budget itself (`--buffer-budget-mib`), so a dashboard or an alert can say how
    /// much of it is used without knowing the pod's flags or memory limit.
    pub buffer_budget_bytes: Gauge,
    /// Seconds the directory served has differed from the version stamped on the pod.
    pub directory_behind_seconds: Gauge,
    /// Unix time at which the directory served was loaded.
    pub directory_loaded_timestamp: Gauge<f64, std::sync::atomic::AtomicU64>,
    registry: std::sync::Arc<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        let handshakes = Family::<HandshakeLabels, Counter>::default();
        let handshake_seconds =
            Family::<PortLabel, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let open_sessions = Family::<PortLabel, Gauge>::default();
        let bytes = Family::<BytesLabels, Counter>::default();
        let sessions_ended = Family::<EndingLabels, Counter>::default();
        let session_versions = Family::<VersionLabels, Counter>::default();
        let refused_connections = Family::<PortLabel, Counter>::default();
        let accept_pauses = Family::<PortLabel, Counter>::default();
        let reloads = Family::<ResultLabel, Counter>::default();
        let buffer_bytes = Gauge::default();
        let buffer_budget_bytes = Gauge::default();
        let directory_behind_seconds = Gauge::default();
        let directory_loaded_timestamp = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        let mut registry = Registry::with_prefix("xlattice_sidecar");
        let build_info = Family::<Vec<(&'static str, String)>, Gauge>::default();
        build_info
            .get_or_create(&xlattice_protocol::crypto::build_info_labels(env!("CARGO_PKG_VERSION")))
            .set(1);
        registry.register(
            "build_info",
            "Always 1: the sidecar's version, its cryptographic module, and whether it runs in FIPS mode",
            build_info,
        );
        registry.register(
            "handshakes",
            "Handshakes by port, result (ok, error, relayed: passed on to the member it was for) and reason",
            handshakes.clone(),
        );
        registry.register(
            "handshake_duration_seconds",
            "Time to complete a handshake",
            handshake_seconds.clone(),
        );
        registry.register("open_sessions", "Sessions open now", open_sessions.clone());
        registry.register(
            "bytes",
            "Plaintext bytes proxied, whatever the session's ending",
            bytes.clone(),
        );
        registry.register(
            "sessions_ended",
            "Sessions ended, by port and how they ended (clean, truncated, forged, idle, ...)",
            sessions_ended.clone(),
        );
        registry.register(
            "session_versions",
            "Sessions opened, by port and handshake version (classical: version 1; hybrid: version 2, post-quantum): postQuantum Required is safe once no classical ones are opened",
            session_versions.clone(),
        );
        registry.register(
            "refused_connections",
            "Connections reset at once because the listener's connection pool was full",
            refused_connections.clone(),
        );
        registry.register(
            "accept_pauses",
            "Times the listener stopped accepting until the end of a 10 ms tick, after 10 refusals within it (a reconnect flood)",
            accept_pauses.clone(),
        );
        registry.register("reloads", "Identity/directory reloads by result", reloads.clone());
        registry.register(
            "buffer_bytes",
            "Buffer bytes all sessions hold now (partial records included), out of the buffer budget",
            buffer_bytes.clone(),
        );
        registry.register(
            "buffer_budget_bytes",
            "The buffer budget in bytes (--buffer-budget-mib): buffers grow past their first record only while buffer_bytes is below it",
            buffer_budget_bytes.clone(),
        );
        registry.register(
            "directory_behind_seconds",
            "Seconds the directory served has differed from the version the operator stamped on this pod (0: current)",
            directory_behind_seconds.clone(),
        );
        registry.register(
            "directory_loaded_timestamp_seconds",
            "Unix time at which the identity and directory served now were loaded",
            directory_loaded_timestamp.clone(),
        );
        Self {
            handshakes,
            handshake_seconds,
            open_sessions,
            bytes,
            sessions_ended,
            session_versions,
            refused_connections,
            accept_pauses,
            reloads,
            buffer_bytes,
            buffer_budget_bytes,
            directory_behind_seconds,
            directory_loaded_timestamp,
            registry: std::sync::Arc::new(registry),
        }
    }
}

impl Metrics {
    /// Counts a session opened on `port` with the handshake `version`.
    pub fn count_version(&self, port: &'static str, version: xlattice_protocol::Version) {
        self.session_versions
            .get_or_create(&VersionLabels {
                port,
                version: version.name(),
            })
            .inc();
    }

    /// Notes that a new identity and directory are being served from now on.
    pub fn loaded_now(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.directory_loaded_timestamp.set(now.as_secs_f64());
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

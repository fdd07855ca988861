//! The chart's monitoring against the metrics the binaries really expose. Both registries
//! (the operator's and the sidecar's) are encoded as Prometheus scrapes them; then every
//! `xlattice_*` name in the Grafana dashboard's queries and in the PrometheusRule must be
//! a sample name of that encoding (a counter is queried as `_total`, a histogram as
//! `_bucket`/`_sum`/`_count`) or a label the series carry, and the metrics table of
//! docs/install.md must list exactly the exposed metrics, each with its type. A metric
//! renamed, misspelt or added without its documentation fails here, not on a dashboard.
//! The sidecar has the operator as a dev-dependency already (tests/injected.rs).

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use xlattice_operator::metrics::{ClusterGauges, Metrics as OperatorMetrics};
use xlattice_sidecar::metrics::Metrics as SidecarMetrics;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/xlattice-operator");
const DOCS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/install.md");

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// What a scrape of both binaries holds.
struct Exposed {
    /// Family name as documented (a counter with `_total`) -> its type.
    families: BTreeMap<String, String>,
    /// Every name a query may use: the samples of each family.
    samples: BTreeSet<String>,
    /// Label names the series carry (with at least one series per family).
    labels: BTreeSet<String>,
}

fn exposed() -> Exposed {
    let operator = OperatorMetrics::default();
    // One series in each labelled family, so their label names show in the encoding.
    operator.cluster("ns", "store", ClusterGauges::default());
    operator.failure("Kube");
    operator.write("Secret");
    operator.webhook("injected", Duration::from_millis(1));
    let sidecar = SidecarMetrics::default();
    use xlattice_sidecar::metrics::{BytesLabels, EndingLabels, HandshakeLabels, PortLabel, ResultLabel};
    let port = PortLabel { port: "cluster" };
    sidecar
        .handshakes
        .get_or_create(&HandshakeLabels {
            port: "cluster",
            result: "error",
            reason: "not_member",
        })
        .inc();
    sidecar.handshake_seconds.get_or_create(&port).observe(0.001);
    sidecar.count_version("cluster", xlattice_protocol::Version::Hybrid);
    sidecar.open_sessions.get_or_create(&port).inc();
    sidecar
        .bytes
        .get_or_create(&BytesLabels {
            port: "cluster",
            direction: "in",
        })
        .inc();
    sidecar
        .sessions_ended
        .get_or_create(&EndingLabels {
            port: "cluster",
            ending: "clean",
        })
        .inc();
    sidecar.refused_connections.get_or_create(&port).inc();
    sidecar.accept_pauses.get_or_create(&port).inc();
    sidecar.reloads.get_or_create(&ResultLabel::ok()).inc();

    let mut exposed = Exposed {
        families: BTreeMap::new(),
        samples: BTreeSet::new(),
        labels: BTreeSet::new(),
    };
    for text in [operator.render(), sidecar.render()] {
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("# TYPE name type");
                let (documented, samples): (String, Vec<String>) = match kind {
                    "counter" => (format!("{name}_total"), vec![format!("{name}_total")]),
                    "histogram" => (
                        name.to_string(),
                        ["_bucket", "_sum", "_count"]
                            .iter()
                            .map(|s| format!("{name}{s}"))
                            .collect(),
                    ),
                    _ => (name.to_string(), vec![name.to_string()]),
                };
                exposed.families.insert(documented, kind.to_string());
                exposed.samples.extend(samples);
            } else if !line.starts_with('#') && !line.is_empty() {
                let name_end = line.find(['{', ' ']).unwrap_or(line.len());
                let name = &line[..name_end];
                assert!(
                    exposed.samples.contains(name),
                    "sample {name} is not one this test derives from its # TYPE line: the encoding's suffix rules changed"
                );
                if let Some(labels) = line[name_end..].strip_prefix('{') {
                    let labels = &labels[..labels.find('}').expect("closing brace")];
                    for pair in labels.split(',') {
                        exposed.labels.insert(pair.split('=').next().unwrap().to_string());
                    }
                }
            }
        }
    }
    assert!(
        exposed.families.len() > 20,
        "only {} metrics exposed?",
        exposed.families.len()
    );
    exposed
}

/// Every `xlattice_[a-z0-9_]+` identifier of `text`.
fn identifiers(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = text[from..].find("xlattice_").map(|i| from + i) {
        let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        let end = at
            + bytes[at..]
                .iter()
                .take_while(|&&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                .count();
        if at == 0 || !word(bytes[at - 1]) {
            found.push(text[at..end].to_string());
        }
        from = end.max(at + 1);
    }
    found
}

/// The identifiers of `text` that are neither a sample nor a label of `exposed`.
fn unknown(text: &str, exposed: &Exposed, labels: &BTreeSet<String>) -> Vec<String> {
    identifiers(text)
        .into_iter()
        .filter(|id| !exposed.samples.contains(id) && !labels.contains(id))
        .collect()
}

/// The labels the PodMonitor gives the sidecars' series (`targetLabel: ...`).
fn pod_monitor_labels() -> BTreeSet<String> {
    read(&format!("{CHART}/templates/podmonitor.yaml"))
        .lines()
        .filter_map(|l| l.trim().strip_prefix("targetLabel:"))
        .map(|l| l.trim().to_string())
        .collect()
}

/// Every label a query may use: the operator's and sidecar's, and the PodMonitor's.
fn known_labels(exposed: &Exposed) -> BTreeSet<String> {
    exposed.labels.union(&pod_monitor_labels()).cloned().collect()
}

#[test]
fn the_sidecar_series_get_the_labels_of_the_operator_cluster_series() {
    let exposed = exposed();
    let added = pod_monitor_labels();
    assert!(
        added.contains("xlattice_namespace") && added.contains("xlattice_cluster"),
        "the PodMonitor must label the sidecars' series as the operator labels its clusters: {added:?}"
    );
    for label in &added {
        assert!(
            exposed.labels.contains(label),
            "PodMonitor label {label} is on no operator series"
        );
    }
}

#[test]
fn every_metric_of_the_dashboard_exists() {
    let exposed = exposed();
    let labels = known_labels(&exposed);
    let text = read(&format!("{CHART}/dashboards/xlattice.json"));
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    // The queries: panel targets' `expr`, template variables' `query`/`definition`.
    fn queries(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("expr" | "query" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                        _ => queries(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| queries(v, out)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    queries(&dashboard, &mut found);
    let exprs: Vec<&String> = found.iter().filter(|q| q.contains("xlattice_")).collect();
    assert!(exprs.len() >= 20, "only {} queries found in the dashboard", exprs.len());
    let mut used = BTreeSet::new();
    for expr in exprs {
        let bad = unknown(expr, &exposed, &labels);
        assert!(
            bad.is_empty(),
            "the dashboard queries {bad:?}, which no binary exposes: {expr}"
        );
        used.extend(identifiers(expr).into_iter().filter(|id| exposed.samples.contains(id)));
    }
    assert!(
        used.iter().any(|m| m.starts_with("xlattice_operator_"))
            && used.iter().any(|m| m.starts_with("xlattice_sidecar_")),
        "the dashboard shows operator and sidecar metrics: {used:?}"
    );
}

#[test]
fn every_metric_of_the_alerts_exists_and_every_alert_is_documented() {
    let exposed = exposed();
    let labels = known_labels(&exposed);
    let text = read(&format!("{CHART}/templates/prometheusrule.yaml"));
    let bad = unknown(&text, &exposed, &labels);
    assert!(
        bad.is_empty(),
        "the PrometheusRule names {bad:?}, which no binary exposes"
    );
    let docs = read(DOCS);
    let alerts: Vec<&str> = text.split("- alert: ").skip(1).collect();
    assert!(alerts.len() >= 6, "only {} alerts", alerts.len());
    for alert in alerts {
        let name = alert.split_whitespace().next().unwrap();
        let expr = alert
            .split_once("expr:")
            .and_then(|(_, rest)| rest.split_once("for:"))
            .map(|(expr, _)| expr)
            .unwrap_or_else(|| panic!("alert {name} has no expr/for"));
        assert!(
            identifiers(expr).iter().any(|id| exposed.samples.contains(id)),
            "alert {name} queries no exposed metric: {expr}"
        );
        assert!(
            docs.contains(&format!("| `{name}` |")),
            "alert {name} is not in docs/install.md's table of alerts"
        );
    }
}

#[test]
fn the_docs_list_every_metric_with_its_type() {
    let exposed = exposed();
    let docs = read(DOCS);
    let mut documented = BTreeMap::new();
    for row in docs.lines().filter(|l| l.starts_with("| `xlattice_")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let name = cells[1].trim_matches('`').to_string();
        let kind = cells[2].to_string();
        assert!(
            documented.insert(name.clone(), kind).is_none(),
            "docs/install.md lists {name} twice"
        );
    }
    let missing: Vec<_> = exposed
        .families
        .keys()
        .filter(|m| !documented.contains_key(*m))
        .collect();
    assert!(
        missing.is_empty(),
        "exposed but not in docs/install.md's metrics table: {missing:?}"
    );
    let stale: Vec<_> = documented
        .keys()
        .filter(|m| !exposed.families.contains_key(*m))
        .collect();
    assert!(
        stale.is_empty(),
        "in docs/install.md's metrics table but not exposed: {stale:?}"
    );
    for (name, kind) in &exposed.families {
        assert_eq!(&documented[name], kind, "docs/install.md gives {name} the wrong type");
    }
}

#[test]
fn identifiers_are_found_whole() {
    assert_eq!(
        identifiers(r#"sum(rate(xlattice_sidecar_bytes_total{xlattice_cluster=~"$c"}[5m])) / my_xlattice_x"#),
        ["xlattice_sidecar_bytes_total", "xlattice_cluster"]
    );
}

//! `kubectl xlattice check`: is the installation healthy? One line per check, a hint for
//! each that fails, a non-zero exit on any failure. `observe` reads (and writes nothing),
//! `judge` decides (pure), `report` prints.

mod at_rest;
mod judge;
mod observe;
mod probe;
mod report;

use clap::ValueEnum;
use kube::Client;

pub use judge::{judge, MIN_VERSION};
pub use observe::{metric_value, observe, ClusterFacts, Observed, OperatorFacts};
pub use probe::PolicyProbe;
pub use report::{Finding, Report, Verdict};

pub const CRD_NAME: &str = "xlatticeclusters.xlattice.io";
/// The sidecar's gauge of how long it has served an older directory than its pod's.
pub const BEHIND_METRIC: &str = "xlattice_sidecar_directory_behind_seconds";

#[derive(Clone, Copy, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(clap::Args)]
pub struct CheckArgs {
    /// Before installing: only the API server's version and features, and whether you may
    /// create what the chart installs.
    #[arg(long)]
    pub pre: bool,
    /// Check the XLatticeClusters of this namespace only (default: every namespace).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Where the operator runs (its pods, Lease and webhook TLS Secret).
    #[arg(long, default_value = "xlattice-system")]
    pub operator_namespace: String,
    /// Label selector of the operator's pods.
    #[arg(long, default_value = "app.kubernetes.io/name=xlattice-operator")]
    pub operator_selector: String,
    /// The operator's leader Lease.
    #[arg(long, default_value = "xlattice-operator")]
    pub lease_name: String,
    /// Also test whether the cluster enforces NetworkPolicy at all: in a temporary namespace,
    /// a pod dials a listening pod, then again once a deny-all policy selects it (deleted
    /// after). Without enforcement the cluster port is open to every pod.
    #[arg(long)]
    pub probe_network_policy: bool,
    /// The probe pods' image (it runs `xlattice probe`); default: the sidecar image the
    /// operator injects, which the nodes already pull.
    #[arg(long)]
    pub probe_image: Option<String>,
    /// Do not read each sidecar's metrics through the API server's pod proxy (one request
    /// per running member; needs `get pods/proxy`).
    #[arg(long)]
    pub skip_metrics: bool,
    #[arg(short, long, value_enum, default_value = "text")]
    pub output: Output,
}

/// Reads, judges and prints; true when nothing failed.
pub async fn run(client: &Client, args: &CheckArgs) -> bool {
    let observed = observe(client, args).await;
    let report = Report::new(judge(&observed, jiff::Timestamp::now()));
    match args.output {
        Output::Text => print!("{}", report.text()),
        Output::Json => println!("{}", report.json()),
    }
    report.success()
}

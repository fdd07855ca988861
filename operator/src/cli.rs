//! The operator's command line, in the library so that what deploys it (the chart, deploy/)
//! can be checked with the parser the binary itself uses (tests/chart.rs).

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};
use k8s_openapi::{api::core::v1::ResourceRequirements, apimachinery::pkg::api::resource::Quantity};

#[derive(Parser)]
#[command(
    name = "xlattice-operator",
    version,
    about = "XLattice cluster operator and sidecar injection webhook"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Print the XLatticeCluster CustomResourceDefinition as YAML.
    Crd,
    /// Run the controller (when leading) and the webhook.
    Run(Box<RunArgs>),
    /// Print a cluster's member directory, all shards merged, for clients outside the
    /// cluster: `xlattice connect --directory FILE` reads it. Uses the kubeconfig.
    Directory(crate::directory::PrintArgs),
}

#[derive(Args)]
pub struct RunArgs {
    /// Namespace the operator runs in: its Lease and webhook TLS Secret live there.
    #[arg(long, env = "POD_NAMESPACE", default_value = "xlattice-system")]
    pub namespace: String,
    /// Identity of this replica in the leader Lease.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Serve only these namespaces (repeat, or comma-separate); none: every namespace. With
    /// a list, the chart binds the operator's ClusterRole in these namespaces only.
    #[arg(long = "watch-namespace", env = "XLATTICE_WATCH_NAMESPACES", value_delimiter = ',')]
    pub watch_namespaces: Vec<String>,
    /// Metrics (/metrics) and probes (/livez, /readyz).
    #[arg(long, env = "XLATTICE_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// HTTPS listen address of the sidecar injection webhook.
    #[arg(long, env = "XLATTICE_WEBHOOK_ADDR", default_value = "0.0.0.0:9443")]
    pub webhook_addr: SocketAddr,
    /// Do not serve the webhook (controller only).
    #[arg(long)]
    pub no_webhook: bool,
    /// Service fronting the webhook: its DNS names go into the certificate.
    #[arg(long, default_value = "xlattice-operator")]
    pub webhook_service: String,
    /// Further certificate SANs (DNS names or IPs).
    #[arg(long = "webhook-san", default_values_t = ["127.0.0.1".to_string(), "localhost".to_string()])]
    pub webhook_sans: Vec<String>,
    /// Life of the webhook's serving certificate, renewed after two thirds of it; its CA
    /// lives ten times as long.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub webhook_cert_days: u32,
    #[arg(long, env = "XLATTICE_SIDECAR_IMAGE", default_value = concat!("ghcr.io/xlattice/xlattice-sidecar:", env!("CARGO_PKG_VERSION")))]
    pub sidecar_image: String,
    #[arg(long, env = "XLATTICE_SIDECAR_PULL_POLICY")]
    pub sidecar_pull_policy: Option<String>,
    #[arg(long, default_value = "10m")]
    pub sidecar_cpu_request: String,
    #[arg(long, default_value = "32Mi")]
    pub sidecar_memory_request: String,
    #[arg(long, default_value = "128Mi")]
    pub sidecar_memory_limit: String,
    /// Elect a leader through a Lease (turn off only when exactly one replica runs).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    #[arg(long, default_value = "xlattice-operator")]
    pub lease_name: String,
    #[arg(long, default_value_t = 15)]
    pub lease_seconds: u64,
    /// Stamp each directory change on the member pods, so the kubelet brings it to their
    /// sidecars at once instead of within its sync period (1 min by default). Turning it off
    /// saves one pod patch per member and change.
    #[arg(long, env = "XLATTICE_REFRESH_MEMBER_PODS", default_value_t = true, action = clap::ArgAction::Set)]
    pub refresh_member_pods: bool,
    /// Honour spec.restartWorkloads (needs get and patch on Deployments and StatefulSets:
    /// the chart binds them only with restartWorkloads.enabled, and passes false without).
    #[arg(long, env = "XLATTICE_RESTART_WORKLOADS", default_value_t = true, action = clap::ArgAction::Set)]
    pub restart_workloads: bool,
    /// Parallel RSA key generations (default: the number of CPUs).
    #[arg(long)]
    pub keygen_threads: Option<usize>,
    /// Log as JSON lines.
    #[arg(long)]
    pub log_json: bool,
    /// Refuse to start unless the AWS-LC FIPS module is in FIPS mode and the TLS provider
    /// (webhook, API server client) is FIPS (an image built with `--features fips`); the
    /// sidecars it injects then refuse to start outside FIPS mode too.
    #[arg(long, env = "XLATTICE_REQUIRE_FIPS")]
    pub require_fips: bool,
}

// === impl ===

impl RunArgs {
    /// What the webhook gives every injected sidecar: requests of CPU and memory, a memory
    /// limit (no CPU limit: throttling a proxy adds latency to every member's traffic).
    pub fn sidecar_resources(&self) -> ResourceRequirements {
        let quantity = |v: &String| Quantity(v.clone());
        ResourceRequirements {
            requests: Some(
                [
                    ("cpu".to_string(), quantity(&self.sidecar_cpu_request)),
                    ("memory".to_string(), quantity(&self.sidecar_memory_request)),
                ]
                .into(),
            ),
            limits: Some([("memory".to_string(), quantity(&self.sidecar_memory_limit))].into()),
            ..Default::default()
        }
    }
}

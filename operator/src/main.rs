//! `xlattice-operator`: `run` wires the webhook, the metrics, leader election and the
//! controller; `crd` and `directory` are one-shot commands.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use clap::{Args, Parser, Subcommand};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{
    runtime::events::{Recorder, Reporter},
    Client,
};
use tracing::{error, info, warn};
use xlattice_operator::{
    controller, crd_yaml,
    leader::LeaseLock,
    metrics::{self, Metrics},
    reconcile::Context,
    scope::Scope,
    webhook::{certs, inject::Injection, server},
};

#[derive(Parser)]
#[command(
    name = "xlattice-operator",
    version,
    about = "XLattice cluster operator and sidecar injection webhook"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the XLatticeCluster CustomResourceDefinition as YAML.
    Crd,
    /// Run the controller (when leading) and the webhook.
    Run(Box<RunArgs>),
    /// Print a cluster's member directory, all shards merged, for clients outside the
    /// cluster: `xlattice connect --directory FILE` reads it. Uses the kubeconfig.
    Directory(xlattice_operator::directory::PrintArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Namespace the operator runs in: its Lease and webhook TLS Secret live there.
    #[arg(long, env = "POD_NAMESPACE", default_value = "xlattice-system")]
    namespace: String,
    /// Identity of this replica in the leader Lease.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// Serve only these namespaces (repeat, or comma-separate); none: every namespace. With
    /// a list, the chart binds the operator's ClusterRole in these namespaces only.
    #[arg(long = "watch-namespace", env = "XLATTICE_WATCH_NAMESPACES", value_delimiter = ',')]
    watch_namespaces: Vec<String>,
    /// Metrics (/metrics) and probes (/livez, /readyz).
    #[arg(long, env = "XLATTICE_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// HTTPS listen address of the sidecar injection webhook.
    #[arg(long, env = "XLATTICE_WEBHOOK_ADDR", default_value = "0.0.0.0:9443")]
    webhook_addr: SocketAddr,
    /// Do not serve the webhook (controller only).
    #[arg(long)]
    no_webhook: bool,
    /// Service fronting the webhook: its DNS names go into the certificate.
    #[arg(long, default_value = "xlattice-operator")]
    webhook_service: String,
    /// Further certificate SANs (DNS names or IPs).
    #[arg(long = "webhook-san", default_values_t = ["127.0.0.1".to_string(), "localhost".to_string()])]
    webhook_sans: Vec<String>,
    /// Life of the webhook's serving certificate, renewed after two thirds of it; its CA
    /// lives ten times as long.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
    webhook_cert_days: u32,
    #[arg(long, env = "XLATTICE_SIDECAR_IMAGE", default_value = concat!("ghcr.io/xlattice/xlattice-sidecar:", env!("CARGO_PKG_VERSION")))]
    sidecar_image: String,
    #[arg(long, env = "XLATTICE_SIDECAR_PULL_POLICY")]
    sidecar_pull_policy: Option<String>,
    #[arg(long, default_value = "10m")]
    sidecar_cpu_request: String,
    #[arg(long, default_value = "32Mi")]
    sidecar_memory_request: String,
    #[arg(long, default_value = "128Mi")]
    sidecar_memory_limit: String,
    /// Elect a leader through a Lease (turn off only when exactly one replica runs).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    #[arg(long, default_value = "xlattice-operator")]
    lease_name: String,
    #[arg(long, default_value_t = 15)]
    lease_seconds: u64,
    /// Stamp each directory change on the member pods, so the kubelet brings it to their
    /// sidecars at once instead of within its sync period (1 min by default). Turning it off
    /// saves one pod patch per member and change.
    #[arg(long, env = "XLATTICE_REFRESH_MEMBER_PODS", default_value_t = true, action = clap::ArgAction::Set)]
    refresh_member_pods: bool,
    /// Honour spec.restartWorkloads (needs get and patch on Deployments and StatefulSets:
    /// the chart binds them only with restartWorkloads.enabled, and passes false without).
    #[arg(long, env = "XLATTICE_RESTART_WORKLOADS", default_value_t = true, action = clap::ArgAction::Set)]
    restart_workloads: bool,
    /// Parallel RSA key generations (default: the number of CPUs).
    #[arg(long)]
    keygen_threads: Option<usize>,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
    /// Refuse to start unless the AWS-LC FIPS module is in FIPS mode and the TLS provider
    /// (webhook, API server client) is FIPS (an image built with `--features fips`); the
    /// sidecars it injects then refuse to start outside FIPS mode too.
    #[arg(long, env = "XLATTICE_REQUIRE_FIPS")]
    require_fips: bool,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", crd_yaml());
            std::process::ExitCode::SUCCESS
        }
        Command::Directory(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            match runtime.block_on(print_directory(&args)) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("xlattice-operator directory {}: {e}", args.cluster);
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::Run(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            match runtime.block_on(run(*args)) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    error!(error = %e, "exiting");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}

async fn print_directory(args: &xlattice_operator::directory::PrintArgs) -> Result<(), Box<dyn std::error::Error>> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let client = Client::try_default().await?;
    print!("{}", xlattice_operator::directory::printed(&client, args).await?);
    Ok(())
}

async fn run(args: RunArgs) -> Result<(), Box<dyn std::error::Error>> {
    init_tracing(args.log_json);
    xlattice_protocol::crypto::require_fips(args.require_fips)?;
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // kube's ClientConfig::builder() and the webhook both use this provider: with rustls/fips
    // it offers only approved suites and groups, and .fips() says so.
    let tls_fips = rustls::crypto::CryptoProvider::get_default().is_some_and(|p| p.fips());
    if args.require_fips && !tls_fips {
        return Err("FIPS mode was required but the TLS provider is not FIPS".into());
    }
    info!(crypto = %xlattice_protocol::crypto::describe(), tls_fips, "starting");
    let client = Client::try_default().await?;
    let scope = Scope::from_flags(&args.watch_namespaces);
    info!(?scope, "serving");
    let metrics = Arc::new(Metrics::default());
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);

    tokio::spawn({
        let metrics = metrics.clone();
        let addr = args.metrics_addr;
        async move {
            if let Err(error) = metrics::serve(addr, metrics).await {
                error!(%error, "metrics server stopped");
            }
        }
    });

    if !args.no_webhook {
        let mut sans = vec![
            format!("{}.{}.svc", args.webhook_service, args.namespace),
            format!("{}.{}.svc.cluster.local", args.webhook_service, args.namespace),
        ];
        sans.extend(args.webhook_sans.iter().cloned());
        let lifetimes = certs::Lifetimes::days(args.webhook_cert_days);
        let tls = certs::ensure_secret(client.clone(), &args.namespace, &sans, lifetimes).await?;
        let (tls_tx, tls_rx) = tokio::sync::watch::channel(tls);
        tokio::spawn(certs::keep_renewed(
            client.clone(),
            args.namespace.clone(),
            sans,
            lifetimes,
            tls_tx,
        ));
        let resources = k8s_openapi::api::core::v1::ResourceRequirements {
            requests: Some(
                [
                    ("cpu", &args.sidecar_cpu_request),
                    ("memory", &args.sidecar_memory_request),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), Quantity(v.clone())))
                .collect(),
            ),
            limits: Some([("memory".to_string(), Quantity(args.sidecar_memory_limit.clone()))].into()),
            ..Default::default()
        };
        let config = Injection {
            image: args.sidecar_image.clone(),
            pull_policy: args.sidecar_pull_policy.clone(),
            resources,
            require_fips: args.require_fips,
        };
        // The webhook configuration may be installed after the operator starts (or be
        // reset by a chart upgrade): keep its caBundle right.
        tokio::spawn({
            let (client, tls) = (client.clone(), tls_rx.clone());
            async move {
                loop {
                    let ca = tls.borrow().ca_pem.clone();
                    match certs::patch_ca_bundle(client.clone(), &ca).await {
                        Ok(true) => {}
                        Ok(false) => info!(
                            configuration = certs::WEBHOOK_CONFIGURATION,
                            "webhook configuration not found yet"
                        ),
                        Err(error) => warn!(%error, "writing the caBundle failed"),
                    }
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        });
        tokio::spawn({
            let (client, addr, scope, metrics) = (client.clone(), args.webhook_addr, scope.clone(), metrics.clone());
            async move {
                if let Err(error) = server::serve(addr, tls_rx, client, config, scope, metrics).await {
                    error!(%error, "webhook server stopped");
                }
            }
        });
    }
    metrics.set_ready();

    let holder = args.pod_name.clone().unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "xlattice-operator".into());
        format!("{host}-{}", std::process::id())
    });
    let reporter = Reporter {
        controller: "xlattice-operator".into(),
        instance: Some(holder.clone()),
    };
    let mut ctx = Context::new(
        client.clone(),
        Recorder::new(client.clone(), reporter),
        metrics.clone(),
        args.keygen_threads.unwrap_or(cpus),
    );
    ctx.refresh_member_pods = args.refresh_member_pods;
    ctx.restart_workloads = args.restart_workloads;
    let ctx = Arc::new(ctx);
    if !args.leader_elect {
        controller::run(ctx, &scope).await;
        return Ok(());
    }
    let lock = LeaseLock::new(
        client,
        &args.namespace,
        &args.lease_name,
        holder,
        Duration::from_secs(args.lease_seconds),
    );
    // Losing the Lease (to another replica, or by an API server away for longer than it
    // lasts) stops the controller, not the process: the webhook and the probes keep
    // serving, and the controller starts afresh once this replica leads again.
    loop {
        // A standby replica exits at once on SIGTERM; a leader drains its reconciles first
        // (the controller's own signal handling) and hands the Lease over.
        tokio::select! {
            () = lock.acquire() => {}
            () = terminated() => return Ok(()),
        }
        tokio::select! {
            () = controller::run(ctx.clone(), &scope) => {
                lock.release().await;
                return Ok(());
            }
            lost = lock.hold() => {
                metrics.failure(lost.metric_label());
                metrics.forget_clusters();
                warn!(error = %lost, "lost the leader Lease: stopped reconciling until this replica leads again");
            }
        }
    }
}

/// SIGTERM (the kubelet stopping the pod) or Ctrl-C.
async fn terminated() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            warn!(%error, "cannot watch for SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn init_tracing(json: bool) {
    use tracing_subscriber::{fmt, EnvFilter};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn,hyper=warn"));
    if json {
        fmt().json().with_writer(std::io::stderr).with_env_filter(filter).init();
    } else {
        // Colours only on a terminal: container logs are files, and escapes break grep.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        fmt()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .with_env_filter(filter)
            .init();
    }
}

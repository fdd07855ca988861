//! `xlattice-operator`: `run` wires the webhook, the metrics, leader election and the
//! controller; `crd` and `directory` are one-shot commands.

use std::{sync::Arc, time::Duration};

use clap::Parser;
use kube::{
    runtime::events::{Recorder, Reporter},
    Client,
};
use tracing::{error, info, warn};
use xlattice_operator::{
    access::IdentityAccess,
    cli::{Cli, Command, RunArgs},
    controller, crd_yaml,
    leader::LeaseLock,
    metrics::{self, Metrics},
    reconcile::Context,
    scope::Scope,
    webhook::{certs, inject::Injection, server},
};

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
        let config = Injection {
            image: args.sidecar_image.clone(),
            pull_policy: args.sidecar_pull_policy.clone(),
            resources: args.sidecar_resources(),
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
    if matches!(scope, Scope::All) {
        ctx.access = IdentityAccess::discover(&client).await?;
    }
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

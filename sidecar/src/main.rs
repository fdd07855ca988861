//! `xlattice run` is the sidecar; `xlattice connect` is the client CLI.

use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use xlattice_protocol::{DirectoryIndex, Identity, MemberDirectory};
use xlattice_sidecar::cli::{Cli, Command, ConnectArgs, KeygenArgs};

fn keygen(args: KeygenArgs) -> Result<(), String> {
    if args.out.join(xlattice_protocol::identity::NODE_ID_FILE).exists() {
        return Err(format!(
            "{}: already holds an identity; refusing to replace it",
            args.out.display()
        ));
    }
    let node_id_bits = xlattice_protocol::NodeIdBits::try_from(args.node_id_bits).map_err(|e| e.to_string())?;
    let rsa_bits = xlattice_protocol::RsaBits::try_from(args.rsa_bits).map_err(|e| e.to_string())?;
    let identity = Identity::generate(node_id_bits, rsa_bits).map_err(|e| e.to_string())?;
    identity.save_dir(&args.out).map_err(|e| e.to_string())?;
    println!("{}", identity.node_id);
    Ok(())
}

fn init_tracing() {
    use tracing_subscriber::{fmt, EnvFilter};
    let filter = EnvFilter::try_from_env("XLATTICE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: container logs are files, and escapes break grep.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    if std::env::var("XLATTICE_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal(stop: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutdown requested");
    stop.cancel();
}

async fn connect(args: ConnectArgs) -> Result<(), String> {
    let directory: DirectoryIndex = MemberDirectory::read_path(&args.directory)
        .and_then(|d| d.index())
        .map_err(|e| format!("{}: {e}", args.directory.display()))?;
    xlattice_sidecar::connect::to_stdio(&directory, &args.session).await
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = xlattice_sidecar::config::worker_threads() {
        builder.worker_threads(n);
    }
    let runtime = builder.enable_all().build().expect("tokio runtime");
    let outcome = runtime.block_on(async move {
        match cli.command {
            Command::Run(config) => {
                let stop = CancellationToken::new();
                tokio::spawn(shutdown_signal(stop.clone()));
                xlattice_sidecar::run(*config, stop).await.map_err(|e| e.to_string())
            }
            Command::Connect(args) => connect(args).await,
            Command::Keygen(args) => keygen(args),
            Command::Probe(command) => xlattice_sidecar::probe::run(command).await,
            Command::Version => {
                println!(
                    "xlattice {}\n{}",
                    env!("CARGO_PKG_VERSION"),
                    xlattice_protocol::crypto::describe()
                );
                Ok(())
            }
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xlattice: {message}");
            ExitCode::FAILURE
        }
    }
}

//! `kubectl-xlattice` (run by kubectl as `kubectl xlattice ...`): `check`, `directory`,
//! `connect`. Reads the kubeconfig as kubectl does (KUBECONFIG, or ~/.kube/config).

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use kube::{
    config::{KubeConfigOptions, Kubeconfig},
    Client, Config,
};
use xlattice_cli::check::{self, CheckArgs};
use xlattice_sidecar::cli::SessionArgs;

#[derive(Parser)]
#[command(
    name = "kubectl xlattice",
    version,
    about = "Check an XLattice installation and reach its clusters"
)]
struct Cli {
    /// The kubeconfig (default: KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: its current context).
    #[arg(long, global = true)]
    context: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Is the installation healthy? One line per check; exits 1 if any failed.
    Check(CheckArgs),
    /// Print a cluster's member directory (all shards merged): what `xlattice connect
    /// --directory` reads.
    Directory(xlattice_operator::directory::PrintArgs),
    /// Open a session with a member of a cluster, joined to stdin/stdout; the directory
    /// comes from the API server.
    Connect {
        /// The XLatticeCluster.
        cluster: String,
        #[command(flatten)]
        session: SessionArgs,
        /// Its namespace; the kubeconfig's by default.
        #[arg(short, long)]
        namespace: Option<String>,
    },
}

async fn client(cli: &Cli) -> Result<Client, String> {
    let options = KubeConfigOptions {
        context: cli.context.clone(),
        ..Default::default()
    };
    let config = match &cli.kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path).map_err(|e| format!("{}: {e}", path.display()))?;
            Config::from_custom_kubeconfig(file, &options).await
        }
        None => Config::from_kubeconfig(&options).await,
    }
    .map_err(|e| format!("kubeconfig: {e}"))?;
    Client::try_from(config).map_err(|e| e.to_string())
}

/// The merged directory of `cluster`, in `namespace` or the kubeconfig's.
async fn directory(
    client: &Client,
    namespace: Option<&str>,
    cluster: &str,
) -> Result<xlattice_protocol::MemberDirectory, String> {
    let namespace = namespace.unwrap_or(client.default_namespace());
    xlattice_operator::directory::fetch_published(client, namespace, cluster)
        .await
        .map_err(|e| e.to_string())
}

async fn execute(cli: Cli) -> Result<bool, String> {
    // kube's TLS runs on rustls; aws-lc-rs is the one provider this project uses.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let client = client(&cli).await?;
    match cli.command {
        Command::Check(args) => Ok(check::run(&client, &args).await),
        Command::Directory(args) => {
            let text = xlattice_operator::directory::printed(&client, &args).await;
            print!("{}", text.map_err(|e| e.to_string())?);
            Ok(true)
        }
        Command::Connect {
            cluster,
            session,
            namespace,
        } => {
            let dir = directory(&client, namespace.as_deref(), &cluster).await?;
            let index = dir.index().map_err(|e| format!("directory of {cluster}: {e}"))?;
            xlattice_sidecar::connect::to_stdio(&index, &session).await?;
            Ok(true)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(execute(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("kubectl xlattice: {message}");
            // 2: the command could not run at all, as opposed to checks that failed (1).
            ExitCode::from(2)
        }
    }
}

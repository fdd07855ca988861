//! The `xlattice` command line, in the library so that tests parse exactly what the binary
//! parses (`tests/injected.rs` checks the webhook's arguments with it).

use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{parse_duration, SidecarConfig};

#[derive(Parser)]
#[command(name = "xlattice", version, about = "XLattice cluster sidecar and client")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the sidecar: serve the cluster and client ports, proxy to the app.
    Run(Box<SidecarConfig>),
    /// Open a session with a member and connect it to stdin/stdout.
    Connect(ConnectArgs),
    /// Mint an identity into a directory (the layout of the operator's Secrets).
    Keygen(KeygenArgs),
    /// A TCP listener or dialer, for `kubectl xlattice check --probe-network-policy`.
    #[command(subcommand)]
    Probe(crate::probe::ProbeCommand),
    /// Print the version and the cryptographic module (FIPS or not) this binary runs.
    Version,
}

#[derive(clap::Args)]
pub struct KeygenArgs {
    /// Directory to write node-id, sk.pem and ck.pem into (created, files mode 0600).
    #[arg(long)]
    pub out: PathBuf,
    /// 160 or 256.
    #[arg(long, default_value_t = 256)]
    pub node_id_bits: u16,
    /// 2048, 3072 or 4096.
    #[arg(long, default_value_t = 2048)]
    pub rsa_bits: usize,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Port {
    Client,
    Cluster,
}

#[derive(clap::Args)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub session: SessionArgs,
    /// The member directory (YAML or JSON), e.g. from `kubectl xlattice directory <cluster>`;
    /// or a folder whose *.yaml/*.json files are parts of it.
    #[arg(long, env = "XLATTICE_DIRECTORY")]
    pub directory: PathBuf,
}

/// Which member to open a session with, and how: shared by `xlattice connect` (directory
/// from a file) and `kubectl xlattice connect` (directory from the API server).
#[derive(clap::Args)]
pub struct SessionArgs {
    /// The member: its NodeID (hex) or its name.
    pub member: String,
    /// Which port to open the session on.
    #[arg(long, value_enum, default_value = "client")]
    pub port: Port,
    /// host:port to dial instead of the member's endpoint in the directory.
    #[arg(long)]
    pub address: Option<String>,
    /// Own identity directory; needed for the cluster port.
    #[arg(long)]
    pub identity_dir: Option<PathBuf>,
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub timeout: Duration,
    /// Handshake versions: Preferred (hybrid post-quantum first, classical with a member
    /// that speaks only that), Required (hybrid only), Disabled (classical only).
    #[arg(long, default_value = "Preferred")]
    pub post_quantum: xlattice_protocol::PostQuantum,
}

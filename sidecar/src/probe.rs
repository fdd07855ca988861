//! `xlattice probe`: a bare TCP listener and a dialer, so that `kubectl xlattice check
//! --probe-network-policy` can test the pod network with the one image every node that
//! runs members already pulls. Nothing here speaks the XLattice protocol.

use std::{net::SocketAddr, time::Duration};

use clap::{Subcommand, ValueEnum};
use tokio::net::{TcpListener, TcpStream};

use crate::config::parse_duration;

#[derive(Subcommand)]
pub enum ProbeCommand {
    /// Accept TCP connections on the port and close each at once, until killed.
    Listen {
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
    /// Dial until the outcome is the expected one (exit 0) or `--within` has passed (exit 1).
    Dial(DialArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
pub enum Outcome {
    /// The TCP handshake completed.
    Open,
    /// Refused, reset or unanswered.
    Blocked,
}

#[derive(clap::Args)]
pub struct DialArgs {
    pub address: SocketAddr,
    #[arg(long, value_enum)]
    pub expect: Outcome,
    /// How long the expected outcome may take (a network policy is programmed a little
    /// after it is created).
    #[arg(long, value_parser = parse_duration, default_value = "20s")]
    pub within: Duration,
    /// Each attempt's deadline: past it, the port counts as blocked.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub timeout: Duration,
}

pub async fn run(command: ProbeCommand) -> Result<(), String> {
    match command {
        ProbeCommand::Listen { port } => listen(port).await,
        ProbeCommand::Dial(args) => dial(&args).await,
    }
}

async fn listen(port: u16) -> Result<(), String> {
    let listener = TcpListener::bind(("0.0.0.0", port))
        .await
        .map_err(|e| format!("listen on {port}: {e}"))?;
    println!("listening on {port}");
    loop {
        // Dropped at once: the dialer only needs the handshake to complete.
        let _ = listener.accept().await;
    }
}

/// One attempt.
pub async fn attempt(address: SocketAddr, timeout: Duration) -> Outcome {
    match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
        Ok(Ok(_)) => Outcome::Open,
        _ => Outcome::Blocked,
    }
}

async fn dial(args: &DialArgs) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + args.within;
    loop {
        let outcome = attempt(args.address, args.timeout).await;
        println!("{}: {outcome:?}", args.address);
        if outcome == args.expect {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("{}: still {outcome:?} after {:?}", args.address, args.within));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

//! The XLattice sidecar: gives a pod its cluster identity on the wire.
//!
//! - `runtime`: what every task shares (`Runtime`), and the client port's own runtime
//! - `admission`: each listener's connection pool and handshake slots, one accept loop
//! - `accounting`: the guard that counts each session's bytes and ending; refusals
//! - `inbound`: the cluster and client ports (handshake, then plaintext to the app)
//! - `outbound`: the loopback CONNECT listener the app uses to reach its peers
//! - `proxy`: the byte pump with an idle timeout and no buffers while quiet
//! - `memory`: gives what a flood freed back to the system
//! - `state`: identity and directory, reloaded from the mounted files
//! - `admin`: probes and Prometheus metrics

pub mod accounting;
pub mod admin;
pub mod admission;
pub mod cli;
pub mod config;
pub mod connect;
pub mod inbound;
pub mod memory;
pub mod metrics;
pub mod outbound;
pub mod probe;
pub mod proxy;
pub mod relay;
pub mod runtime;
pub mod state;

use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use xlattice_protocol::PortKind;

pub use config::SidecarConfig;
pub use runtime::Runtime;
use state::{Loaded, Sources};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Fips(#[from] xlattice_protocol::crypto::FipsNotInForce),
    #[error("cannot start the client port's runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Runs until `stop` is cancelled, then drains open sessions for up to the drain timeout.
pub async fn run(config: SidecarConfig, stop: CancellationToken) -> Result<(), RunError> {
    // Before anything listens: a pod that asked for FIPS never serves without it.
    xlattice_protocol::crypto::require_fips(config.require_fips)?;
    tracing::info!(crypto = %xlattice_protocol::crypto::describe(), "starting");
    let sources = Sources {
        identity_dir: config.identity_dir.clone(),
        directory: config.directory.clone(),
        expected_version: config.expected_directory_version.clone(),
    };
    let metrics = metrics::Metrics::default();

    // Admin first, so probes answer (not ready) while the identity is still missing.
    let admin = bind(config.admin_listen).await?;
    let Some(initial) = first_load(&sources, &stop).await else {
        return Ok(());
    };
    metrics.loaded_now();
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(initial));
    let listeners = Listeners::bind(&config).await?;
    let client_rt = runtime::client_runtime().map_err(RunError::Runtime)?;
    let rt = Arc::new(Runtime::new(config, rx, metrics.clone()));

    let accepting = stop.child_token();
    let background = CancellationToken::new();
    let servers = listeners.serve(&rt, &client_rt, &accepting);
    let helpers = [
        tokio::spawn(admin::serve(admin, rt.clone(), background.clone())),
        tokio::spawn(sources.watch(tx, rt.config.reload_interval, metrics, background.clone())),
        tokio::spawn(memory::trim_after_floods(rt.clone(), background.clone())),
    ];
    rt.ready.store(true, Ordering::Relaxed);
    tracing::info!(
        cluster_port = rt.config.cluster_port,
        client_port = rt.config.client_port,
        connect = %rt.config.connect_listen,
        admin = %rt.config.admin_listen,
        buffer_budget_mib = rt.config.buffer_budget_bytes() >> 20,
        "sidecar ready"
    );

    stop.cancelled().await;
    rt.ready.store(false, Ordering::Relaxed);
    drain(&rt, servers).await;
    background.cancel();
    for helper in helpers {
        let _ = helper.await;
    }
    Ok(())
}

/// The identity and directory, retried every second until they are mounted; None when
/// stopped first.
async fn first_load(sources: &Sources, stop: &CancellationToken) -> Option<Loaded> {
    loop {
        match sources.load() {
            Ok(loaded) => {
                tracing::info!(node_id = %loaded.identity.node_id, members = loaded.directory.len(), cluster = loaded.directory.cluster(), "identity loaded");
                return Some(loaded);
            }
            Err(error) => {
                tracing::warn!(%error, "waiting for the identity and directory");
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

/// Waits for the servers to stop accepting, then for open sessions up to the drain timeout.
async fn drain(rt: &Runtime, servers: [JoinHandle<()>; 3]) {
    for server in servers {
        let _ = server.await;
    }
    rt.tasks.close();
    tracing::info!(open = rt.tasks.len(), timeout = ?rt.config.drain_timeout, "draining sessions");
    if tokio::time::timeout(rt.config.drain_timeout, rt.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = rt.tasks.len(),
            "drain timeout reached; closing the remaining sessions"
        );
    }
}

/// The three ports sessions arrive on, bound before anything is served.
struct Listeners {
    cluster: TcpListener,
    /// Bound here, registered with the client runtime's reactor when it starts serving.
    client: std::net::TcpListener,
    connect: TcpListener,
}

// === impl Listeners ===

impl Listeners {
    async fn bind(config: &SidecarConfig) -> Result<Self, RunError> {
        let host = config.listen_host;
        let client_addr = (host, config.client_port).into();
        Ok(Listeners {
            cluster: bind((host, config.cluster_port).into()).await?,
            client: bind(client_addr).await?.into_std().map_err(|source| RunError::Bind {
                addr: client_addr,
                source,
            })?,
            connect: bind(config.connect_listen).await?,
        })
    }

    /// The cluster port and the outbound listener on this runtime, the client port on its own.
    fn serve(
        self,
        rt: &Arc<Runtime>,
        client_rt: &runtime::ClientRuntime,
        accepting: &CancellationToken,
    ) -> [JoinHandle<()>; 3] {
        let client = self.client;
        [
            tokio::spawn(inbound::serve(
                self.cluster,
                PortKind::Cluster,
                rt.clone(),
                accepting.clone(),
            )),
            client_rt.handle().spawn({
                let (rt, accepting) = (rt.clone(), accepting.clone());
                async move {
                    let client = TcpListener::from_std(client).expect("a listener from the sidecar's own bind");
                    inbound::serve(client, PortKind::Client, rt, accepting).await
                }
            }),
            tokio::spawn(outbound::serve(self.connect, rt.clone(), accepting.clone())),
        ]
    }
}

async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind { addr, source })
}

//! The XLattice sidecar: gives a pod its cluster identity on the wire.
//!
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
pub mod state;

use std::{
    sync::{atomic::AtomicBool, atomic::Ordering, Arc},
    time::Duration,
};

use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use xlattice_protocol::{BufferBudget, PortKind, ReplayGuard};

pub use config::SidecarConfig;
use state::{Shared, Sources};

/// What every task of a running sidecar shares.
pub struct Runtime {
    pub config: SidecarConfig,
    pub shared: Shared,
    /// Each listener's connection pool and handshake slots.
    pub gates: admission::Gates,
    /// Shared by every session's buffers (`SidecarConfig::buffer_budget_bytes`).
    pub buffers: Arc<BufferBudget>,
    pub tasks: TaskTracker,
    pub ready: AtomicBool,
}

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

/// The client port runs on a runtime of its own: a flood of outsiders fills that runtime's
/// run queue, never the one where members' handshakes and sessions and the application's
/// outbound sessions wait. Its threads also run at a lower priority (`client_nice`), so
/// when both runtimes want the CPU the kernel runs the members' threads first
/// (sidecar/benches/attacks.rs measures it).
fn client_runtime() -> Result<ClientRuntime, RunError> {
    let nice = config::client_nice();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        .thread_name("xlattice-client")
        .on_thread_start(move || lower_priority(nice))
        .enable_all();
    if let Some(n) = config::worker_threads() {
        builder.worker_threads(n);
    }
    builder
        .build()
        .map(|rt| ClientRuntime(Some(rt)))
        .map_err(RunError::Runtime)
}

/// Sets the calling thread's nice value. On Linux the nice value is per thread, raising it
/// needs no privilege, and CFS weighs only threads of the same cgroup against each other:
/// the sidecar's client threads yield to its members' threads, not to the application's.
/// A failure (another OS) leaves the thread at normal priority.
fn lower_priority(nice: i32) {
    // SAFETY: setpriority reads no memory; who = 0 is the calling thread on Linux.
    let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
}

/// Shuts its runtime down without waiting when dropped, which `run` (inside the main
/// runtime, where blocking is not allowed) does on every way out: client sessions still
/// open past the drain deadline end with it.
struct ClientRuntime(Option<tokio::runtime::Runtime>);

impl ClientRuntime {
    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("only Drop takes the runtime").handle()
    }
}

impl Drop for ClientRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind { addr, source })
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
    let initial = loop {
        match sources.load() {
            Ok(loaded) => break loaded,
            Err(error) => {
                tracing::warn!(%error, "waiting for the identity and directory");
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    tracing::info!(node_id = %initial.identity.node_id, members = initial.directory.len(), cluster = initial.directory.cluster(), "identity loaded");
    metrics.loaded_now();
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(initial));

    let host = config.listen_host;
    let cluster = bind((host, config.cluster_port).into()).await?;
    // Bound here, registered with the client runtime's reactor when it starts serving.
    let client = bind((host, config.client_port).into())
        .await?
        .into_std()
        .map_err(|source| RunError::Bind {
            addr: (host, config.client_port).into(),
            source,
        })?;
    let connect = bind(config.connect_listen).await?;
    let client_rt = client_runtime()?;

    let rt = Arc::new(Runtime {
        shared: Shared {
            current: rx,
            replay: ReplayGuard::default(),
            metrics: metrics.clone(),
        },
        gates: admission::Gates::new(&config),
        buffers: BufferBudget::new(config.buffer_budget_bytes()),
        tasks: TaskTracker::new(),
        ready: AtomicBool::new(false),
        config,
    });
    let accepting = stop.child_token();
    let background = CancellationToken::new();
    let servers = [
        tokio::spawn(inbound::serve(
            cluster,
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
        tokio::spawn(outbound::serve(connect, rt.clone(), accepting.clone())),
    ];
    let admin_task = tokio::spawn(admin::serve(admin, rt.clone(), background.clone()));
    let watcher = tokio::spawn(sources.watch(tx, rt.config.reload_interval, metrics, background.clone()));
    let trimmer = tokio::spawn(memory::trim_after_floods(rt.clone(), background.clone()));
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
    background.cancel();
    let _ = tokio::join!(admin_task, watcher, trimmer);
    Ok(())
}

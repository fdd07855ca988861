//! What every task of a running sidecar shares (`Runtime`), and the second tokio runtime the
//! client port runs on. Below the servers: `inbound`, `outbound` and `admin` take an
//! `Arc<Runtime>`; `lib.rs::run` builds one and wires them.

use std::sync::{atomic::AtomicBool, Arc};

use tokio_util::task::TaskTracker;
use xlattice_protocol::{BufferBudget, ReplayGuard};

use crate::{
    admission,
    config::{self, SidecarConfig},
    metrics::Metrics,
    state::{Loaded, Shared},
};

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

// === impl Runtime ===

impl Runtime {
    /// Not ready until `run` has started every server.
    pub fn new(config: SidecarConfig, current: tokio::sync::watch::Receiver<Arc<Loaded>>, metrics: Metrics) -> Self {
        Runtime {
            shared: Shared {
                current,
                replay: ReplayGuard::default(),
                metrics,
            },
            gates: admission::Gates::new(&config),
            buffers: BufferBudget::new(config.buffer_budget_bytes()),
            tasks: TaskTracker::new(),
            ready: AtomicBool::new(false),
            config,
        }
    }
}

/// The client port runs on a runtime of its own: a flood of outsiders fills that runtime's
/// run queue, never the one where members' handshakes and sessions and the application's
/// outbound sessions wait. Its threads also run at a lower priority (`client_nice`), so
/// when both runtimes want the CPU the kernel runs the members' threads first
/// (sidecar/benches/attacks.rs measures it).
pub fn client_runtime() -> std::io::Result<ClientRuntime> {
    let nice = config::client_nice();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        .thread_name("xlattice-client")
        .on_thread_start(move || lower_priority(nice))
        .enable_all();
    if let Some(n) = config::worker_threads() {
        builder.worker_threads(n);
    }
    builder.build().map(|rt| ClientRuntime(Some(rt)))
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
pub struct ClientRuntime(Option<tokio::runtime::Runtime>);

// === impl ClientRuntime ===

impl ClientRuntime {
    pub fn handle(&self) -> &tokio::runtime::Handle {
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

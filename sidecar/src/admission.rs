//! Who gets in, and how many at once.
//!
//! Every listener has a gate of its own: a pool of connections and a pool of handshake
//! slots. Outsiders on the public client port therefore never take what members need on
//! the cluster port, nor what the application needs to reach its peers. A connection
//! takes a handshake slot only once its whole hello has arrived (`inbound`), so silent and
//! slow connections hold a connection until the handshake deadline, never a slot; a full
//! connection pool refuses at once instead of queueing.
//!
//! Refusing costs an accept, sometimes a task, and a reset: a reconnect flood refused
//! at the network's pace would spend a core on that alone. So a listener that has refused
//! `REFUSALS_PER_TICK` connections within one `TICK` accepts nothing more until the tick
//! ends (`Throttle`); the flood then waits in the kernel's accept queue, and past its end
//! in SYN retries, at the attacker's cost. It delays the other clients of that listener
//! too (they queue behind the flood), never another listener's.

use std::{
    collections::HashMap,
    future::Future,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use crate::{config::SidecarConfig, metrics::PortLabel, runtime::Runtime};

/// The sidecar's listeners, which are also the `port` label of its metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// The private cluster port: members only.
    Cluster,
    /// The public client port.
    Client,
    /// The loopback CONNECT listener through which the application reaches its peers.
    Outbound,
    /// Probes and metrics.
    Admin,
}

/// Connection and handshake limits of one listener.
pub struct Gate {
    connections: Arc<Semaphore>,
    max_connections: usize,
    handshakes: Semaphore,
    /// The most connections open at once since `take_high_water` last read it: a flood
    /// that comes and goes between two looks is still seen (`memory`).
    high_water: std::sync::atomic::AtomicUsize,
    /// Connections this listener has refused, ever (`Throttle` reads it).
    refused: AtomicU64,
}

/// At most this many refusals per `TICK` and listener (1,000/s) before it pauses.
pub const REFUSALS_PER_TICK: u64 = 10;
pub const TICK: Duration = Duration::from_millis(10);

/// Decides when a listener pauses accepting: after `REFUSALS_PER_TICK` refusals within
/// one tick, until that tick ends. A burst does not carry over (each tick starts afresh),
/// so a thousand deadlines at once delay accepting by one tick, not a second.
#[derive(Debug)]
struct Throttle {
    tick_ends: Instant,
    refused_before: u64,
}

/// Connections from one source address still sending their hello, at most `limit` at once:
/// one host cannot fill a port's pool with silent connections. Counted only until the
/// hello has arrived, so many clients behind one address (a NAT, a node's SNAT) are held
/// back only while they are slow.
pub struct PerSource {
    limit: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One place of `PerSource`, given back on drop.
pub struct SourceSlot {
    of: Arc<PerSource>,
    source: IpAddr,
}

/// The four gates, one per listener.
pub struct Gates {
    pub cluster: Gate,
    pub client: Gate,
    pub outbound: Gate,
    pub admin: Gate,
    /// Client-port connections in their hello, per source address.
    pub client_sources: Arc<PerSource>,
}

/// Admin requests are one small GET each: a few at once is plenty, and a flood of them
/// must not take memory from the data path.
pub const ADMIN_CONNECTIONS: usize = 64;

// === impl Listener ===

impl Listener {
    pub fn label(self) -> &'static str {
        match self {
            Self::Cluster => "cluster",
            Self::Client => "client",
            Self::Outbound => "outbound",
            Self::Admin => "admin",
        }
    }

    pub fn metric_label(self) -> PortLabel {
        PortLabel { port: self.label() }
    }
}

// === impl Gate ===

impl Gate {
    pub fn new(max_connections: usize, max_handshakes: usize) -> Self {
        Self {
            connections: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            handshakes: Semaphore::new(max_handshakes),
            high_water: Default::default(),
            refused: AtomicU64::new(0),
        }
    }

    /// Counts a refusal toward the listener's `Throttle`.
    pub fn note_refusal(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.max_connections - self.connections.available_permits()
    }

    /// A place in the connection pool, held for the connection's whole life; `None` when
    /// the pool is full.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        let permit = self.connections.clone().try_acquire_owned().ok()?;
        self.high_water
            .fetch_max(self.open(), std::sync::atomic::Ordering::Relaxed);
        Some(permit)
    }

    /// The high-water mark since the last call, which restarts it from what is open now.
    fn take_high_water(&self) -> usize {
        self.high_water.swap(self.open(), std::sync::atomic::Ordering::Relaxed)
    }

    /// A handshake slot: the right to spend CPU on one hello that has arrived whole.
    pub async fn handshake_slot(&self) -> SemaphorePermit<'_> {
        self.handshakes.acquire().await.expect("semaphore never closed")
    }
}

// === impl Throttle ===

impl Throttle {
    fn new(now: Instant, refused: u64) -> Self {
        Self {
            tick_ends: now + TICK,
            refused_before: refused,
        }
    }

    /// Until when to stop accepting, given the time and the listener's refusals so far.
    fn pause(&mut self, now: Instant, refused: u64) -> Option<Instant> {
        if now >= self.tick_ends {
            *self = Self::new(now, refused);
            return None;
        }
        (refused - self.refused_before >= REFUSALS_PER_TICK).then_some(self.tick_ends)
    }
}

// === impl PerSource ===

impl PerSource {
    /// `limit` 0 turns the check off.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            counts: Mutex::default(),
        }
    }

    /// A place for a connection from `source`, or `None` when it already has `limit`.
    pub fn enter(self: &Arc<Self>, source: IpAddr) -> Option<SourceSlot> {
        // Made only once the place is taken: a slot's drop gives its place back.
        let slot = || SourceSlot {
            of: self.clone(),
            source,
        };
        if self.limit == 0 {
            return Some(slot());
        }
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(source).or_default();
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(slot())
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        if self.of.limit == 0 {
            return;
        }
        let mut counts = self.of.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                // The map holds only sources with connections in their hello: bounded by the pool.
                counts.remove(&self.source);
            }
        }
    }
}

// === impl Gates ===

impl Gates {
    /// The limits `config` sets. The application's CONNECTs take no handshake slot (their
    /// handshakes are the peer's work), so their gate's slots are never the bound.
    pub fn new(config: &SidecarConfig) -> Self {
        Self {
            cluster: Gate::new(config.max_cluster_connections, config.max_cluster_handshakes),
            client: Gate::new(config.max_client_connections, config.client_handshakes()),
            outbound: Gate::new(config.max_outbound_connections, config.max_outbound_connections),
            admin: Gate::new(ADMIN_CONNECTIONS, ADMIN_CONNECTIONS),
            client_sources: Arc::new(PerSource::new(config.max_client_pending_per_source)),
        }
    }

    fn all(&self) -> [&Gate; 4] {
        [&self.cluster, &self.client, &self.outbound, &self.admin]
    }

    /// Connections open now on every listener.
    pub fn open_connections(&self) -> usize {
        self.all().iter().map(|gate| gate.open()).sum()
    }

    /// The most connections open at once on every listener since the last call (summed
    /// per listener, so at least what was open at once).
    pub fn take_high_water(&self) -> usize {
        self.all().iter().map(|gate| gate.take_high_water()).sum()
    }

    pub fn of(&self, listener: Listener) -> &Gate {
        match listener {
            Listener::Cluster => &self.cluster,
            Listener::Client => &self.client,
            Listener::Outbound => &self.outbound,
            Listener::Admin => &self.admin,
        }
    }
}

/// Accepts on `listener` until `stop`, admitting each connection through its gate and
/// running what `handle` returns for it as a task the runtime tracks (so a drain waits for
/// it; `None`: `handle` refused it already, and counted the refusal). A connection the
/// gate refuses is reset and counted in `refused_connections`; past `REFUSALS_PER_TICK`
/// refusals (here or in `handle`) accepting pauses (`Throttle`).
pub async fn accept_loop<H, F>(
    socket: TcpListener,
    listener: Listener,
    rt: Arc<Runtime>,
    stop: CancellationToken,
    handle: H,
) where
    H: Fn(TcpStream, SocketAddr, Arc<Runtime>) -> Option<F>,
    F: Future<Output = ()> + Send + 'static,
{
    let gate = rt.gates.of(listener);
    let mut throttle = Throttle::new(Instant::now(), 0);
    loop {
        if let Some(until) = throttle.pause(Instant::now(), gate.refused.load(Ordering::Relaxed)) {
            rt.shared
                .metrics
                .accept_pauses
                .get_or_create(&listener.metric_label())
                .inc();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(until) => {}
            }
            // A new tick starts when the pause ends, so one pause is counted once.
            throttle = Throttle::new(Instant::now(), gate.refused.load(Ordering::Relaxed));
        }
        let Some((tcp, remote)) = next_connection(&socket, &stop, listener).await else {
            return;
        };
        let Some(permit) = gate.admit() else {
            gate.note_refusal();
            rt.shared
                .metrics
                .refused_connections
                .get_or_create(&listener.metric_label())
                .inc();
            reset(&tcp);
            continue;
        };
        let Some(task) = handle(tcp, remote, rt.clone()) else {
            continue;
        };
        rt.tasks.spawn(async move {
            let _permit = permit;
            task.await
        });
    }
}

/// Makes dropping `tcp` send a TCP reset, whatever is left unread: every refusal looks the
/// same on the wire (docs/protocol.md), and a refused flood leaves no TIME_WAIT behind.
pub fn reset(tcp: &TcpStream) {
    // Failing leaves an orderly close, which loses nothing but the uniformity.
    let _ = tcp.set_zero_linger();
}

/// The next accepted connection, or `None` once `stop` is cancelled. Accept errors
/// (EMFILE and friends) back off briefly instead of spinning.
pub(crate) async fn next_connection(
    socket: &TcpListener,
    stop: &CancellationToken,
    listener: Listener,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return None,
            accepted = socket.accept() => match accepted {
                Ok(pair) => return Some(pair),
                Err(error) => {
                    tracing::warn!(%error, listener = listener.label(), "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_its_limit_and_its_places_back() {
        let per_source = Arc::new(PerSource::new(2));
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = per_source.enter(a).unwrap();
        let _second = per_source.enter(a).unwrap();
        assert!(per_source.enter(a).is_none(), "a third from the same source");
        assert!(
            per_source.enter(a).is_none(),
            "a refusal gives back no place it never had"
        );
        assert!(per_source.enter(b).is_some(), "another source is not held back");
        drop(first);
        assert!(per_source.enter(a).is_some(), "a place given back serves the next");
        drop(_second);
        assert!(
            per_source.counts.lock().unwrap().is_empty(),
            "no entry outlives its connections"
        );
        assert!(Arc::new(PerSource::new(0)).enter(a).is_some(), "0 is off");
    }

    #[test]
    fn refusals_past_the_budget_pause_accepting_until_the_tick_ends() {
        let start = Instant::now();
        let mut throttle = Throttle::new(start, 100);
        let later = start + TICK / 2;
        assert_eq!(
            throttle.pause(later, 100 + REFUSALS_PER_TICK - 1),
            None,
            "within the budget"
        );
        assert_eq!(
            throttle.pause(later, 100 + REFUSALS_PER_TICK),
            Some(start + TICK),
            "at the budget"
        );
        let next = start + TICK;
        assert_eq!(
            throttle.pause(next, 100 + 5 * REFUSALS_PER_TICK),
            None,
            "a new tick starts afresh"
        );
        assert_eq!(
            throttle.pause(next + TICK / 2, 100 + 5 * REFUSALS_PER_TICK),
            None,
            "the burst is not carried over"
        );
        assert_eq!(
            throttle.pause(next + TICK / 2, 100 + 6 * REFUSALS_PER_TICK),
            Some(next + TICK),
            "but a budget's worth more within it pauses"
        );
    }

    #[test]
    fn a_flood_between_two_looks_leaves_its_high_water_mark() {
        let gate = Gate::new(10, 1);
        let flood: Vec<_> = (0..7).map(|_| gate.admit().unwrap()).collect();
        drop(flood);
        let kept = gate.admit().unwrap();
        assert_eq!(gate.take_high_water(), 7, "the flood, gone before the look");
        assert_eq!(gate.take_high_water(), 1, "then what is open");
        drop(kept);
    }
}

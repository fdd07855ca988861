//! The two inbound ports: terminate the handshake, then proxy plaintext to the app.
//!
//! A connection goes through three stages under one deadline (`--handshake-timeout`):
//! its hello arrives whole (no slot held: silence costs only a connection), it waits for
//! one of its port's handshake slots, and the hello is checked and answered. Any refusal
//! resets the connection with nothing sent. Once open, the session's ending decides what
//! the application sees: end of stream only after a clean close, a reset otherwise.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    time::timeout_at,
};
use tokio_util::sync::CancellationToken;
use xlattice_protocol::{answer, read_hello, Arrived, HandshakeError, NodeId, PortKind, SecureStream, ServerContext};

use crate::{
    accounting::{Ending, Refusals, SessionGuard},
    admission::{accept_loop, reset, Listener, SourceSlot},
    metrics::HandshakeLabels,
    proxy::{proxy, proxy_session},
    relay,
    runtime::Runtime,
    state::Loaded,
};

/// Accepts on one port until `stop`; each connection runs in its own task.
pub async fn serve(socket: TcpListener, port: PortKind, rt: Arc<Runtime>, stop: CancellationToken) {
    let listener = listener(port);
    let refusals = Arc::new(Refusals::new(listener));
    accept_loop(socket, listener, rt, stop, move |tcp, remote, rt| {
        // The source's place is taken here, in the accept loop: a refusal then costs no
        // task and counts toward the throttle before the next accept (admission.rs).
        let source = match port {
            PortKind::Client => match rt.gates.client_sources.enter(remote.ip()) {
                Some(slot) => Some(slot),
                None => {
                    refuse(&rt, &refusals, &Refusal::SourceBusy, remote);
                    reset(&tcp);
                    return None;
                }
            },
            PortKind::Cluster => None,
        };
        Some(handle(tcp, remote, port, rt, refusals.clone(), source))
    })
    .await
}

pub fn listener(port: PortKind) -> Listener {
    match port {
        PortKind::Cluster => Listener::Cluster,
        PortKind::Client => Listener::Client,
    }
}

/// What a connection became once its handshake stage was over.
// Returned once per connection and matched at once, as `Incoming` in the protocol crate.
#[allow(clippy::large_enum_variant)]
enum Handshaken<'a> {
    Session(SecureStream<&'a mut TcpStream>),
    ForAnother { hint: [u8; 8], preamble: [u8; 12] },
}

async fn handle(
    mut tcp: TcpStream,
    remote: SocketAddr,
    port: PortKind,
    rt: Arc<Runtime>,
    refusals: Arc<Refusals>,
    source: Option<SourceSlot>,
) {
    let listener = listener(port);
    tcp.set_nodelay(true).ok();
    let loaded = rt.shared.current.borrow().clone();
    let started = Instant::now();
    let result = match handshake(&mut tcp, source, port, &loaded, &rt).await {
        Ok(done) => done,
        Err(error) => {
            refuse(&rt, &refusals, &error, remote);
            return reset(&tcp);
        }
    };
    let session = match result {
        Handshaken::Session(session) => session,
        Handshaken::ForAnother { hint, preamble } => {
            return relayed(tcp, remote, hint, preamble, &loaded, &rt, &refusals).await;
        }
    };
    count(&rt, listener, "ok", "");
    rt.shared
        .metrics
        .handshake_seconds
        .get_or_create(&listener.metric_label())
        .observe(started.elapsed().as_secs_f64());
    serve_session(session, remote, port, &rt).await;
}

/// Reads the hello, takes a slot, answers: all before the deadline, and the slot only for
/// the answer.
///
/// `source` (client port: the source address's place) is held only while the hello arrives:
/// one host cannot fill the pool with silent connections.
async fn handshake<'a>(
    tcp: &'a mut TcpStream,
    source: Option<SourceSlot>,
    port: PortKind,
    loaded: &Loaded,
    rt: &Runtime,
) -> Result<Handshaken<'a>, Refusal> {
    let deadline = tokio::time::Instant::now() + rt.config.handshake_timeout;
    let ctx = ServerContext {
        port,
        identity: &loaded.identity,
        directory: &loaded.directory,
        replay: &rt.shared.replay,
        post_quantum: rt.config.post_quantum,
    };
    let hello = match timeout_at(deadline, read_hello(&mut *tcp, &ctx)).await {
        Err(_) => return Err(Refusal::Handshake(HandshakeError::Timeout)),
        Ok(Err(error)) => return Err(Refusal::Handshake(error)),
        Ok(Ok(Arrived::ForAnother { hint, preamble })) => return Ok(Handshaken::ForAnother { hint, preamble }),
        Ok(Ok(Arrived::Hello(hello))) => hello,
    };
    drop(source);
    let gate = rt.gates.of(listener(port));
    let Ok(_slot) = timeout_at(deadline, gate.handshake_slot()).await else {
        return Err(Refusal::Busy);
    };
    match timeout_at(deadline, answer(tcp, &hello, &ctx)).await {
        Err(_) => Err(Refusal::Handshake(HandshakeError::Timeout)),
        Ok(Err(error)) => Err(Refusal::Handshake(error)),
        Ok(Ok(session)) => Ok(Handshaken::Session(session)),
    }
}

/// Why a connection got no session.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error("no handshake slot came free before the deadline")]
    Busy,
    #[error("too many connections from this address are still sending their hello")]
    SourceBusy,
    #[error(transparent)]
    Relay(#[from] relay::RelayError),
}

impl Refusal {
    fn reason(&self) -> &'static str {
        match self {
            Self::Handshake(error) => error.reason(),
            Self::Busy => "busy",
            Self::SourceBusy => "source_busy",
            Self::Relay(error) => error.reason(),
        }
    }
}

fn count(rt: &Runtime, listener: Listener, result: &'static str, reason: &'static str) {
    let labels = HandshakeLabels {
        port: listener.label(),
        result,
        reason,
    };
    rt.shared.metrics.handshakes.get_or_create(&labels).inc();
}

/// Proxies an open session to the application until it ends, then tells the application
/// how: a FIN after a clean close, a reset after anything else.
async fn serve_session(mut session: SecureStream<&mut TcpStream>, remote: SocketAddr, port: PortKind, rt: &Runtime) {
    let (listener, metrics) = (listener(port), &rt.shared.metrics);
    metrics.count_version(listener.label(), session.version());
    let guard = SessionGuard::open(metrics, listener);
    let upstream = match port {
        PortKind::Cluster => rt.config.cluster_upstream,
        PortKind::Client => rt.config.client_upstream,
    };
    let mut app = match TcpStream::connect(upstream).await {
        Ok(app) => app,
        Err(error) => {
            tracing::warn!(%remote, port = listener.label(), %upstream, %error, "application not reachable; closing session");
            reset(session.get_ref());
            return guard.finish(0, 0, Ending::AppUnreachable);
        }
    };
    app.set_nodelay(true).ok();
    let peer = session.peer();
    tracing::debug!(%remote, port = listener.label(), peer = ?peer, "session open");
    let idle = idle_timeout(port, rt);
    let mut current = rt.shared.current.clone();
    let (moved, ending) = tokio::select! {
        proxied = proxy_session(&mut session, &mut app, idle, Some(&rt.buffers)) => {
            (proxied.moved, Ending::of(&proxied.result))
        }
        _ = left_directory(&mut current, peer) => {
            tracing::info!(%remote, peer = ?peer, "member left the directory; closing its session");
            (Default::default(), Ending::Revoked)
        }
    };
    tracing::debug!(%remote, port = listener.label(), ending = ending.label(), "session ended");
    if !ending.is_clean() {
        reset(&app);
        reset(session.get_ref());
    }
    guard.finish(moved.from_session, moved.into_session, ending);
}

fn idle_timeout(port: PortKind, rt: &Runtime) -> std::time::Duration {
    match port {
        PortKind::Cluster => rt.config.idle_timeout,
        PortKind::Client => rt.config.client_idle_timeout,
    }
}

/// Counts and logs a refusal, and counts it toward the listener's accept throttle.
fn refuse(rt: &Runtime, refusals: &Refusals, refusal: &Refusal, remote: SocketAddr) {
    rt.gates.of(refusals.listener()).note_refusal();
    refusals.refuse(
        &rt.shared.metrics,
        refusal.reason(),
        &format_args!("{remote}: {refusal}"),
    );
}

/// Passes a client-port connection addressed to another member on to it, unopened.
async fn relayed(
    mut tcp: TcpStream,
    remote: SocketAddr,
    hint: [u8; 8],
    preamble: [u8; 12],
    loaded: &Loaded,
    rt: &Runtime,
    refusals: &Refusals,
) {
    let mut target = match relay::open(&tcp, hint, preamble, loaded, rt).await {
        Ok(target) => target,
        Err(error) => {
            refuse(rt, refusals, &Refusal::from(error), remote);
            return reset(&tcp);
        }
    };
    count(rt, Listener::Client, "relayed", "");
    let guard = SessionGuard::open(&rt.shared.metrics, Listener::Client);
    let proxied = proxy(&mut tcp, &mut target, rt.config.client_idle_timeout, Some(&rt.buffers)).await;
    // Both sides are networks here; which one failed matters less than that one did.
    let ending = match Ending::of(&proxied.result) {
        Ending::AppError => Ending::NetworkError,
        other => other,
    };
    if !ending.is_clean() {
        reset(&tcp);
        reset(&target);
    }
    guard.finish(proxied.moved.a_to_b, proxied.moved.b_to_a, ending);
}

/// Resolves when `peer` (a proven member) is no longer in the directory; never for
/// client-port sessions.
async fn left_directory(current: &mut watch::Receiver<Arc<Loaded>>, peer: Option<NodeId>) {
    let Some(peer) = peer else {
        return std::future::pending().await;
    };
    loop {
        if current.changed().await.is_err() {
            return std::future::pending().await;
        }
        if current.borrow().directory.by_node_id(&peer).is_none() {
            return;
        }
    }
}

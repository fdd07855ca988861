//! The two inbound ports: terminate the handshake, then proxy plaintext to the app.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::{watch, OwnedSemaphorePermit},
};
use tokio_util::sync::CancellationToken;
use xlattice_protocol::{accept_or_route, HandshakeError, Incoming, NodeId, PortKind, ServerContext};

use crate::{
    metrics::{BytesLabels, HandshakeLabels, PortLabel},
    proxy::{proxy, proxy_session, ProxyError},
    relay,
    state::Loaded,
    Runtime,
};

pub fn port_label(port: PortKind) -> &'static str {
    match port {
        PortKind::Cluster => "cluster",
        PortKind::Client => "client",
    }
}

/// Accepts on one port until `stop`; each connection runs in its own task.
pub async fn serve(
    listener: TcpListener,
    port: PortKind,
    upstream: SocketAddr,
    rt: Arc<Runtime>,
    stop: CancellationToken,
) {
    let label = PortLabel { port: port_label(port) };
    loop {
        let Some((tcp, remote)) = crate::next_connection(&listener, &stop, label.port).await else {
            return;
        };
        let Ok(permit) = rt.connections.clone().try_acquire_owned() else {
            rt.shared.metrics.refused_connections.get_or_create(&label).inc();
            continue;
        };
        let rt2 = rt.clone();
        rt.tasks
            .spawn(async move { handle(tcp, remote, port, upstream, rt2, permit).await });
    }
}

async fn handle(
    tcp: TcpStream,
    remote: SocketAddr,
    port: PortKind,
    upstream: SocketAddr,
    rt: Arc<Runtime>,
    _permit: OwnedSemaphorePermit,
) {
    let metrics = &rt.shared.metrics;
    let label = port_label(port);
    tcp.set_nodelay(true).ok();
    let loaded = rt.shared.current.borrow().clone();
    let started = Instant::now();
    let handshake = async {
        let _slot = rt.handshakes.acquire().await.expect("semaphore never closed");
        let ctx = ServerContext {
            port,
            identity: &loaded.identity,
            directory: &loaded.directory,
            replay: &rt.shared.replay,
        };
        accept_or_route(tcp, &ctx).await
    };
    let result = tokio::time::timeout(rt.config.handshake_timeout, handshake)
        .await
        .unwrap_or(Err(HandshakeError::Timeout));
    let count = |result, reason| {
        metrics
            .handshakes
            .get_or_create(&HandshakeLabels {
                port: label,
                result,
                reason,
            })
            .inc();
    };
    let mut session = match result {
        Ok(Incoming::Session(session)) => {
            count("ok", "");
            session
        }
        Ok(Incoming::ForAnother { hint, preamble, mut io }) => {
            match relay::open(&io, hint, preamble, &loaded, &rt).await {
                Ok(mut target) => {
                    count("relayed", "");
                    if let Err(error) = proxy(&mut io, &mut target, rt.config.idle_timeout, Some(&rt.buffers)).await {
                        tracing::debug!(%remote, port = label, %error, "relayed session ended");
                    }
                }
                Err(error) => {
                    tracing::debug!(%remote, port = label, %error, "relay refused");
                    count("error", error.reason());
                }
            }
            return;
        }
        Err(error) => {
            let reason = error.reason();
            count("error", reason);
            // Dropping the socket closes it; nothing was sent.
            tracing::debug!(%remote, port = label, reason, %error, "handshake refused");
            return;
        }
    };
    metrics
        .handshake_seconds
        .get_or_create(&PortLabel { port: label })
        .observe(started.elapsed().as_secs_f64());
    let peer = session.peer();
    let mut app = match TcpStream::connect(upstream).await {
        Ok(app) => app,
        Err(error) => {
            tracing::warn!(%remote, port = label, %upstream, %error, "application not reachable; closing session");
            return;
        }
    };
    app.set_nodelay(true).ok();

    let gauge = metrics.open_sessions.get_or_create(&PortLabel { port: label }).clone();
    gauge.inc();
    tracing::debug!(%remote, port = label, peer = ?peer, "session open");
    let mut current = rt.shared.current.clone();
    let outcome = tokio::select! {
        moved = proxy_session(&mut session, &mut app, rt.config.idle_timeout, Some(&rt.buffers)) => moved,
        _ = left_directory(&mut current, peer) => {
            tracing::info!(%remote, peer = ?peer, "member left the directory; closing its session");
            Err(ProxyError::Io(std::io::ErrorKind::PermissionDenied.into()))
        }
    };
    gauge.dec();
    match outcome {
        Ok(moved) => {
            metrics
                .bytes
                .get_or_create(&BytesLabels {
                    port: label,
                    direction: "in",
                })
                .inc_by(moved.from_session);
            metrics
                .bytes
                .get_or_create(&BytesLabels {
                    port: label,
                    direction: "out",
                })
                .inc_by(moved.into_session);
        }
        Err(error) => tracing::debug!(%remote, port = label, %error, "session ended"),
    }
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

//! The HTTP CONNECT listener on loopback: the application asks for
//! `CONNECT <nodeid or member name>:<port>` and the sidecar opens the session.

use std::sync::Arc;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;
use xlattice_protocol::{client, PortKind, Target};

use crate::{
    accounting::{Ending, SessionGuard},
    admission::{accept_loop, reset, Listener},
    metrics::HandshakeLabels,
    proxy::proxy_session,
    runtime::Runtime,
};

const MAX_HEAD: usize = 8 * 1024;

#[derive(Debug, PartialEq, Eq)]
pub struct ConnectRequest {
    pub member: String,
    pub port: u16,
}

/// Parses a CONNECT request head; the error is the HTTP status line to answer with.
pub fn parse_connect(head: &[u8]) -> Result<ConnectRequest, &'static str> {
    const BAD: &str = "400 Bad Request";
    let text = std::str::from_utf8(head).map_err(|_| BAD)?;
    let line = text.split("\r\n").next().ok_or(BAD)?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    if method != Some("CONNECT") {
        return Err("405 Method Not Allowed");
    }
    if !matches!(version, Some("HTTP/1.1" | "HTTP/1.0")) || parts.next().is_some() {
        return Err(BAD);
    }
    let (member, port) = target.and_then(|t| t.rsplit_once(':')).ok_or(BAD)?;
    let port = port.parse().map_err(|_| BAD)?;
    if member.is_empty() {
        return Err(BAD);
    }
    Ok(ConnectRequest {
        member: member.to_string(),
        port,
    })
}

pub async fn serve(socket: TcpListener, rt: Arc<Runtime>, stop: CancellationToken) {
    accept_loop(socket, Listener::Outbound, rt, stop, |tcp, _, rt| {
        Some(async move {
            if let Err(error) = handle(tcp, rt).await {
                tracing::debug!(%error, "outbound connection ended");
            }
        })
    })
    .await
}

async fn read_head(tcp: &mut TcpStream) -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok(Some((buf, rest)));
        }
        if buf.len() > MAX_HEAD {
            return Ok(Some((buf, Vec::new())));
        }
    }
}

async fn answer(tcp: &mut TcpStream, status: &str, why: &str) -> std::io::Result<()> {
    let body = format!("{why}\n");
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(response.as_bytes()).await?;
    tcp.shutdown().await
}

async fn handle(mut tcp: TcpStream, rt: Arc<Runtime>) -> std::io::Result<()> {
    tcp.set_nodelay(true).ok();
    let head = tokio::time::timeout(rt.config.handshake_timeout, read_head(&mut tcp)).await;
    let Ok(Ok(Some((head, early)))) = head else {
        return Ok(());
    };
    if head.len() > MAX_HEAD {
        return answer(
            &mut tcp,
            "431 Request Header Fields Too Large",
            "request head too large",
        )
        .await;
    }
    let request = match parse_connect(&head) {
        Ok(request) => request,
        Err(status) => {
            return answer(
                &mut tcp,
                status,
                "expected: CONNECT <nodeid or member name>:<port> HTTP/1.1",
            )
            .await
        }
    };
    let (cluster_port, client_port) = (rt.config.cluster_port, rt.config.client_port);
    let port = if request.port == cluster_port {
        PortKind::Cluster
    } else if request.port == client_port {
        PortKind::Client
    } else {
        let why = format!("port must be the cluster port {cluster_port} or the client port {client_port}");
        return answer(&mut tcp, "400 Bad Request", &why).await;
    };
    let loaded = rt.shared.current.borrow().clone();
    let target = Target {
        member: &request.member,
        port,
        address: None,
        identity: Some(&loaded.identity),
        post_quantum: rt.config.post_quantum,
    };
    let started = std::time::Instant::now();
    let opened = client::open(&loaded.directory, target, rt.config.handshake_timeout).await;
    let metrics = &rt.shared.metrics;
    let mut session = match opened {
        Ok(session) => session,
        Err(error) => {
            let reason = match &error {
                client::ClientError::Handshake { source, .. } => source.reason(),
                client::ClientError::UnknownMember(_) => "unknown_member",
                client::ClientError::NoEndpoint { .. } => "no_endpoint",
                client::ClientError::Connect { .. } => "connect",
                client::ClientError::Timeout(_) => "timeout",
            };
            metrics
                .handshakes
                .get_or_create(&HandshakeLabels {
                    port: "outbound",
                    result: "error",
                    reason,
                })
                .inc();
            let status = match error {
                client::ClientError::UnknownMember(_) => "404 Not Found",
                client::ClientError::NoEndpoint { .. } => "503 Service Unavailable",
                _ => "502 Bad Gateway",
            };
            return answer(&mut tcp, status, &error.to_string()).await;
        }
    };
    metrics
        .handshakes
        .get_or_create(&HandshakeLabels {
            port: "outbound",
            result: "ok",
            reason: "",
        })
        .inc();
    metrics
        .handshake_seconds
        .get_or_create(&Listener::Outbound.metric_label())
        .observe(started.elapsed().as_secs_f64());
    tcp.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n").await?;
    metrics.count_version(Listener::Outbound.label(), session.version());
    let guard = SessionGuard::open(metrics, Listener::Outbound);
    if !early.is_empty() {
        if let Err(error) = session.write_all(&early).await {
            guard.finish(0, 0, Ending::NetworkError);
            reset(&tcp);
            return Err(error);
        }
    }
    let proxied = proxy_session(&mut session, &mut tcp, rt.config.idle_timeout, Some(&rt.buffers)).await;
    let ending = Ending::of(&proxied.result);
    if !ending.is_clean() {
        // The application learns that its peer's stream did not end in order.
        reset(&tcp);
        reset(session.get_ref());
    }
    let early = early.len() as u64;
    guard.finish(proxied.moved.from_session, proxied.moved.into_session + early, ending);
    proxied.result.map_err(|e| std::io::Error::other(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_requests() {
        let ok = parse_connect(b"CONNECT store-1:7000 HTTP/1.1\r\nHost: store-1:7000\r\n\r\n").unwrap();
        assert_eq!(
            ok,
            ConnectRequest {
                member: "store-1".into(),
                port: 7000
            }
        );
        assert_eq!(parse_connect(b"GET / HTTP/1.1\r\n\r\n"), Err("405 Method Not Allowed"));
        assert_eq!(
            parse_connect(b"CONNECT store-1 HTTP/1.1\r\n\r\n"),
            Err("400 Bad Request")
        );
        assert_eq!(parse_connect(b"CONNECT :7000 HTTP/1.1\r\n\r\n"), Err("400 Bad Request"));
        assert_eq!(
            parse_connect(b"CONNECT a:99999 HTTP/1.1\r\n\r\n"),
            Err("400 Bad Request")
        );
        assert_eq!(parse_connect(b"CONNECT a:1 SPDY\r\n\r\n"), Err("400 Bad Request"));
    }
}

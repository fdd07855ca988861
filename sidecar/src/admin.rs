//! The admin port: /livez, /readyz and /metrics over minimal HTTP/1.1.
//!
//! Kept to a few lines on purpose: probes and scrapers send one small GET.

use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;

use crate::{
    admission::{next_connection, reset, Listener},
    runtime::Runtime,
};

/// Serves until `stop`. Admin connections are not drained: a probe or scrape in flight
/// when the sidecar stops may go unanswered.
pub async fn serve(socket: TcpListener, rt: Arc<Runtime>, stop: CancellationToken) {
    while let Some((tcp, _)) = next_connection(&socket, &stop, Listener::Admin).await {
        let Some(permit) = rt.gates.admin.admit() else {
            reset(&tcp);
            continue;
        };
        let rt = rt.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(Duration::from_secs(5), respond(tcp, &rt)).await;
        });
    }
}

async fn respond(mut tcp: TcpStream, rt: &Runtime) -> std::io::Result<()> {
    let mut buf = [0u8; 2048];
    let mut len = 0;
    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        if len == buf.len() {
            return Ok(());
        }
        let n = tcp.read(&mut buf[len..]).await?;
        if n == 0 {
            return Ok(());
        }
        len += n;
    }
    let line = std::str::from_utf8(&buf[..len])
        .unwrap_or("")
        .lines()
        .next()
        .unwrap_or("");
    let path = line
        .strip_prefix("GET ")
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or("");
    let (status, content_type, body) = match path {
        "/livez" => ("200 OK", "text/plain", "ok\n".to_string()),
        "/readyz" if rt.ready.load(Ordering::Relaxed) => ("200 OK", "text/plain", "ready\n".to_string()),
        "/readyz" => ("503 Service Unavailable", "text/plain", "not ready\n".to_string()),
        "/metrics" => {
            let metrics = &rt.shared.metrics;
            metrics.buffer_bytes.set(rt.buffers.in_use() as i64);
            metrics
                .buffer_budget_bytes
                .set(i64::try_from(rt.config.buffer_budget_bytes()).unwrap_or(i64::MAX));
            (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                metrics.render(),
            )
        }
        _ => (
            "404 Not Found",
            "text/plain",
            "try /livez, /readyz or /metrics\n".to_string(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await?;
    tcp.write_all(body.as_bytes()).await?;
    tcp.shutdown().await
}

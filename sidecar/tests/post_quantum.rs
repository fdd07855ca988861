//! The hybrid post-quantum handshake (protocol version 2) across a rolling upgrade, with
//! real sidecar processes on loopback: a sidecar that speaks only version 1 (`--post-quantum
//! Disabled`, as an old one does) still talks to new clients and members, which fall back; a
//! fallback forced by someone dropping the version 2 hello is refused (the sentinel); and
//! `Required` refuses version 1 and never falls back.

mod support;

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use xlattice_protocol::{client, ClientError, HandshakeError, PortKind, PostQuantum, Target, Version};

use support::*;

const TIMEOUT: Duration = Duration::from_secs(5);

/// Restarts member `i`'s sidecar with `extra` flags (its identity and directory unchanged).
async fn restart_with(c: &mut Cluster, i: usize, extra: &[&str]) {
    let m = &mut c.members[i];
    if let Some(mut p) = m.process.take() {
        p.kill().unwrap();
        p.wait().unwrap();
    }
    m.process = Some(spawn_sidecar(&c.dir, m, extra));
    wait_ready(&m.host).await;
}

/// A client-port session to `member` at `address` (its endpoint if `None`).
async fn open(
    c: &Cluster,
    member: &str,
    address: Option<&str>,
    post_quantum: PostQuantum,
) -> Result<xlattice_protocol::SecureStream<TcpStream>, ClientError> {
    let target = Target {
        member,
        port: PortKind::Client,
        address,
        identity: None,
        post_quantum,
    };
    client::open(&directory_index(c), target, TIMEOUT).await
}

/// A TCP proxy to `upstream` that drops every version 2 hello (closes on seeing its
/// header after the 12-byte routing preamble) and passes everything else: someone in the
/// path forcing a fallback to version 1.
async fn dropping_proxy(upstream: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let (mut downstream, _) = listener.accept().await.unwrap();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let mut head = [0u8; 12 + 8];
                if downstream.read_exact(&mut head).await.is_err() || head[12 + 2] == 2 {
                    return; // dropped
                }
                let mut up = TcpStream::connect(&upstream).await.unwrap();
                up.write_all(&head).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut downstream, &mut up).await;
            });
        }
    });
    address
}

fn versions(port: &str, version: &str) -> String {
    format!(r#"xlattice_sidecar_session_versions_total{{port="{port}",version="{version}"}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_keeps_talking_and_a_forced_fallback_is_refused() {
    let mut c = cluster(110).await;
    // m0 plays a sidecar from before version 2.
    restart_with(&mut c, 0, &["--post-quantum", "Disabled"]).await;

    // --- clients: hybrid with the new members, classical with the old one (fallback)
    let mut session = open(&c, "m1", None, PostQuantum::Preferred).await.unwrap();
    assert_eq!(session.version(), Version::Hybrid);
    assert_eq!(line_exchange(&mut session, "pq").await, "m1/client: pq");
    let mut session = open(&c, "m0", None, PostQuantum::Preferred).await.unwrap();
    assert_eq!(
        session.version(),
        Version::Classical,
        "fell back for a version 1 member"
    );
    assert_eq!(line_exchange(&mut session, "old").await, "m0/client: old");
    assert_eq!(metric(&c.members[1].host, &versions("client", "hybrid")).await, 1);
    assert_eq!(metric(&c.members[0].host, &versions("client", "classical")).await, 1);

    // --- members, both ways through their outbound ports: new to old falls back, old to
    // new is answered in version 1 (the sentinel means nothing to an old client)
    for (from, to) in [(1, "m0"), (0, "m1")] {
        let (status, mut tcp) = connect_via(&c.members[from], to, CLUSTER_PORT).await;
        assert!(status.contains(" 200 "), "m{from} -> {to}: {status}");
        assert_eq!(line_exchange(&mut tcp, "peer").await, format!("{to}/cluster: peer"));
    }
    assert_eq!(metric(&c.members[1].host, &versions("outbound", "classical")).await, 1);
    assert_eq!(metric(&c.members[1].host, &versions("cluster", "classical")).await, 1);
    assert_eq!(metric(&c.members[0].host, &versions("outbound", "classical")).await, 1);

    // --- someone in the path drops the version 2 hello to a member that speaks it (m2:
    // never contacted yet): the fallback's reply carries the sentinel, and the client
    // refuses it; once a member is known to speak version 2, a dropped hello is final
    let proxy = dropping_proxy(format!("{}:{CLIENT_PORT}", c.members[2].host)).await;
    match open(&c, "m2", Some(&proxy), PostQuantum::Preferred).await {
        Err(ClientError::Handshake {
            source: HandshakeError::Downgrade,
            ..
        }) => {}
        Err(other) => panic!("a forced fallback must be refused as a downgrade, got {other}"),
        Ok(s) => panic!("a forced fallback opened a {:?} session", s.version()),
    }
    let classical_before = metric(&c.members[2].host, &versions("client", "classical")).await;
    match open(&c, "m2", Some(&proxy), PostQuantum::Preferred).await {
        Err(ClientError::Handshake {
            source: HandshakeError::Io(_),
            ..
        }) => {}
        Err(other) => panic!("to a member known to speak version 2 there is no fallback: {other}"),
        Ok(s) => panic!("a dropped hello opened a {:?} session", s.version()),
    }
    assert_eq!(
        metric(&c.members[2].host, &versions("client", "classical")).await,
        classical_before,
        "no version 1 hello was sent the second time"
    );
    // Through the same path to the old member, the fallback is genuine and works.
    let old_proxy = dropping_proxy(format!("{}:{CLIENT_PORT}", c.members[0].host)).await;
    let session = open(&c, "m0", Some(&old_proxy), PostQuantum::Preferred).await.unwrap();
    assert_eq!(session.version(), Version::Classical);

    // --- Required: version 1 refused (counted), version 2 only, no fallback as a client
    restart_with(&mut c, 2, &["--post-quantum", "Required"]).await;
    let refused = open(&c, "m2", None, PostQuantum::Disabled).await;
    assert!(
        refused.is_err(),
        "a version 1 hello to a Required member must be refused"
    );
    let reason = r#"xlattice_sidecar_handshakes_total{port="client",result="error",reason="classical_refused"}"#;
    assert_eq!(metric(&c.members[2].host, reason).await, 1);
    let session = open(&c, "m2", None, PostQuantum::Preferred).await.unwrap();
    assert_eq!(session.version(), Version::Hybrid);
    let proxy = dropping_proxy(format!("{}:{CLIENT_PORT}", c.members[1].host)).await;
    match open(&c, "m1", Some(&proxy), PostQuantum::Required).await {
        Err(ClientError::Handshake {
            source: HandshakeError::Io(_),
            ..
        }) => {}
        Err(other) => panic!("Required must not fall back: {other}"),
        Ok(s) => panic!("Required opened a {:?} session through a dropping path", s.version()),
    }
    // A Required member does not fall back to the old member either.
    let (status, _) = connect_via(&c.members[2], "m0", CLUSTER_PORT).await;
    assert!(
        !status.contains(" 200 "),
        "m2 (Required) -> m0 (version 1 only): {status}"
    );
}

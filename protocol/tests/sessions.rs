//! Handshake and sessions over real TCP sockets on loopback, real crypto.

use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use xlattice_protocol::{
    accept, accept_or_route, connect,
    handshake::{client_hello, route_preamble, ClientSecrets, HELLO_HEADER_LEN},
    DirectoryIndex, HandshakeError, Identity, Incoming, MemberDirectory, MemberRecord, NodeIdBits, PortKind,
    ReplayGuard, RsaBits,
};

struct Cluster {
    server: Arc<Identity>,
    member: Arc<Identity>,
    outsider: Arc<Identity>,
    directory: Arc<DirectoryIndex>,
}

fn cluster() -> Cluster {
    let gen = || Arc::new(Identity::generate(NodeIdBits::B256, RsaBits::B2048).unwrap());
    let (server, member, outsider) = (gen(), gen(), gen());
    let directory = MemberDirectory {
        cluster: "test/c".into(),
        members: vec![
            MemberRecord::for_identity("server", &server),
            MemberRecord::for_identity("member", &member),
        ],
    };
    Cluster {
        directory: Arc::new(directory.index().unwrap()),
        server,
        member,
        outsider,
    }
}

/// An echo server behind the handshake; reports each connection's handshake result.
async fn serve(c: &Cluster, port: PortKind) -> (std::net::SocketAddr, mpsc::UnboundedReceiver<Result<(), String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let (identity, directory) = (c.server.clone(), c.directory.clone());
    let replay = Arc::new(ReplayGuard::default());
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (identity, directory, replay, tx) = (identity.clone(), directory.clone(), replay.clone(), tx.clone());
            tokio::spawn(async move {
                let ctx = xlattice_protocol::ServerContext {
                    port,
                    identity: &identity,
                    directory: &directory,
                    replay: &replay,
                    post_quantum: xlattice_protocol::PostQuantum::Preferred,
                };
                match tokio::time::timeout(Duration::from_secs(5), accept(tcp, &ctx)).await {
                    Ok(Ok(mut session)) => {
                        tx.send(Ok(())).ok();
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            match session.read(&mut buf).await {
                                Ok(0) => {
                                    session.shutdown().await.ok();
                                    break;
                                }
                                Ok(n) => {
                                    if session.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                    session.flush().await.ok();
                                }
                                Err(_) => break,
                            }
                        }
                    }
                    Ok(Err(e)) => {
                        tx.send(Err(e.reason().to_string())).ok();
                    }
                    Err(_) => {
                        tx.send(Err("timeout".into())).ok();
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// A well-formed cluster-port hello from the cluster's member.
fn member_hello(c: &Cluster) -> Vec<u8> {
    client_hello(
        c.server.ck_public(),
        PortKind::Cluster,
        Some(&c.member),
        ClientSecrets::random(),
    )
    .unwrap()
    .0
}

/// Reads until EOF or error; returns the bytes the server sent back.
async fn read_to_close(tcp: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut got))
        .await
        .expect("server closed");
    got
}

/// Sends `bytes` on a new connection, which the server must close with nothing sent
/// back; the reason it counted.
async fn refusal(
    addr: std::net::SocketAddr,
    bytes: &[u8],
    results: &mut mpsc::UnboundedReceiver<Result<(), String>>,
) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    assert_eq!(read_to_close(&mut tcp).await, b"", "the server must send nothing");
    results.recv().await.unwrap().unwrap_err()
}

#[tokio::test]
async fn client_port_round_trip_carries_bulk_data_both_ways() {
    let c = cluster();
    let (addr, mut results) = serve(&c, PortKind::Client).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let session = connect(tcp, c.server.ck_public(), PortKind::Client, None)
        .await
        .unwrap();
    assert_eq!(results.recv().await.unwrap(), Ok(()));

    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let (mut rd, mut wr) = tokio::io::split(session);
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        wr.write_all(&sent).await.unwrap();
        wr.shutdown().await.unwrap();
    });
    let mut echoed = Vec::new();
    rd.read_to_end(&mut echoed).await.unwrap();
    writer.await.unwrap();
    assert_eq!(echoed, payload);
}

#[tokio::test]
async fn cluster_port_serves_members_and_drops_others_silently() {
    let c = cluster();
    let (addr, mut results) = serve(&c, PortKind::Cluster).await;

    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut session = connect(tcp, c.server.ck_public(), PortKind::Cluster, Some(&c.member))
        .await
        .unwrap();
    assert_eq!(results.recv().await.unwrap(), Ok(()));
    session.write_all(b"ping").await.unwrap();
    session.flush().await.unwrap();
    let mut buf = [0u8; 4];
    session.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");

    // A valid identity that is not in the directory: nothing comes back.
    let (hello, _) = client_hello(
        c.server.ck_public(),
        PortKind::Cluster,
        Some(&c.outsider),
        ClientSecrets::random(),
    )
    .unwrap();
    assert_eq!(refusal(addr, &hello, &mut results).await, "not_member");

    // No proof at all (a client-port hello) on the cluster port.
    let (hello, _) = client_hello(c.server.ck_public(), PortKind::Client, None, ClientSecrets::random()).unwrap();
    assert_eq!(refusal(addr, &hello, &mut results).await, "bad_length");

    // The member's first session still works: only the bad connections were closed.
    session.write_all(b"pong").await.unwrap();
    session.flush().await.unwrap();
    session.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong");
}

#[tokio::test]
async fn a_member_signature_by_the_wrong_key_is_refused() {
    let c = cluster();
    let (addr, mut results) = serve(&c, PortKind::Cluster).await;
    // The outsider claims the member's NodeID but signs with its own sk.
    let impostor = Identity {
        node_id: c.member.node_id,
        ..Identity::generate(NodeIdBits::B256, RsaBits::B2048).unwrap()
    };
    let (hello, _) = client_hello(
        c.server.ck_public(),
        PortKind::Cluster,
        Some(&impostor),
        ClientSecrets::random(),
    )
    .unwrap();
    assert_eq!(refusal(addr, &hello, &mut results).await, "bad_signature");
}

#[tokio::test]
async fn a_member_on_the_client_port_is_just_a_client() {
    let c = cluster();
    let (addr, mut results) = serve(&c, PortKind::Client).await;
    let hello = member_hello(&c);
    assert_eq!(refusal(addr, &hello, &mut results).await, "bad_length");
}

#[tokio::test]
async fn hostile_hellos_close_only_their_own_connection() {
    let c = cluster();
    let (addr, mut results) = serve(&c, PortKind::Client).await;
    let good = || {
        client_hello(c.server.ck_public(), PortKind::Client, None, ClientSecrets::random())
            .unwrap()
            .0
    };

    // An established session that must survive all of the below.
    let mut survivor = connect(
        TcpStream::connect(addr).await.unwrap(),
        c.server.ck_public(),
        PortKind::Client,
        None,
    )
    .await
    .unwrap();
    assert_eq!(results.recv().await.unwrap(), Ok(()));

    let mut tampered = good();
    tampered[HELLO_HEADER_LEN + 10] ^= 0x40;
    let mut wrong_version = good();
    wrong_version[2] = 3;
    // A version 1 hello relabelled as version 2 (with a key where version 2 has one): its
    // OAEP label is version 1's, so it does not decrypt as version 2.
    let mut relabelled = good();
    relabelled[2] = 2;
    relabelled.extend_from_slice(&[7u8; xlattice_protocol::handshake::KEM_KEY_LEN]);
    let mut oversized = good();
    oversized[4..6].copy_from_slice(&u16::MAX.to_be_bytes());
    let replayed = good();
    let mut stale_secrets = ClientSecrets::random();
    stale_secrets.timestamp -= 3600;
    let stale = client_hello(c.server.ck_public(), PortKind::Client, None, stale_secrets)
        .unwrap()
        .0;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("tampered", tampered, "undecryptable"),
        ("wrong version", wrong_version, "unsupported_version"),
        ("version 1 relabelled as version 2", relabelled, "undecryptable"),
        ("oversized", oversized, "bad_length"),
        ("garbage", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), "bad_magic"),
        ("stale", stale, "clock_skew"),
        ("first use", replayed.clone(), "ok"),
        ("replayed", replayed, "replayed"),
    ];
    for (name, bytes, expected) in cases {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(&bytes).await.unwrap();
        if expected == "ok" {
            assert_eq!(results.recv().await.unwrap(), Ok(()), "{name}");
            continue;
        }
        assert_eq!(read_to_close(&mut tcp).await, b"", "{name}: server must send nothing");
        assert_eq!(results.recv().await.unwrap(), Err(expected.to_string()), "{name}");
    }

    // Truncated: half a hello, then the client goes away.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&good()[..100]).await.unwrap();
    tcp.shutdown().await.unwrap();
    assert_eq!(read_to_close(&mut tcp).await, b"");
    assert_eq!(results.recv().await.unwrap(), Err("io".into()));

    survivor.write_all(b"still here").await.unwrap();
    survivor.flush().await.unwrap();
    let mut buf = [0u8; 10];
    survivor.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still here");
}

#[tokio::test]
async fn a_reply_from_the_wrong_member_is_refused_by_the_client() {
    let c = cluster();
    let (addr, _results) = serve(&c, PortKind::Client).await;
    // Addressed to the member's ck, answered by the server: it cannot decrypt, so it
    // drops the connection; the client sees a closed stream, never a session.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let err = connect(tcp, c.member.ck_public(), PortKind::Client, None)
        .await
        .unwrap_err();
    assert!(matches!(err, HandshakeError::Io(_)), "{err}");
}

#[tokio::test]
async fn tampered_or_truncated_records_end_the_session_with_an_error() {
    let c = cluster();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = c.server.clone();
    let directory = c.directory.clone();
    let handle = tokio::spawn(async move {
        let replay = ReplayGuard::default();
        let ctx = xlattice_protocol::ServerContext {
            port: PortKind::Client,
            identity: &server,
            directory: &directory,
            replay: &replay,
            post_quantum: xlattice_protocol::PostQuantum::Preferred,
        };
        let mut results = Vec::new();
        for _ in 0..2 {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut session = accept(tcp, &ctx).await.unwrap();
            let mut buf = Vec::new();
            results.push(session.read_to_end(&mut buf).await.map_err(|e| e.to_string()));
        }
        results
    });

    // 1: a raw byte flipped inside an established record stream.
    let (tcp, mut raw_side) = relay(addr).await;
    let mut session = connect(tcp, c.server.ck_public(), PortKind::Client, None)
        .await
        .unwrap();
    raw_side.flip_next_byte_after(5);
    session.write_all(b"hello, member").await.unwrap();
    session.flush().await.unwrap();
    drop(session);

    // 2: the TCP connection closes without a close record.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut session = connect(tcp, c.server.ck_public(), PortKind::Client, None)
        .await
        .unwrap();
    session.write_all(b"partial").await.unwrap();
    session.flush().await.unwrap();
    drop(session);

    let results = handle.await.unwrap();
    assert!(
        results[0].as_ref().unwrap_err().contains("failed authentication"),
        "{results:?}"
    );
    assert!(results[1].as_ref().unwrap_err().contains("truncated"), "{results:?}");
}

/// A TCP relay that can corrupt one byte of the client-to-server stream.
struct Corrupter(Arc<std::sync::Mutex<Option<usize>>>);

impl Corrupter {
    fn flip_next_byte_after(&mut self, offset: usize) {
        *self.0.lock().unwrap() = Some(offset);
    }
}

async fn relay(target: std::net::SocketAddr) -> (TcpStream, Corrupter) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let flip = Arc::new(std::sync::Mutex::new(None::<usize>));
    let flip2 = flip.clone();
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let server = TcpStream::connect(target).await.unwrap();
        let (mut cr, mut cw) = client.into_split();
        let (mut sr, mut sw) = server.into_split();
        tokio::spawn(async move { tokio::io::copy(&mut sr, &mut cw).await });
        // The hello passes untouched; the corruption arms only after it.
        let mut buf = vec![0u8; 65536];
        let mut hello_seen = false;
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if hello_seen {
                if let Some(offset) = flip2.lock().unwrap().take() {
                    buf[offset.min(n - 1)] ^= 1;
                }
            }
            hello_seen = true;
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        sw.shutdown().await.ok();
    });
    (TcpStream::connect(addr).await.unwrap(), Corrupter(flip))
}

#[tokio::test]
async fn a_client_session_for_another_member_is_handed_back_for_relaying() {
    let c = cluster();
    // "member" answers on its own client port.
    let target = Cluster {
        server: c.member.clone(),
        member: c.server.clone(),
        outsider: c.outsider.clone(),
        directory: c.directory.clone(),
    };
    let (target_addr, mut target_results) = serve(&target, PortKind::Client).await;
    // "server" fronts a load-balanced address: it relays what is not for it, unopened.
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_addr = front.local_addr().unwrap();
    let (server, directory) = (c.server.clone(), c.directory.clone());
    let relayed = tokio::spawn(async move {
        let (tcp, _) = front.accept().await.unwrap();
        let replay = ReplayGuard::default();
        let ctx = xlattice_protocol::ServerContext {
            port: PortKind::Client,
            identity: &server,
            directory: &directory,
            replay: &replay,
            post_quantum: xlattice_protocol::PostQuantum::Preferred,
        };
        let Ok(Incoming::ForAnother { hint, preamble, mut io }) = accept_or_route(tcp, &ctx).await else {
            panic!("expected a session for another member");
        };
        let to = directory.by_ck_hint(&hint).unwrap().record.name.clone();
        let mut upstream = TcpStream::connect(target_addr).await.unwrap();
        upstream.write_all(&preamble).await.unwrap();
        tokio::io::copy_bidirectional(&mut io, &mut upstream).await.ok();
        to
    });

    let tcp = TcpStream::connect(front_addr).await.unwrap();
    let mut session = connect(tcp, c.member.ck_public(), PortKind::Client, None)
        .await
        .unwrap();
    assert_eq!(target_results.recv().await.unwrap(), Ok(()));
    session.write_all(b"via the front").await.unwrap();
    session.flush().await.unwrap();
    let mut buf = [0u8; 13];
    session.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"via the front");
    session.shutdown().await.unwrap();
    drop(session);
    assert_eq!(relayed.await.unwrap(), "member");
}

#[tokio::test]
async fn a_routing_preamble_is_refused_on_the_cluster_port() {
    let c = cluster();
    let (addr, mut results) = serve(&c, PortKind::Cluster).await;
    let hello = member_hello(&c);
    assert_eq!(
        refusal(
            addr,
            &[&route_preamble(c.server.ck_public())[..], &hello].concat(),
            &mut results
        )
        .await,
        "unexpected_type"
    );
}

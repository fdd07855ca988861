//! The sidecar under hostile traffic, with real sidecar processes and real sockets: what
//! outsiders on the client port can no longer take from members, how every refusal looks
//! on the wire, and what the application learns when a session does not end cleanly.

mod support;

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use xlattice_protocol::{
    handshake::{self, ClientSecrets},
    Identity, NodeIdBits, PortKind, Role, RsaBits, SecureStream,
};

use support::*;

fn ended(port: &str, ending: &str) -> String {
    format!(r#"xlattice_sidecar_sessions_ended_total{{port="{port}",ending="{ending}"}}"#)
}

fn refused(port: &str, reason: &str) -> String {
    format!(r#"xlattice_sidecar_handshakes_total{{port="{port}",result="error",reason="{reason}"}}"#)
}

/// A client session to `host`'s client port, run by hand so the test keeps the raw socket
/// and can do to it what an attacker would.
async fn raw_client_session(c: &Cluster, member: usize) -> (TcpStream, handshake::SessionKeys) {
    let directory = directory_index(c);
    let ck = &directory.by_name(&c.members[member].name).unwrap().ck;
    let (hello, pending) = handshake::client_hello(ck, PortKind::Client, None, ClientSecrets::random()).unwrap();
    let mut tcp = TcpStream::connect(format!("{}:{CLIENT_PORT}", c.members[member].host))
        .await
        .unwrap();
    tcp.write_all(&hello).await.unwrap();
    let mut reply = [0u8; handshake::REPLY_LEN];
    tcp.read_exact(&mut reply).await.unwrap();
    (tcp, pending.finish(&reply).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_slow_connections_hold_no_handshake_slot() {
    // One slot per port and a 3 s deadline: before slots waited for the hello, the first
    // silent connection held the only slot until its deadline and every hello behind it
    // timed out.
    let c = cluster_with(
        50,
        &[
            "--max-client-handshakes",
            "1",
            "--max-cluster-handshakes",
            "1",
            "--handshake-timeout",
            "3s",
            // All these come from one address; the per-source limit has a test of its own.
            "--max-client-pending-per-source",
            "0",
        ],
    )
    .await;
    let m0 = &c.members[0];
    let mut idle = Vec::new();
    for i in 0..300 {
        let port = if i % 3 == 0 { CLUSTER_PORT } else { CLIENT_PORT };
        let mut tcp = TcpStream::connect(format!("{}:{port}", m0.host)).await.unwrap();
        if i % 2 == 0 {
            // Slow: the start of a header, then nothing.
            tcp.write_all(b"XL\x01").await.unwrap();
        }
        idle.push(tcp);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    // A client and a member each get through well inside the deadline the idle ones hold.
    let mut session = open_client(&c, "m0", Duration::from_secs(2))
        .await
        .expect("a client handshake behind 300 idle connections");
    assert_eq!(line_exchange(&mut session, "hi").await, "m0/client: hi");
    let (status, mut tcp) = connect_via(&c.members[1], "m0", CLUSTER_PORT).await;
    assert_eq!(status, "HTTP/1.1 200 Connection Established");
    assert_eq!(line_exchange(&mut tcp, "member").await, "m0/cluster: member");

    // At the deadline the idle connections are reset, counted as timeouts.
    assert_refused(&mut idle[1], "a silent connection at its deadline").await;
    assert_refused(&mut idle[0], "a slow connection at its deadline").await;
    wait_metric_above(&[&m0.host], &refused("client", "timeout"), &[199]).await;
    wait_metric_above(&[&m0.host], &refused("cluster", "timeout"), &[99]).await;
    assert_eq!(line_exchange(&mut session, "still").await, "m0/client: still");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_cannot_hold_more_than_its_share_of_the_client_port() {
    let c = cluster_with(100, &["--max-client-pending-per-source", "10"]).await;
    let m0 = &c.members[0];
    let from = |ip: &str| {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
        socket
    };
    let address = format!("{}:{CLIENT_PORT}", m0.host).parse().unwrap();
    let mut silent = Vec::new();
    for _ in 0..10 {
        silent.push(from("127.0.1.1").connect(address).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let eleventh = from("127.0.1.1").connect(address).await;
    assert_connect_refused(eleventh, "an 11th silent connection from one address").await;
    wait_metric_above(&[&m0.host], &refused("client", "source_busy"), &[0]).await;

    // Another address is not held back, nor is the first once its hellos arrive.
    let ck = directory_index(&c).by_name("m0").unwrap().ck.clone();
    let tcp = from("127.0.1.2").connect(address).await.unwrap();
    let mut session = xlattice_protocol::connect(tcp, &ck, PortKind::Client, None)
        .await
        .unwrap();
    assert_eq!(line_exchange(&mut session, "other").await, "m0/client: other");
    drop(silent);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let tcp = from("127.0.1.1").connect(address).await.unwrap();
    let mut session = xlattice_protocol::connect(tcp, &ck, PortKind::Client, None)
        .await
        .unwrap();
    assert_eq!(line_exchange(&mut session, "again").await, "m0/client: again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_flood_pauses_its_own_listener_and_no_other() {
    let c = cluster_with(100, &["--max-client-pending-per-source", "1"]).await;
    let m0 = &c.members[0];
    let address: std::net::SocketAddr = format!("{}:{CLIENT_PORT}", m0.host).parse().unwrap();
    let from = |ip: &str| {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
        socket
    };
    let _held = from("127.0.1.1").connect(address).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Four loops reconnecting as fast as they are reset: hundreds of refusals a second.
    let flood: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(async move {
                for _ in 0..100 {
                    let tcp = from("127.0.1.1").connect(address).await;
                    assert_connect_refused(tcp, "a connection past its source's share").await;
                }
            })
        })
        .collect();
    // Meanwhile members still reach m0, and another client still gets in (behind the flood).
    let (status, mut tcp) = connect_via(&c.members[1], "m0", CLUSTER_PORT).await;
    assert_eq!(status, "HTTP/1.1 200 Connection Established");
    assert_eq!(line_exchange(&mut tcp, "member").await, "m0/cluster: member");
    let ck = directory_index(&c).by_name("m0").unwrap().ck.clone();
    let other = from("127.0.1.2").connect(address).await.unwrap();
    let mut session = tokio::time::timeout(
        Duration::from_secs(5),
        xlattice_protocol::connect(other, &ck, PortKind::Client, None),
    )
    .await
    .expect("another client waits behind the flood, but gets in")
    .unwrap();
    assert_eq!(line_exchange(&mut session, "other").await, "m0/client: other");
    for loop_ in flood {
        loop_.await.unwrap();
    }
    let paused = |port: &str| format!(r#"xlattice_sidecar_accept_pauses_total{{port="{port}"}}"#);
    assert!(metric(&m0.host, &refused("client", "source_busy")).await >= 400);
    assert!(
        metric(&m0.host, &paused("client")).await >= 1,
        "the flood paused the client port"
    );
    assert_eq!(
        metric(&m0.host, &paused("cluster")).await,
        0,
        "and not the cluster port"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_client_pool_leaves_members_and_the_app_their_own() {
    let c = cluster_with(60, &["--max-client-connections", "20"]).await;
    let m0 = &c.members[0];
    let mut sessions = Vec::new();
    for i in 0..20 {
        let mut session = open_client(&c, "m0", Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            line_exchange(&mut session, &i.to_string()).await,
            format!("m0/client: {i}")
        );
        sessions.push(session);
    }
    // The 21st client connection is reset at once, before it can send anything (the reset
    // may even beat the connect's own completion).
    let extra = TcpStream::connect(format!("{}:{CLIENT_PORT}", m0.host)).await;
    assert_connect_refused(extra, "a client connection past the pool").await;
    assert!(metric(&m0.host, r#"xlattice_sidecar_refused_connections_total{port="client"}"#).await >= 1);

    // Members still reach m0 on the cluster port, and m0's app still reaches its peers.
    let (status, mut tcp) = connect_via(&c.members[1], "m0", CLUSTER_PORT).await;
    assert_eq!(status, "HTTP/1.1 200 Connection Established");
    assert_eq!(line_exchange(&mut tcp, "member").await, "m0/cluster: member");
    let (status, mut out) = connect_via(m0, "m2", CLUSTER_PORT).await;
    assert_eq!(status, "HTTP/1.1 200 Connection Established");
    assert_eq!(line_exchange(&mut out, "out").await, "m2/cluster: out");

    // A client session that ends frees its place.
    let mut first = sessions.remove(0);
    first.shutdown().await.unwrap();
    let mut rest = Vec::new();
    first.read_to_end(&mut rest).await.unwrap();
    wait_metric_above(&[&m0.host], &ended("client", "clean"), &[0]).await;
    // The place is given back when the session's task ends, just after the count: retry.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut again = loop {
        match open_client(&c, "m0", Duration::from_secs(5)).await {
            Ok(session) => break session,
            Err(error) => assert!(std::time::Instant::now() < deadline, "no place came free: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(line_exchange(&mut again, "again").await, "m0/client: again");

    // The client port's threads run at nice 10, every other thread at 0: when both want the
    // CPU, the kernel runs the members' first.
    let pid = m0.process.as_ref().unwrap().id();
    let threads = thread_priorities(pid);
    let (client, other): (Vec<_>, Vec<_>) = threads.iter().partition(|(name, _)| name == "xlattice-client");
    assert!(!client.is_empty(), "no client-port thread in {threads:?}");
    assert!(client.iter().all(|(_, nice)| *nice == 10), "{threads:?}");
    assert!(other.iter().all(|(_, nice)| *nice == 0), "{threads:?}");
}

/// (name, nice value) of every thread of `pid`, from /proc.
fn thread_priorities(pid: u32) -> Vec<(String, i64)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .map(|task| {
            let dir = task.unwrap().path();
            let name = std::fs::read_to_string(dir.join("comm")).unwrap().trim().to_string();
            // The 19th field of stat is the nice value; fields count after the ")" that
            // ends the thread's name (which may hold spaces).
            let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
            let after_name = &stat[stat.rfind(')').unwrap() + 2..];
            let nice = after_name.split(' ').nth(16).unwrap().parse().unwrap();
            (name, nice)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sessions_have_an_idle_timeout_of_their_own() {
    let c = cluster_with(70, &["--client-idle-timeout", "1s"]).await;
    let m0 = &c.members[0];
    let app = app_key(&m0.host, "client");
    let seen = app_endings(&app);
    let mut session = open_client(&c, "m0", Duration::from_secs(5)).await.unwrap();
    assert_eq!(line_exchange(&mut session, "hi").await, "m0/client: hi");
    let (_, mut member) = connect_via(&c.members[1], "m0", CLUSTER_PORT).await;
    assert_eq!(line_exchange(&mut member, "hi").await, "m0/cluster: hi");

    // The idle client session is closed and its app connection reset; the member's
    // session, just as idle, lives on under the cluster port's hour.
    assert_eq!(app_ending(&app, seen).await, "ConnectionReset");
    wait_metric_above(&[&m0.host], &ended("client", "idle"), &[0]).await;
    let mut rest = Vec::new();
    assert!(session.read_to_end(&mut rest).await.is_err(), "not a clean end");
    assert_eq!(line_exchange(&mut member, "later").await, "m0/cluster: later");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_application_learns_how_a_session_ended_and_every_ending_is_counted() {
    let c = cluster(80).await;
    let m0 = &c.members[0];
    let tag = &app_key(&m0.host, "client");

    // Clean: the client closes in order; the app gets end of stream.
    let seen = app_endings(tag);
    let (mut tcp, keys) = raw_client_session(&c, 0).await;
    let mut session = SecureStream::new(&mut tcp, &keys, Role::Client, None);
    assert_eq!(line_exchange(&mut session, "clean").await, "m0/client: clean");
    session.shutdown().await.unwrap();
    let mut rest = Vec::new();
    session.read_to_end(&mut rest).await.unwrap();
    assert_eq!(app_ending(tag, seen).await, "end of stream");
    wait_metric_above(&[&m0.host], &ended("client", "clean"), &[0]).await;

    // Truncated: the TCP connection ends without a close record; the app gets a reset,
    // and the bytes the session carried are counted all the same.
    let bytes_in = r#"xlattice_sidecar_bytes_total{port="client",direction="in"}"#;
    let before = metric(&m0.host, bytes_in).await;
    let (mut tcp, keys) = raw_client_session(&c, 0).await;
    let mut session = SecureStream::new(&mut tcp, &keys, Role::Client, None);
    assert_eq!(line_exchange(&mut session, "cut").await, "m0/client: cut");
    drop(session);
    tcp.shutdown().await.unwrap();
    assert_eq!(app_ending(tag, seen + 1).await, "ConnectionReset");
    wait_metric_above(&[&m0.host], &ended("client", "truncated"), &[0]).await;
    assert_eq!(metric(&m0.host, bytes_in).await, before + 4, "'cut\\n' counted");

    // Forged: a record that fails authentication; the app gets a reset, and so does the
    // sender.
    let (mut tcp, keys) = raw_client_session(&c, 0).await;
    let mut session = SecureStream::new(&mut tcp, &keys, Role::Client, None);
    assert_eq!(line_exchange(&mut session, "forge").await, "m0/client: forge");
    drop(session);
    let mut forged = vec![0x00, 0x20];
    forged.extend_from_slice(&[0x5a; 0x20]);
    tcp.write_all(&forged).await.unwrap();
    assert_eq!(app_ending(tag, seen + 2).await, "ConnectionReset");
    wait_metric_above(&[&m0.host], &ended("client", "forged"), &[0]).await;
    let mut rest = Vec::new();
    let end = tcp.read_to_end(&mut rest).await;
    assert_eq!(
        end.map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::ConnectionReset)
    );

    // A record length out of bounds is counted as such.
    let (mut tcp, _keys) = raw_client_session(&c, 0).await;
    tcp.write_all(&[0xff, 0xff]).await.unwrap();
    wait_metric_above(&[&m0.host], &ended("client", "bad_length"), &[0]).await;
    assert_eq!(app_ending(tag, seen + 3).await, "ConnectionReset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_looks_the_same_on_the_wire() {
    let c = cluster(90).await;
    let m0 = &c.members[0];
    let directory = directory_index(&c);
    let ck = &directory.by_name("m0").unwrap().ck;
    let outsider = Identity::generate(NodeIdBits::B256, RsaBits::B2048).unwrap();
    let member = &c.members[1].identity;
    let hello = |port, who: Option<&Identity>, secrets| handshake::client_hello(ck, port, who, secrets).unwrap().0;
    let stale = ClientSecrets {
        timestamp: ClientSecrets::random().timestamp - 3600,
        ..ClientSecrets::random()
    };
    let mut wrong_size = hello(PortKind::Client, None, ClientSecrets::random());
    wrong_size[4..6].copy_from_slice(&384u16.to_be_bytes());
    let cases: Vec<(&str, u16, Vec<u8>, &str)> = vec![
        ("garbage", CLUSTER_PORT, vec![0xff; 4096], "bad_magic"),
        (
            "a header and no more",
            CLIENT_PORT,
            b"XL\x01\x01\x01\x00\x00\x00".to_vec(),
            "timeout",
        ),
        ("a key of the wrong size", CLIENT_PORT, wrong_size, "bad_length"),
        (
            "a stale clock",
            CLUSTER_PORT,
            hello(PortKind::Cluster, Some(member), stale),
            "clock_skew",
        ),
        (
            "an outsider",
            CLUSTER_PORT,
            hello(PortKind::Cluster, Some(&outsider), ClientSecrets::random()),
            "not_member",
        ),
        (
            "the other port's hello",
            CLIENT_PORT,
            hello(PortKind::Cluster, Some(member), ClientSecrets::random()),
            "bad_length",
        ),
    ];
    for (what, port, bytes, reason) in cases {
        let label = if port == CLUSTER_PORT { "cluster" } else { "client" };
        let before = metric(&m0.host, &refused(label, reason)).await;
        let mut tcp = TcpStream::connect(format!("{}:{port}", m0.host)).await.unwrap();
        tcp.write_all(&bytes).await.unwrap();
        assert_refused(&mut tcp, what).await;
        wait_metric_above(&[&m0.host], &refused(label, reason), &[before]).await;
    }
}

//! Real sidecar processes on loopback, each on its own address in front of an echo
//! application, real identities and directory files, real TCP.

mod support;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use xlattice_protocol::{
    client, handshake, Identity, MemberDirectory, MemberRecord, NodeIdBits, PortKind, RsaBits, Target,
};

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_members_and_outsiders() {
    let c = cluster(20).await;
    let directory = directory_index(&c);

    // A client with no identity, on the client port of every member.
    for m in &c.members {
        let target = Target {
            member: &m.name,
            port: PortKind::Client,
            address: None,
            identity: None,
            post_quantum: Default::default(),
        };
        let mut session = client::open(&directory, target, Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            line_exchange(&mut session, "hi").await,
            format!("{}/client: hi", m.name)
        );
    }

    // A bulk transfer draws on the buffer budget, and gives everything back once the
    // session goes quiet.
    let mut session = client::open(
        &directory,
        Target {
            member: "m2",
            port: PortKind::Client,
            address: None,
            identity: None,
            post_quantum: Default::default(),
        },
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let host = c.members[2].host.clone();
    let sampling = tokio::spawn(async move {
        let mut most = 0;
        loop {
            most = most.max(metric(&host, BUFFER_BYTES).await);
            if most > 0 {
                return most;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let line = "x".repeat(4 << 20);
    let expected = format!("m2/client: {line}\n");
    for _ in 0..8 {
        session.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        session.flush().await.unwrap();
        let mut back = vec![0u8; expected.len()];
        session.read_exact(&mut back).await.unwrap();
        assert!(back == expected.as_bytes());
        if sampling.is_finished() {
            break;
        }
    }
    let most = tokio::time::timeout(Duration::from_secs(10), sampling)
        .await
        .expect("buffers grew during bulk transfers")
        .unwrap();
    assert!(most > 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&c.members[2].host, BUFFER_BYTES).await > 0 {
        assert!(Instant::now() < deadline, "a quiet session still holds buffers");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(session);

    // Through a load-balanced address a session may land on another member: m0 relays
    // a session addressed to m1, unopened, and m1 answers.
    let target = Target {
        member: "m1",
        port: PortKind::Client,
        address: Some(&format!("{}:{CLIENT_PORT}", c.members[0].host)),
        identity: None,
        post_quantum: Default::default(),
    };
    let mut session = client::open(&directory, target, Duration::from_secs(5)).await.unwrap();
    assert_eq!(line_exchange(&mut session, "via m0").await, "m1/client: via m0");
    drop(session);
    wait_metric_above(&[&c.members[0].host], RELAYED, &[0]).await;
    // A preamble naming a key no member holds is dropped, with nothing sent back.
    let mut tcp = TcpStream::connect(format!("{}:{CLIENT_PORT}", c.members[0].host))
        .await
        .unwrap();
    tcp.write_all(&[b'X', b'L', 1, 3, 0, 1, 2, 3, 4, 5, 6, 7])
        .await
        .unwrap();
    assert_refused(&mut tcp, "a preamble for no member").await;
    wait_metric_above(&[&c.members[0].host], RELAY_UNKNOWN, &[0]).await;

    // Member m0's app reaches m1 and m2 on the private port through its own sidecar,
    // by name and by NodeID.
    let (status, mut tcp) = connect_via(&c.members[0], "m1", CLUSTER_PORT).await;
    assert_eq!(status, "HTTP/1.1 200 Connection Established");
    assert_eq!(line_exchange(&mut tcp, "peer hello").await, "m1/cluster: peer hello");
    let m2_id = c.members[2].identity.node_id.to_string();
    let (status, mut tcp2) = connect_via(&c.members[0], &m2_id, CLUSTER_PORT).await;
    assert_eq!(status, "HTTP/1.1 200 Connection Established");
    assert_eq!(line_exchange(&mut tcp2, "by id").await, "m2/cluster: by id");

    // Bad CONNECT requests get a clear HTTP answer.
    assert_eq!(
        connect_via(&c.members[0], "nobody", CLUSTER_PORT).await.0,
        "HTTP/1.1 404 Not Found"
    );
    assert_eq!(connect_via(&c.members[0], "m1", 9).await.0, "HTTP/1.1 400 Bad Request");

    // An outsider with a real identity is dropped on the cluster port, with nothing
    // sent back, and served on the client port.
    let outsider = Identity::generate(NodeIdBits::B256, RsaBits::B2048).unwrap();
    let target = Target {
        member: "m1",
        port: PortKind::Cluster,
        address: None,
        identity: Some(&outsider),
        post_quantum: Default::default(),
    };
    let err = client::open(&directory, target, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("connection closed during the handshake"),
        "{err}"
    );
    let (hello, _) = handshake::client_hello(
        &directory.by_name("m1").unwrap().ck,
        PortKind::Cluster,
        Some(&outsider),
        handshake::ClientSecrets::random(),
    )
    .unwrap();
    let mut raw = TcpStream::connect(format!("{}:{CLUSTER_PORT}", c.members[1].host))
        .await
        .unwrap();
    raw.write_all(&hello).await.unwrap();
    assert_refused(&mut raw, "an outsider's hello on the cluster port").await;
    let target = Target {
        member: "m1",
        port: PortKind::Client,
        address: None,
        identity: Some(&outsider),
        post_quantum: Default::default(),
    };
    let mut session = client::open(&directory, target, Duration::from_secs(5)).await.unwrap();
    assert_eq!(line_exchange(&mut session, "outside").await, "m1/client: outside");

    // Garbage on a port closes that connection only; the peer session lives on.
    let mut junk = TcpStream::connect(format!("{}:{CLUSTER_PORT}", c.members[1].host))
        .await
        .unwrap();
    junk.write_all(&[0xffu8; 4096]).await.unwrap();
    assert_refused(&mut junk, "garbage on the cluster port").await;
    assert_eq!(line_exchange(&mut tcp, "still there").await, "m1/cluster: still there");

    // Metrics count what happened, by reason.
    let metrics = http_get(&format!("{}:{ADMIN}", c.members[1].host), "/metrics")
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"xlattice_sidecar_handshakes_total{port="cluster",result="error",reason="not_member"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"xlattice_sidecar_handshakes_total{port="cluster",result="error",reason="bad_magic"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"xlattice_sidecar_open_sessions{port="cluster"} 1"#),
        "{metrics}"
    );

    // A stale directory that puts another key at m0's own address: m0 refuses to relay
    // the session to itself rather than going round in a circle.
    let host = c.members[0].host.clone();
    refuses_loop(&c, "ghost", &format!("{host}:{CLIENT_PORT}")).await;
    // The same address written another way (IPv4-mapped IPv6, as a name resolving here
    // would be): m0 sees where the relay landed and refuses, instead of relaying to itself
    // again and again.
    let looped = metric(&host, RELAY_LOOP).await;
    refuses_loop(&c, "mirror", &format!("[::ffff:{host}]:{CLIENT_PORT}")).await;
    // Refused once, at the first hop: not relayed round and round.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(metric(&c.members[0].host, RELAY_LOOP).await, looped + 1);
}

/// Publishes a member `name` (a fresh key) whose client endpoint is `endpoint`, which leads
/// back to m0, and sends m0 sessions for it until m0 counts a refused relay loop; each is
/// refused with nothing sent.
async fn refuses_loop(c: &Cluster, name: &str, endpoint: &str) {
    let host = &c.members[0].host;
    let before = metric(host, RELAY_LOOP).await;
    let key = Identity::generate(NodeIdBits::B256, RsaBits::B2048).unwrap();
    let shard = MemberDirectory {
        cluster: "test/sidecars".into(),
        members: vec![MemberRecord {
            client_endpoint: Some(endpoint.to_string()),
            ..MemberRecord::for_identity(name, &key)
        }],
    };
    std::fs::write(
        c.dir.join("directory").join(format!("shard-{name}.yaml")),
        shard.to_yaml(),
    )
    .unwrap();
    let preamble = handshake::route_preamble(key.ck_public());
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(host, RELAY_LOOP).await == before {
        assert!(
            Instant::now() < deadline,
            "m0 never refused the loop through {endpoint}"
        );
        let mut tcp = TcpStream::connect(format!("{host}:{CLIENT_PORT}")).await.unwrap();
        tcp.write_all(&preamble).await.unwrap();
        assert_refused(&mut tcp, &format!("a relay to itself through {endpoint}")).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_and_key_changes_apply_without_a_restart() {
    let mut c = cluster(30).await;
    let (status, mut peer_session) = connect_via(&c.members[0], "m1", CLUSTER_PORT).await;
    assert_eq!(status, "HTTP/1.1 200 Connection Established");
    assert_eq!(line_exchange(&mut peer_session, "before").await, "m1/cluster: before");
    let mut client_session = {
        let directory = directory_index(&c);
        let target = Target {
            member: "m1",
            port: PortKind::Client,
            address: None,
            identity: None,
            post_quantum: Default::default(),
        };
        client::open(&directory, target, Duration::from_secs(5)).await.unwrap()
    };

    // Rotate m1's keys (same NodeID) and publish the new directory.
    let owned_hosts: Vec<String> = c.members.iter().map(|m| m.host.clone()).collect();
    let hosts: Vec<&str> = owned_hosts.iter().map(String::as_str).collect();
    let mut before = Vec::new();
    for host in &hosts {
        before.push(metric(host, RELOADS_OK).await);
    }
    let rotated = c.members[1].identity.rotated(RsaBits::B2048).unwrap();
    assert_eq!(rotated.node_id, c.members[1].identity.node_id);
    rotated.save_dir(&c.members[1].identity_dir).unwrap();
    c.members[1].identity = rotated;
    write_directory(&c.dir, &c.members.iter().collect::<Vec<_>>());
    wait_metric_above(&hosts, RELOADS_OK, &before).await;

    // Open sessions finish on their old keys; new ones use the new keys.
    assert_eq!(
        line_exchange(&mut client_session, "old keys").await,
        "m1/client: old keys"
    );
    assert_eq!(
        line_exchange(&mut peer_session, "old keys").await,
        "m1/cluster: old keys"
    );
    let (status, mut fresh) = connect_via(&c.members[0], "m1", CLUSTER_PORT).await;
    assert_eq!(status, "HTTP/1.1 200 Connection Established");
    assert_eq!(line_exchange(&mut fresh, "new keys").await, "m1/cluster: new keys");

    // Remove m0 from the directory: m1 must drop m0's open session and refuse new
    // ones, within seconds, without restarting.
    let removed_at = Instant::now();
    write_directory(&c.dir, &[&c.members[1], &c.members[2]]);
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(5), peer_session.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "m0's session to m1 was not closed: {closed:?}"
    );
    let propagation = removed_at.elapsed();
    assert!(propagation < Duration::from_secs(3), "took {propagation:?}");
    // m0's own sidecar has also reloaded and no longer lists itself, but it still holds
    // its identity; m1 now refuses its proof.
    let (status, _) = connect_via(&c.members[0], "m1", CLUSTER_PORT).await;
    assert_eq!(status, "HTTP/1.1 502 Bad Gateway");

    // A directory that does not parse is refused; the last good one stays in force.
    std::fs::write(c.dir.join("directory").join("shard-bad.yaml"), "members: [").unwrap();
    wait_metric_above(&[&c.members[2].host], RELOADS_ERR, &[0]).await;
    let (status, mut still) = connect_via(&c.members[2], "m1", CLUSTER_PORT).await;
    assert_eq!(status, "HTTP/1.1 200 Connection Established");
    assert_eq!(line_exchange(&mut still, "kept").await, "m1/cluster: kept");
    let metrics = http_get(&format!("{}:{ADMIN}", c.members[2].host), "/metrics")
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"xlattice_sidecar_reloads_total{result="error"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_open_sessions_then_exits() {
    let mut c = cluster(40).await;
    let mut session = open_client(&c, "m0", Duration::from_secs(5)).await.unwrap();
    assert_eq!(line_exchange(&mut session, "a").await, "m0/client: a");

    let mut child = c.members[0].process.take().unwrap();
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    // Stops accepting promptly, but the open session still works.
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(format!("{}:{CLIENT_PORT}", c.members[0].host))
        .await
        .is_ok()
    {
        assert!(Instant::now() < deadline, "still accepting 5 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(line_exchange(&mut session, "b").await, "m0/client: b");
    // Closing it lets the sidecar finish before the drain timeout.
    session.shutdown().await.unwrap();
    drop(session);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "sidecar did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
}

//! Real sidecar processes on loopback, each on its own address in front of an echo
//! application, real identities and directory files, real TCP.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
};
use xlattice_protocol::{
    client, handshake, DirectoryIndex, Identity, MemberDirectory, MemberRecord, NodeIdBits, PortKind, RsaBits, Target,
};

const CLUSTER_PORT: u16 = 7100;
const CLIENT_PORT: u16 = 8100;
const APP_CLUSTER: u16 = 17100;
const APP_CLIENT: u16 = 18100;
const CONNECT: u16 = 15001;
const ADMIN: u16 = 15090;

struct Member {
    name: String,
    host: String,
    identity: Identity,
    identity_dir: PathBuf,
    process: Option<Child>,
}

struct Cluster {
    dir: PathBuf,
    members: Vec<Member>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut p) = m.process.take() {
                let _ = p.kill();
                let _ = p.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An echo app prefixing each line with its name, on both upstream ports.
async fn echo_app(host: &str, name: &str) {
    for (port, kind) in [(APP_CLUSTER, "cluster"), (APP_CLIENT, "client")] {
        let listener = TcpListener::bind((host, port)).await.unwrap();
        let tag = format!("{name}/{kind}");
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let tag = tag.clone();
                tokio::spawn(async move {
                    let (rd, mut wr) = tcp.into_split();
                    let mut lines = BufReader::new(rd).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        if wr.write_all(format!("{tag}: {line}\n").as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
    }
}

/// Publishes the directory as the kubelet lays out the operator's shards: one file per
/// shard (here, per member) in a folder, each a symlink through `..data`, which is swapped
/// atomically; a shard that is gone loses its file.
fn write_directory(dir: &Path, members: &[&Member]) {
    static VERSION: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let folder = dir.join("directory");
    let version = format!("..v{}", VERSION.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    std::fs::create_dir_all(folder.join(&version)).unwrap();
    let shards: Vec<String> = members.iter().map(|m| format!("shard-{}.yaml", m.name)).collect();
    for (m, shard) in members.iter().zip(&shards) {
        let part = MemberDirectory {
            cluster: "test/sidecars".into(),
            members: vec![MemberRecord {
                cluster_endpoint: Some(format!("{}:{CLUSTER_PORT}", m.host)),
                client_endpoint: Some(format!("{}:{CLIENT_PORT}", m.host)),
                ..MemberRecord::for_identity(m.name.clone(), &m.identity)
            }],
        };
        std::fs::write(folder.join(&version).join(shard), part.to_yaml()).unwrap();
    }
    let _ = std::fs::remove_file(folder.join("..data_tmp"));
    std::os::unix::fs::symlink(&version, folder.join("..data_tmp")).unwrap();
    std::fs::rename(folder.join("..data_tmp"), folder.join("..data")).unwrap();
    for entry in std::fs::read_dir(&folder).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && !shards.contains(&name) {
            std::fs::remove_file(folder.join(name)).unwrap();
        }
    }
    for shard in &shards {
        let _ = std::os::unix::fs::symlink(format!("..data/{shard}"), folder.join(shard));
    }
}

fn spawn_sidecar(dir: &Path, m: &Member) -> Child {
    Command::new(env!("CARGO_BIN_EXE_xlattice"))
        .args(["run", "--identity-dir"])
        .arg(&m.identity_dir)
        .arg("--directory")
        .arg(dir.join("directory"))
        .args(["--listen-host", &m.host])
        .args([
            "--cluster-port",
            &CLUSTER_PORT.to_string(),
            "--client-port",
            &CLIENT_PORT.to_string(),
        ])
        .args(["--cluster-upstream", &format!("{}:{APP_CLUSTER}", m.host)])
        .args(["--client-upstream", &format!("{}:{APP_CLIENT}", m.host)])
        .args(["--connect-listen", &format!("{}:{CONNECT}", m.host)])
        .args(["--admin-listen", &format!("{}:{ADMIN}", m.host)])
        .args(["--reload-interval", "200ms", "--drain-timeout", "3s"])
        .env("XLATTICE_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.join(format!("{}.log", m.name))).unwrap(),
        ))
        .spawn()
        .unwrap()
}

async fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut tcp = TcpStream::connect(addr).await.ok()?;
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.ok()?;
    Some(out)
}

async fn wait_ready(host: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(r) = http_get(&format!("{host}:{ADMIN}"), "/readyz").await {
            if r.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("sidecar on {host} not ready");
}

/// The value of a counter line in a sidecar's /metrics (0 when absent).
async fn metric(host: &str, series: &str) -> u64 {
    let body = http_get(&format!("{host}:{ADMIN}"), "/metrics")
        .await
        .unwrap_or_default();
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

const RELOADS_OK: &str = r#"xlattice_sidecar_reloads_total{result="ok"}"#;
const RELOADS_ERR: &str = r#"xlattice_sidecar_reloads_total{result="error"}"#;
const RELAY_LOOP: &str = r#"xlattice_sidecar_handshakes_total{port="client",result="error",reason="relay_loop"}"#;
const RELAY_UNKNOWN: &str =
    r#"xlattice_sidecar_handshakes_total{port="client",result="error",reason="relay_unknown_member"}"#;
const RELAYED: &str = r#"xlattice_sidecar_handshakes_total{port="client",result="relayed",reason=""}"#;
const BUFFER_BYTES: &str = "xlattice_sidecar_buffer_bytes";

/// Waits until `series` on each host exceeds its value in `before`.
async fn wait_metric_above(hosts: &[&str], series: &str, before: &[u64]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for (host, floor) in hosts.iter().zip(before) {
        while metric(host, series).await <= *floor {
            assert!(Instant::now() < deadline, "{host}: {series} stayed at {floor}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Three members on 127.0.0.<base>, <base+1>, <base+2>.
async fn cluster(base: u8) -> Cluster {
    let dir = std::env::temp_dir().join(format!("xl-sidecars-{}-{base}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut members = Vec::new();
    for i in 0..3u8 {
        let name = format!("m{i}");
        let identity = Identity::generate(NodeIdBits::B256, RsaBits::B2048).unwrap();
        let identity_dir = dir.join(&name);
        identity.save_dir(&identity_dir).unwrap();
        let host = format!("127.0.0.{}", base + i);
        echo_app(&host, &name).await;
        members.push(Member {
            name,
            host,
            identity,
            identity_dir,
            process: None,
        });
    }
    write_directory(&dir, &members.iter().collect::<Vec<_>>());
    for member in &mut members {
        member.process = Some(spawn_sidecar(&dir, member));
    }
    for m in &members {
        wait_ready(&m.host).await;
    }
    Cluster { dir, members }
}

fn directory_index(c: &Cluster) -> DirectoryIndex {
    MemberDirectory::read_path(&c.dir.join("directory"))
        .unwrap()
        .index()
        .unwrap()
}

async fn line_exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(s: &mut S, line: &str) -> String {
    s.write_all(format!("{line}\n").as_bytes()).await.unwrap();
    s.flush().await.unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut byte))
            .await
            .expect("reply")
            .unwrap();
        if byte[0] == b'\n' {
            return String::from_utf8(got).unwrap();
        }
        got.push(byte[0]);
    }
}

/// Asks sidecar `via` to open a session to `member` on `port`; returns the status line.
async fn connect_via(via: &Member, member: &str, port: u16) -> (String, TcpStream) {
    let mut tcp = TcpStream::connect(format!("{}:{CONNECT}", via.host)).await.unwrap();
    tcp.write_all(format!("CONNECT {member}:{port} HTTP/1.1\r\nHost: {member}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let status = String::from_utf8_lossy(&head).lines().next().unwrap_or("").to_string();
    (status, tcp)
}

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
    let mut rest = Vec::new();
    tcp.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"");
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
    let mut got = Vec::new();
    raw.read_to_end(&mut got).await.unwrap();
    assert!(
        got.is_empty(),
        "the cluster port answered an outsider with {} bytes",
        got.len()
    );
    let target = Target {
        member: "m1",
        port: PortKind::Client,
        address: None,
        identity: Some(&outsider),
    };
    let mut session = client::open(&directory, target, Duration::from_secs(5)).await.unwrap();
    assert_eq!(line_exchange(&mut session, "outside").await, "m1/client: outside");

    // Garbage on a port closes that connection only; the peer session lives on.
    let mut junk = TcpStream::connect(format!("{}:{CLUSTER_PORT}", c.members[1].host))
        .await
        .unwrap();
    junk.write_all(&[0xffu8; 4096]).await.unwrap();
    let mut got = Vec::new();
    let _ = junk.read_to_end(&mut got).await;
    assert!(got.is_empty());
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
    let ghost = Identity::generate(NodeIdBits::B256, RsaBits::B2048).unwrap();
    let shard = MemberDirectory {
        cluster: "test/sidecars".into(),
        members: vec![MemberRecord {
            client_endpoint: Some(format!("{}:{CLIENT_PORT}", c.members[0].host)),
            ..MemberRecord::for_identity("ghost", &ghost)
        }],
    };
    std::fs::write(c.dir.join("directory").join("shard-ghost.yaml"), shard.to_yaml()).unwrap();
    let preamble = handshake::route_preamble(ghost.ck_public());
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&c.members[0].host, RELAY_LOOP).await == 0 {
        assert!(Instant::now() < deadline, "m0 never refused the loop");
        let mut tcp = TcpStream::connect(format!("{}:{CLIENT_PORT}", c.members[0].host))
            .await
            .unwrap();
        tcp.write_all(&preamble).await.unwrap();
        let mut rest = Vec::new();
        let _ = tcp.read_to_end(&mut rest).await;
        assert_eq!(rest, b"", "nothing is sent back");
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
    let directory = directory_index(&c);
    let target = Target {
        member: "m0",
        port: PortKind::Client,
        address: None,
        identity: None,
    };
    let mut session = client::open(&directory, target, Duration::from_secs(5)).await.unwrap();
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

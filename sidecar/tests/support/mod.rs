//! Shared by the tests that run real sidecar processes on loopback, each on its own
//! address in front of an echo application, with real identities and directory files.
#![allow(dead_code)] // each test binary uses its own part

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
};
use xlattice_protocol::{DirectoryIndex, Identity, MemberDirectory, MemberRecord, NodeIdBits, RsaBits};

pub const CLUSTER_PORT: u16 = 7100;
pub const CLIENT_PORT: u16 = 8100;
pub const APP_CLUSTER: u16 = 17100;
pub const APP_CLIENT: u16 = 18100;
pub const CONNECT: u16 = 15001;
pub const ADMIN: u16 = 15090;

pub struct Member {
    pub name: String,
    pub host: String,
    pub identity: Identity,
    pub identity_dir: PathBuf,
    pub process: Option<Child>,
}

pub struct Cluster {
    pub dir: PathBuf,
    pub members: Vec<Member>,
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

/// How each echo-app connection ended, as (`app_key`, ending): "end of stream", or the
/// kind of the read error ("ConnectionReset"). Tests run at once in one process: the key
/// names the app's address.
pub static APP_ENDINGS: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

/// Names the echo app of `host` on its `kind` ("cluster" or "client") port.
pub fn app_key(host: &str, kind: &str) -> String {
    format!("{host}/{kind}")
}

/// The ending of the next echo-app connection of `tag` to end after `seen` had ended.
pub async fn app_ending(tag: &str, seen: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let endings: Vec<String> = APP_ENDINGS
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t == tag)
            .map(|(_, e)| e.clone())
            .collect();
        if let Some(ending) = endings.get(seen) {
            return ending.clone();
        }
        assert!(Instant::now() < deadline, "{tag}: no connection ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many echo-app connections of `tag` have ended.
pub fn app_endings(tag: &str) -> usize {
    APP_ENDINGS.lock().unwrap().iter().filter(|(t, _)| t == tag).count()
}

/// An echo app prefixing each line with its name, on both upstream ports.
pub async fn echo_app(host: &str, name: &str) {
    for (port, kind) in [(APP_CLUSTER, "cluster"), (APP_CLIENT, "client")] {
        let listener = TcpListener::bind((host, port)).await.unwrap();
        let tag = format!("{name}/{kind}");
        let key = app_key(host, kind);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (tag, key) = (tag.clone(), key.clone());
                tokio::spawn(async move {
                    let (rd, mut wr) = tcp.into_split();
                    let mut lines = BufReader::new(rd).lines();
                    let ending = loop {
                        match lines.next_line().await {
                            Ok(Some(line)) => {
                                if wr.write_all(format!("{tag}: {line}\n").as_bytes()).await.is_err() {
                                    break "write failed".to_string();
                                }
                            }
                            Ok(None) => break "end of stream".to_string(),
                            Err(e) => break format!("{:?}", e.kind()),
                        }
                    };
                    APP_ENDINGS.lock().unwrap().push((key.clone(), ending));
                });
            }
        });
    }
}

/// Publishes the directory as the kubelet lays out the operator's shards: one file per
/// shard (here, per member) in a folder, each a symlink through `..data`, which is swapped
/// atomically; a shard that is gone loses its file.
pub fn write_directory(dir: &Path, members: &[&Member]) {
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

/// Starts `m`'s sidecar with the test defaults, then `extra` flags (which override them).
pub fn spawn_sidecar(dir: &Path, m: &Member, extra: &[&str]) -> Child {
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
        .args(extra)
        .env("XLATTICE_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.join(format!("{}.log", m.name))).unwrap(),
        ))
        .spawn()
        .unwrap()
}

pub async fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut tcp = TcpStream::connect(addr).await.ok()?;
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.ok()?;
    Some(out)
}

pub async fn wait_ready(host: &str) {
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
pub async fn metric(host: &str, series: &str) -> u64 {
    let body = http_get(&format!("{host}:{ADMIN}"), "/metrics")
        .await
        .unwrap_or_default();
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

pub const RELOADS_OK: &str = r#"xlattice_sidecar_reloads_total{result="ok"}"#;
pub const RELOADS_ERR: &str = r#"xlattice_sidecar_reloads_total{result="error"}"#;
pub const RELAY_LOOP: &str = r#"xlattice_sidecar_handshakes_total{port="client",result="error",reason="relay_loop"}"#;
pub const RELAY_UNKNOWN: &str =
    r#"xlattice_sidecar_handshakes_total{port="client",result="error",reason="relay_unknown_member"}"#;
pub const RELAYED: &str = r#"xlattice_sidecar_handshakes_total{port="client",result="relayed",reason=""}"#;
pub const BUFFER_BYTES: &str = "xlattice_sidecar_buffer_bytes";

/// Waits until `series` on each host exceeds its value in `before`.
pub async fn wait_metric_above(hosts: &[&str], series: &str, before: &[u64]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for (host, floor) in hosts.iter().zip(before) {
        while metric(host, series).await <= *floor {
            assert!(Instant::now() < deadline, "{host}: {series} stayed at {floor}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Three members on 127.0.0.<base>, <base+1>, <base+2>.
pub async fn cluster(base: u8) -> Cluster {
    cluster_with(base, &[]).await
}

/// `cluster`, each sidecar started with `extra` flags.
pub async fn cluster_with(base: u8, extra: &[&str]) -> Cluster {
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
        member.process = Some(spawn_sidecar(&dir, member, extra));
    }
    for m in &members {
        wait_ready(&m.host).await;
    }
    Cluster { dir, members }
}

pub fn directory_index(c: &Cluster) -> DirectoryIndex {
    MemberDirectory::read_path(&c.dir.join("directory"))
        .unwrap()
        .index()
        .unwrap()
}

pub async fn line_exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(s: &mut S, line: &str) -> String {
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
pub async fn connect_via(via: &Member, member: &str, port: u16) -> (String, TcpStream) {
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

/// Reads what `tcp` sends until it ends, and asserts that it sent nothing and ended in a
/// reset: how the sidecar refuses every connection, whatever the reason.
pub async fn assert_refused(tcp: &mut TcpStream, what: &str) {
    let mut got = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut got))
        .await
        .unwrap_or_else(|_| panic!("{what}: still open after 10 s"));
    assert!(got.is_empty(), "{what}: {} bytes were sent back", got.len());
    let kind = end
        .map(|_| "end of stream".to_string())
        .unwrap_or_else(|e| format!("{:?}", e.kind()));
    assert_eq!(kind, "ConnectionReset", "{what}: a refusal ends in a reset");
}

/// `assert_refused` for a connection the sidecar may reset before its connect completes.
pub async fn assert_connect_refused(connected: std::io::Result<TcpStream>, what: &str) {
    match connected {
        Ok(mut tcp) => assert_refused(&mut tcp, what).await,
        Err(error) => assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{what}"),
    }
}

/// An anonymous client session to `member` on its client port, at its directory endpoint.
pub async fn open_client(
    c: &Cluster,
    member: &str,
    timeout: Duration,
) -> Result<xlattice_protocol::SecureStream<TcpStream>, xlattice_protocol::ClientError> {
    let target = xlattice_protocol::Target {
        member,
        port: xlattice_protocol::PortKind::Client,
        address: None,
        identity: None,
        post_quantum: Default::default(),
    };
    xlattice_protocol::client::open(&directory_index(c), target, timeout).await
}

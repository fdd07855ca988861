//! Data-path benchmarks of a real sidecar process, each against a baseline measured
//! in the same run:
//!   throughput   client library -> sidecar -> app  vs  direct TCP to the app
//!   latency      64-byte echo round trips (p50/p99) through the sidecar vs direct
//!   memory       sidecar RSS idle and with N idle sessions open
//!
//! Run: cargo bench -p xlattice-sidecar --bench datapath
//! Env: XL_BENCH_MIB (default 1024), XL_BENCH_ROUNDS (5), XL_BENCH_ECHOES (20000), XL_BENCH_SESSIONS (1000),
//!      XL_BENCH_SIDECAR_THREADS (sidecar worker threads, default 2)

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use xlattice_protocol::{client, Identity, MemberDirectory, MemberRecord, NodeIdBits, PortKind, RsaBits, Target};

const HOST: &str = "127.0.0.1";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn free_port() -> u16 {
    TcpListener::bind((HOST, 0)).await.unwrap().local_addr().unwrap().port()
}

/// The app: on the sink port it counts bytes to EOF and answers the count; on the
/// echo port it echoes.
async fn start_app() -> (u16, u16) {
    let sink = TcpListener::bind((HOST, 0)).await.unwrap();
    let echo = TcpListener::bind((HOST, 0)).await.unwrap();
    let ports = (sink.local_addr().unwrap().port(), echo.local_addr().unwrap().port());
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = sink.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                let mut total = 0u64;
                loop {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => total += n as u64,
                    }
                }
                let _ = tcp.write_all(&total.to_be_bytes()).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    tokio::spawn(async move {
        loop {
            let (tcp, _) = echo.accept().await.unwrap();
            tcp.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    ports
}

struct Sidecar {
    child: Child,
    directory: xlattice_protocol::DirectoryIndex,
    _dir: tempdir::TempDir,
}

mod tempdir {
    pub struct TempDir(pub std::path::PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sidecar {
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

/// One sidecar whose client port leads to `upstream` on the app.
async fn start_sidecar(upstream: u16) -> Sidecar {
    let dir = std::env::temp_dir().join(format!("xl-bench-{}-{upstream}", std::process::id()));
    let identity = Identity::generate(NodeIdBits::B256, RsaBits::B2048).unwrap();
    identity.save_dir(&dir.join("identity")).unwrap();
    let (cluster_port, client_port, connect, admin) = (
        free_port().await,
        free_port().await,
        free_port().await,
        free_port().await,
    );
    let record = MemberRecord {
        client_endpoint: Some(format!("{HOST}:{client_port}")),
        cluster_endpoint: Some(format!("{HOST}:{cluster_port}")),
        ..MemberRecord::for_identity("bench-0", &identity)
    };
    let directory = MemberDirectory {
        cluster: "bench/c".into(),
        members: vec![record],
    };
    std::fs::write(dir.join("directory.yaml"), directory.to_yaml()).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_xlattice"))
        .arg("run")
        .arg("--identity-dir")
        .arg(dir.join("identity"))
        .arg("--directory")
        .arg(dir.join("directory.yaml"))
        .args(["--listen-host", HOST, "--cluster-port", &cluster_port.to_string()])
        .args(["--client-port", &client_port.to_string()])
        .args([
            "--cluster-upstream",
            &format!("{HOST}:{upstream}"),
            "--client-upstream",
            &format!("{HOST}:{upstream}"),
        ])
        .args([
            "--connect-listen",
            &format!("{HOST}:{connect}"),
            "--admin-listen",
            &format!("{HOST}:{admin}"),
        ])
        .args(["--max-connections", "100000"])
        .env("XLATTICE_LOG", "warn")
        .env(
            "XLATTICE_WORKER_THREADS",
            std::env::var("XL_BENCH_SIDECAR_THREADS").unwrap_or_else(|_| "2".into()),
        )
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect((HOST, client_port)).await.is_err() {
        assert!(Instant::now() < deadline, "sidecar did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    Sidecar {
        child,
        directory: directory.index().unwrap(),
        _dir: tempdir::TempDir(dir),
    }
}

async fn open(sidecar: &Sidecar) -> xlattice_protocol::SecureStream<TcpStream> {
    let target = Target {
        member: "bench-0",
        port: PortKind::Client,
        address: None,
        identity: None,
    };
    client::open(&sidecar.directory, target, Duration::from_secs(10))
        .await
        .unwrap()
}

/// Sends `total` bytes and waits for the sink's count; returns MiB/s.
async fn upload<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, total: usize) -> f64 {
    let chunk = vec![0x5au8; 256 * 1024];
    let started = Instant::now();
    let mut sent = 0;
    while sent < total {
        let n = chunk.len().min(total - sent);
        stream.write_all(&chunk[..n]).await.unwrap();
        sent += n;
    }
    stream.shutdown().await.unwrap();
    let mut count = [0u8; 8];
    stream.read_exact(&mut count).await.unwrap();
    assert_eq!(u64::from_be_bytes(count), total as u64);
    total as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64()
}

async fn echo_latencies<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, count: usize) -> Vec<Duration> {
    let msg = [0x42u8; 64];
    let mut back = [0u8; 64];
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        stream.write_all(&msg).await.unwrap();
        stream.flush().await.unwrap();
        stream.read_exact(&mut back).await.unwrap();
        out.push(t.elapsed());
    }
    out.sort();
    out
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// User plus system CPU time of a process so far, from /proc (clock ticks of 10 ms).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p) as usize]
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing: run small then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mib = if quick { 16 } else { env_or("XL_BENCH_MIB", 1024) };
        let echoes = if quick { 200 } else { env_or("XL_BENCH_ECHOES", 20_000) };
        let sessions = if quick { 50 } else { env_or("XL_BENCH_SESSIONS", 1000) };
        let (sink_port, echo_port) = start_app().await;

        println!("xlattice sidecar data path (sidecar: separate process; client and app: this process, 1 worker)");
        // Throughput: interleaved rounds, the median of each path. CPU time (this
        // process plus the sidecar) per GiB is steadier than wall time on a shared
        // two-core machine, so it is reported too.
        let sidecar = start_sidecar(sink_port).await;
        let rounds = if quick { 1 } else { env_or("XL_BENCH_ROUNDS", 5) };
        let (mut direct, mut via) = (Vec::new(), Vec::new());
        let (mut direct_cpu, mut via_cpu) = (0f64, 0f64);
        for _ in 0..rounds {
            let cpu = cpu_seconds(std::process::id());
            let tcp = TcpStream::connect((HOST, sink_port)).await.unwrap();
            direct.push(upload(tcp, mib << 20).await);
            direct_cpu += cpu_seconds(std::process::id()) - cpu;
            let cpu = cpu_seconds(std::process::id()) + cpu_seconds(sidecar.child.id());
            via.push(upload(open(&sidecar).await, mib << 20).await);
            via_cpu += cpu_seconds(std::process::id()) + cpu_seconds(sidecar.child.id()) - cpu;
        }
        let gib = (rounds * mib) as f64 / 1024.0;
        let (direct, via) = (median(&mut direct), median(&mut via));
        println!(
            "throughput  direct TCP        {direct:>9.0} MiB/s   cpu {:>5.0} ms/GiB",
            direct_cpu / gib * 1e3
        );
        println!(
            "throughput  via sidecar       {via:>9.0} MiB/s   cpu {:>5.0} ms/GiB   ratio {:.2} (median of {rounds})",
            via_cpu / gib * 1e3,
            via / direct
        );
        drop(sidecar);

        let sidecar = start_sidecar(echo_port).await;
        let tcp = TcpStream::connect((HOST, echo_port)).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let d = echo_latencies(tcp, echoes).await;
        let v = echo_latencies(open(&sidecar).await, echoes).await;
        println!(
            "echo 64 B   direct p50 {:>7.1} us  p99 {:>7.1} us",
            pct(&d, 0.5).as_secs_f64() * 1e6,
            pct(&d, 0.99).as_secs_f64() * 1e6
        );
        println!(
            "echo 64 B   via    p50 {:>7.1} us  p99 {:>7.1} us   added p50 {:.1} us, p99 {:.1} us",
            pct(&v, 0.5).as_secs_f64() * 1e6,
            pct(&v, 0.99).as_secs_f64() * 1e6,
            (pct(&v, 0.5).as_secs_f64() - pct(&d, 0.5).as_secs_f64()) * 1e6,
            (pct(&v, 0.99).as_secs_f64() - pct(&d, 0.99).as_secs_f64()) * 1e6,
        );

        let idle = sidecar.rss_kib();
        let mut open_sessions = Vec::with_capacity(sessions);
        for _ in 0..sessions {
            let mut s = open(&sidecar).await;
            // One exchange so both legs (client and app) are fully established.
            s.write_all(b"x").await.unwrap();
            s.flush().await.unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.unwrap();
            open_sessions.push(s);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let loaded = sidecar.rss_kib();
        println!("memory      sidecar RSS idle  {:>7.1} MiB", idle as f64 / 1024.0);
        println!(
            "memory      with {sessions} idle sessions {:>7.1} MiB   {:.1} KiB per session",
            loaded as f64 / 1024.0,
            (loaded.saturating_sub(idle)) as f64 / sessions as f64
        );
        drop(open_sessions);
    });
}

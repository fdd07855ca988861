//! The sidecar under attack, one real sidecar process: a member's handshake latency (p50,
//! p99) and success rate on the cluster port while outsiders attack the client port,
//! against the same with no attack, measured in the same round; and the sidecar's RSS
//! before, at the peak of, and after each attack.
//!
//! Attacks (each on the client port, from this process):
//!   silent       2,000 connections that send nothing, reopened as soon as they are closed
//!   slow         300 connections sending a hello one byte every 100 ms
//!   pool         anonymous sessions opened and kept idle until the client pool is full
//!   hellos       8 loops of complete client handshakes, back to back (RSA work)
//!   partial      1,000 sessions each stalled inside a 16 KiB record
//!
//! Run: cargo bench -p xlattice-sidecar --bench attacks
//! Env: XL_BENCH_ROUNDS (3), XL_BENCH_HANDSHAKES (200 per phase), XL_BENCH_SIDECAR_BIN

use std::{
    process::{Child, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use xlattice_protocol::{
    connect, handshake, DirectoryIndex, Identity, MemberDirectory, MemberRecord, NodeIdBits, PortKind, RsaBits,
};

mod common;

use common::{env_or, free_port, rss_kib, sidecar_command, Ports, HOST};

const ATTACKS: [&str; 5] = ["silent", "slow", "pool", "hellos", "partial"];

struct Sidecar {
    child: Child,
    cluster: u16,
    client: u16,
    directory: DirectoryIndex,
    member: Identity,
    dir: std::path::PathBuf,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Sidecar {
    /// A sidecar with the injected defaults and the webhook's 128 MiB memory limit, in
    /// front of an echo app; `member` is another member of its directory.
    fn start(app: u16) -> Self {
        let dir = std::env::temp_dir().join(format!("xl-attacks-{}", std::process::id()));
        let server = Identity::generate(NodeIdBits::B256, RsaBits::B2048).unwrap();
        let member = Identity::generate(NodeIdBits::B256, RsaBits::B2048).unwrap();
        server.save_dir(&dir.join("identity")).unwrap();
        let (cluster, client) = (free_port(), free_port());
        let directory = MemberDirectory {
            cluster: "bench/attacks".into(),
            members: vec![
                MemberRecord {
                    client_endpoint: Some(format!("{HOST}:{client}")),
                    cluster_endpoint: Some(format!("{HOST}:{cluster}")),
                    ..MemberRecord::for_identity("bench-0", &server)
                },
                MemberRecord::for_identity("bench-1", &member),
            ],
        };
        std::fs::write(dir.join("directory.yaml"), directory.to_yaml()).unwrap();
        let ports = Ports {
            cluster,
            client,
            connect: free_port(),
            admin: free_port(),
            upstream: app,
        };
        let child = sidecar_command(&dir, &ports)
            .args(["--memory-limit-mib", "128"])
            .env("XLATTICE_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect((HOST, cluster)).is_err() {
            assert!(Instant::now() < deadline, "sidecar did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        Self {
            child,
            cluster,
            client,
            directory: directory.index().unwrap(),
            member,
            dir,
        }
    }

    fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id())
    }

    fn ck(&self) -> &xlattice_protocol::PublicKey {
        &self.directory.by_name("bench-0").unwrap().ck
    }
}

/// An echo app that answers each line.
async fn echo_app(listener: TcpListener) {
    loop {
        let Ok((mut tcp, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = tcp.read(&mut buf).await {
                if n == 0 || tcp.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Runs `attack` on its own thread and runtime (one worker) until `stop`.
fn launch(attack: &'static str, sidecar: &Sidecar, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let (client, ck) = (sidecar.client, sidecar.ck().clone());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let tasks: Vec<_> = match attack {
                "silent" => (0..2000).map(|_| tokio::spawn(silent(client, stop.clone()))).collect(),
                "slow" => (0..300)
                    .map(|_| tokio::spawn(slow(client, ck.clone(), stop.clone())))
                    .collect(),
                "pool" => (0..1100)
                    .map(|_| tokio::spawn(idle_session(client, ck.clone(), stop.clone(), false)))
                    .collect(),
                "hellos" => (0..8)
                    .map(|_| tokio::spawn(hellos(client, ck.clone(), stop.clone())))
                    .collect(),
                "partial" => (0..1000)
                    .map(|_| tokio::spawn(idle_session(client, ck.clone(), stop.clone(), true)))
                    .collect(),
                _ => Vec::new(),
            };
            for task in tasks {
                let _ = task.await;
            }
        });
    })
}

async fn until(stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Connects and sends nothing; reconnects as soon as the sidecar lets go.
async fn silent(port: u16, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut tcp) = TcpStream::connect((HOST, port)).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let mut byte = [0u8; 1];
        tokio::select! {
            _ = tcp.read(&mut byte) => {}
            _ = until(&stop) => return,
        }
    }
}

/// A real hello, sent one byte every 100 ms.
async fn slow(port: u16, ck: xlattice_protocol::PublicKey, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let (hello, _) =
            handshake::client_hello(&ck, PortKind::Client, None, handshake::ClientSecrets::random()).unwrap();
        let Ok(mut tcp) = TcpStream::connect((HOST, port)).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        for byte in hello {
            if stop.load(Ordering::Relaxed) || tcp.write_all(&[byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Opens an anonymous session and keeps it; with `partial`, first sends the header of a
/// 16 KiB record and one byte of it, then stalls. Reopens when the sidecar closes it.
async fn idle_session(port: u16, ck: xlattice_protocol::PublicKey, stop: Arc<AtomicBool>, partial: bool) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(tcp) = TcpStream::connect((HOST, port)).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let Ok(mut session) = connect(tcp, &ck, PortKind::Client, None).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if partial {
            // Below the record layer: a length of 16,401 and the first byte of the body.
            let raw = session.get_ref();
            let _ = raw.writable().await;
            let _ = raw.try_write(&[0x40, 0x11, 0x00]);
        }
        let mut buf = [0u8; 64];
        tokio::select! {
            _ = session.read(&mut buf) => {}
            _ = until(&stop) => return,
        }
    }
}

/// Complete client handshakes, back to back.
async fn hellos(port: u16, ck: xlattice_protocol::PublicKey, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        if let Ok(tcp) = TcpStream::connect((HOST, port)).await {
            let _ = tokio::time::timeout(Duration::from_secs(5), connect(tcp, &ck, PortKind::Client, None)).await;
        }
    }
}

/// `count` member handshakes on the cluster port, one after another, each with its own
/// 5 s deadline: the latencies of those that completed, and how many failed.
fn member_handshakes(sidecar: &Sidecar, count: usize, peak_rss: &AtomicU64) -> (Vec<Duration>, usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut ok, mut failed) = (Vec::new(), 0);
        for _ in 0..count {
            let started = Instant::now();
            let attempt = async {
                let tcp = TcpStream::connect((HOST, sidecar.cluster)).await?;
                connect(tcp, sidecar.ck(), PortKind::Cluster, Some(&sidecar.member))
                    .await
                    .map_err(std::io::Error::other)
            };
            match tokio::time::timeout(Duration::from_secs(5), attempt).await {
                Ok(Ok(_session)) => ok.push(started.elapsed()),
                _ => failed += 1,
            }
            peak_rss.fetch_max(sidecar.rss_kib(), Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (ok, failed)
    })
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::MAX;
    }
    sorted[((sorted.len() as f64 - 1.0) * p) as usize]
}

struct Phase {
    p50: Duration,
    p99: Duration,
    success: f64,
    rss_before: u64,
    rss_peak: u64,
    rss_after: u64,
}

fn run_phase(sidecar: &Sidecar, attack: Option<&'static str>, count: usize) -> Phase {
    let rss_before = sidecar.rss_kib();
    let stop = Arc::new(AtomicBool::new(false));
    let attacker = attack.map(|a| launch(a, sidecar, stop.clone()));
    if attacker.is_some() {
        std::thread::sleep(Duration::from_secs(2)); // let the attack build up
    }
    let peak = AtomicU64::new(rss_before);
    let (mut ok, failed) = member_handshakes(sidecar, count, &peak);
    stop.store(true, Ordering::Relaxed);
    if let Some(attacker) = attacker {
        attacker.join().unwrap();
    }
    // The sidecar lets go of what the attack held: sessions close, and its memory trim
    // (every 5 s) returns the pages.
    std::thread::sleep(Duration::from_secs(6));
    ok.sort();
    Phase {
        p50: pct(&ok, 0.5),
        p99: pct(&ok, 0.99),
        success: ok.len() as f64 / (ok.len() + failed) as f64,
        rss_before,
        rss_peak: peak.load(Ordering::Relaxed),
        rss_after: sidecar.rss_kib(),
    }
}

fn ms(d: Duration) -> String {
    if d == Duration::MAX {
        "-".into()
    } else {
        format!("{:.2}", d.as_secs_f64() * 1e3)
    }
}

fn main() {
    let rounds = env_or("XL_BENCH_ROUNDS", 3);
    let count = env_or("XL_BENCH_HANDSHAKES", 200);
    let app = std::net::TcpListener::bind((HOST, 0)).unwrap();
    let app_port = app.local_addr().unwrap().port();
    app.set_nonblocking(true).unwrap();
    let app_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    app_rt.spawn(async move { echo_app(TcpListener::from_std(app).unwrap()).await });
    let sidecar = Sidecar::start(app_port);

    println!(
        "member handshakes on the cluster port while the client port is attacked; {count} per phase, {rounds} rounds"
    );
    println!(
        "{:<8} {:>5} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>10}",
        "attack", "round", "p50 ms", "p99 ms", "p99/quiet", "success", "RSS MiB", "peak MiB", "after MiB"
    );
    let mut ratios: Vec<(&str, Vec<f64>)> = ATTACKS.iter().map(|a| (*a, Vec::new())).collect();
    let mut worst_success: f64 = 1.0;
    let mut worst_peak = 0u64;
    for round in 0..rounds {
        let quiet = run_phase(&sidecar, None, count);
        let show = |name: &str, p: &Phase, ratio: f64| {
            println!(
                "{:<8} {:>5} {:>9} {:>9} {:>9.2} {:>8.1}% {:>10.1} {:>10.1} {:>10.1}",
                name,
                round,
                ms(p.p50),
                ms(p.p99),
                ratio,
                p.success * 100.0,
                p.rss_before as f64 / 1024.0,
                p.rss_peak as f64 / 1024.0,
                p.rss_after as f64 / 1024.0
            )
        };
        show("quiet", &quiet, 1.0);
        // Rotate the order each round so no attack always follows the same one.
        for i in 0..ATTACKS.len() {
            let attack = ATTACKS[(i + round) % ATTACKS.len()];
            let phase = run_phase(&sidecar, Some(attack), count);
            let ratio = phase.p99.as_secs_f64() / quiet.p99.as_secs_f64();
            show(attack, &phase, ratio);
            ratios.iter_mut().find(|(a, _)| *a == attack).unwrap().1.push(ratio);
            worst_success = worst_success.min(phase.success);
            worst_peak = worst_peak.max(phase.rss_peak);
        }
    }
    println!();
    for (attack, r) in &ratios {
        let (lo, hi) = r.iter().fold((f64::MAX, 0f64), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
        println!(
            "{attack:<8} member p99 / quiet p99: {lo:.2}-{hi:.2} over {} rounds",
            r.len()
        );
    }
    println!(
        "worst member success rate {:.1}%; highest sidecar RSS {:.1} MiB (memory limit 128 MiB, buffer budget 64 MiB)",
        worst_success * 100.0,
        worst_peak as f64 / 1024.0
    );
}

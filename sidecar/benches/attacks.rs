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
//! Where each party runs (`XL_BENCH_PIN`, default 1): the sidecar, the member and the app
//! share CPU 0, and the attacker has CPU 1 to itself, as if it were another machine. An
//! attacker in production spends its own CPU, not the victim's; on this 2-core machine an
//! unpinned attacker at the members' priority takes CPU from the member's own client code as
//! well as from the sidecar, which measures the machine, not the sidecar's admission. With
//! `XL_BENCH_PIN=0` every party floats over both cores, as before. Each attack phase also
//! prints its rate (connections or hellos the attacker started per second), so a placement
//! that weakened the attack would show.
//!
//! Run: cargo bench -p xlattice-sidecar --bench attacks
//! Env: XL_BENCH_ROUNDS (3), XL_BENCH_HANDSHAKES (200 per phase), XL_BENCH_PIN (1),
//!      XL_BENCH_SIDECAR_BIN

use std::{
    os::unix::process::CommandExt,
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
    /// front of an echo app; `member` is another member of its directory. `cpu` binds it,
    /// every thread included, to one CPU.
    fn start(app: u16, cpu: Option<usize>) -> Self {
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
        let mut command = sidecar_command(&dir, &ports);
        command
            .args(["--memory-limit-mib", "128"])
            .env("XLATTICE_LOG", "error")
            .stdout(Stdio::null());
        if let Some(cpu) = cpu {
            // SAFETY: between fork and exec the closure only makes one system call and
            // allocates nothing.
            unsafe { command.pre_exec(move || set_affinity(cpu)) };
        }
        let child = command.spawn().unwrap();
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

/// What an attack's tasks share: when to stop, and how many connections they have opened.
#[derive(Default)]
struct Attacker {
    stop: AtomicBool,
    opened: AtomicU64,
}

// === impl Attacker ===

impl Attacker {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// A connection to the client port, counted; `None` (after a short pause) when refused.
    async fn connect(&self, port: u16) -> Option<TcpStream> {
        self.opened.fetch_add(1, Ordering::Relaxed);
        match TcpStream::connect((HOST, port)).await {
            Ok(tcp) => Some(tcp),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                None
            }
        }
    }

    async fn until_stopped(&self) {
        while !self.stopped() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Runs `attack` on its own thread and runtime (one worker, on the attacker's CPU when
/// pinned) until told to stop.
fn launch(
    attack: &'static str,
    sidecar: &Sidecar,
    attacker: Arc<Attacker>,
    cpu: Option<usize>,
) -> std::thread::JoinHandle<()> {
    let (client, ck) = (sidecar.client, sidecar.ck().clone());
    std::thread::spawn(move || {
        if let Some(cpu) = cpu {
            pin_thread(cpu);
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let a = &attacker;
            let tasks: Vec<_> = match attack {
                "silent" => (0..2000).map(|_| tokio::spawn(silent(client, a.clone()))).collect(),
                "slow" => (0..300)
                    .map(|_| tokio::spawn(slow(client, ck.clone(), a.clone())))
                    .collect(),
                "pool" => (0..1100)
                    .map(|_| tokio::spawn(idle_session(client, ck.clone(), a.clone(), false)))
                    .collect(),
                "hellos" => (0..8)
                    .map(|_| tokio::spawn(hellos(client, ck.clone(), a.clone())))
                    .collect(),
                "partial" => (0..1000)
                    .map(|_| tokio::spawn(idle_session(client, ck.clone(), a.clone(), true)))
                    .collect(),
                _ => Vec::new(),
            };
            for task in tasks {
                let _ = task.await;
            }
        });
    })
}

/// Connects and sends nothing; reconnects as soon as the sidecar lets go.
async fn silent(port: u16, a: Arc<Attacker>) {
    while !a.stopped() {
        let Some(mut tcp) = a.connect(port).await else { continue };
        let mut byte = [0u8; 1];
        tokio::select! {
            _ = tcp.read(&mut byte) => {}
            _ = a.until_stopped() => return,
        }
    }
}

/// A real hello, sent one byte every 100 ms.
async fn slow(port: u16, ck: xlattice_protocol::PublicKey, a: Arc<Attacker>) {
    while !a.stopped() {
        let (hello, _) =
            handshake::client_hello(&ck, PortKind::Client, None, handshake::ClientSecrets::random()).unwrap();
        let Some(mut tcp) = a.connect(port).await else { continue };
        for byte in hello {
            if a.stopped() || tcp.write_all(&[byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Opens an anonymous session and keeps it; with `partial`, first sends the header of a
/// 16 KiB record and one byte of it, then stalls. Reopens when the sidecar closes it.
async fn idle_session(port: u16, ck: xlattice_protocol::PublicKey, a: Arc<Attacker>, partial: bool) {
    while !a.stopped() {
        let Some(tcp) = a.connect(port).await else { continue };
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
            _ = a.until_stopped() => return,
        }
    }
}

/// Complete client handshakes, back to back.
async fn hellos(port: u16, ck: xlattice_protocol::PublicKey, a: Arc<Attacker>) {
    while !a.stopped() {
        if let Some(tcp) = a.connect(port).await {
            let _ = tokio::time::timeout(Duration::from_secs(5), connect(tcp, &ck, PortKind::Client, None)).await;
        }
    }
}

/// Binds the calling thread (and the threads it starts later) to one CPU.
fn pin_thread(cpu: usize) {
    set_affinity(cpu).unwrap_or_else(|e| panic!("cannot pin to CPU {cpu}: {e}"));
}

/// Pins the calling thread (pid 0) to `cpu`; no allocation, so it is safe after fork.
fn set_affinity(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET and sched_setaffinity read and
    // write only that set, and pid 0 is the calling thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
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
    /// Connections the attacker opened per second.
    rate: f64,
    rss_before: u64,
    rss_peak: u64,
    rss_after: u64,
}

fn run_phase(sidecar: &Sidecar, attack: Option<&'static str>, count: usize, attacker_cpu: Option<usize>) -> Phase {
    let rss_before = sidecar.rss_kib();
    let attacker = Arc::new(Attacker::default());
    let started = Instant::now();
    let thread = attack.map(|a| launch(a, sidecar, attacker.clone(), attacker_cpu));
    if thread.is_some() {
        std::thread::sleep(Duration::from_secs(2)); // let the attack build up
    }
    let peak = AtomicU64::new(rss_before);
    let (mut ok, failed) = member_handshakes(sidecar, count, &peak);
    attacker.stop.store(true, Ordering::Relaxed);
    let rate = attacker.opened.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    if let Some(thread) = thread {
        thread.join().unwrap();
    }
    // The sidecar lets go of what the attack held: sessions close, and its memory trim
    // (every 5 s) returns the pages.
    std::thread::sleep(Duration::from_secs(6));
    ok.sort();
    Phase {
        p50: pct(&ok, 0.5),
        p99: pct(&ok, 0.99),
        success: ok.len() as f64 / (ok.len() + failed) as f64,
        rate,
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
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pinned = env_or("XL_BENCH_PIN", 1) == 1 && cpus >= 2;
    if pinned {
        // This thread runs the member; the app's and the sidecar's threads inherit CPU 0.
        pin_thread(0);
    }
    let (victim_cpu, attacker_cpu) = if pinned { (Some(0), Some(1)) } else { (None, None) };
    let app = std::net::TcpListener::bind((HOST, 0)).unwrap();
    let app_port = app.local_addr().unwrap().port();
    app.set_nonblocking(true).unwrap();
    let app_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    app_rt.spawn(async move { echo_app(TcpListener::from_std(app).unwrap()).await });
    let sidecar = Sidecar::start(app_port, victim_cpu);

    println!(
        "member handshakes on the cluster port while the client port is attacked; {count} per phase, {rounds} rounds, \
         each attack against a quiet phase just before it; {}",
        if pinned {
            "sidecar, member and app on CPU 0, attacker on CPU 1 (XL_BENCH_PIN=0: unpinned)"
        } else {
            "unpinned: every party on every CPU"
        }
    );
    println!(
        "{:<8} {:>5} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10}",
        "attack", "round", "p50 ms", "p99 ms", "p99/quiet", "success", "conns/s", "RSS MiB", "peak MiB", "after MiB"
    );
    let show = |name: &str, round: usize, p: &Phase, ratio: f64| {
        println!(
            "{:<8} {:>5} {:>9} {:>9} {:>9.2} {:>8.1}% {:>10.0} {:>10.1} {:>10.1} {:>10.1}",
            name,
            round,
            ms(p.p50),
            ms(p.p99),
            ratio,
            p.success * 100.0,
            p.rate,
            p.rss_before as f64 / 1024.0,
            p.rss_peak as f64 / 1024.0,
            p.rss_after as f64 / 1024.0
        )
    };
    let mut ratios: Vec<(&str, Vec<f64>)> = ATTACKS.iter().map(|a| (*a, Vec::new())).collect();
    let mut worst_success: f64 = 1.0;
    let mut worst_peak = 0u64;
    for round in 0..rounds {
        // Rotate the order each round so no attack always follows the same one.
        for i in 0..ATTACKS.len() {
            let attack = ATTACKS[(i + round) % ATTACKS.len()];
            let quiet = run_phase(&sidecar, None, count, None);
            show("quiet", round, &quiet, 1.0);
            let phase = run_phase(&sidecar, Some(attack), count, attacker_cpu);
            let ratio = phase.p99.as_secs_f64() / quiet.p99.as_secs_f64();
            show(attack, round, &phase, ratio);
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

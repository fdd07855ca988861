//! Data-path benchmarks of a real sidecar process, each against a baseline measured
//! in the same run:
//!   throughput   client library -> sidecar -> app, and back (download), vs direct TCP to the app and vs a
//!                plaintext TCP relay (client -> relay -> app): the extra hop any sidecar adds
//!   member path  app A -> sidecar A (HTTP CONNECT) -> sidecar B's cluster port -> app B, and
//!                back, vs direct app A -> app B TCP and vs two plaintext relays chained (app
//!                -> relay -> relay -> app): the path members use to talk to each other
//!   latency      64-byte echo round trips (p50/p99) through the sidecar vs direct
//!   memory       sidecar RSS idle and with N idle sessions open
//!
//! Run: cargo bench -p xlattice-sidecar --bench datapath
//! Env: XL_BENCH_MIB (default 1024), XL_BENCH_ROUNDS (9), XL_BENCH_ECHOES (20000), XL_BENCH_SESSIONS (1000),
//!      XL_BENCH_SIDECAR_THREADS (sidecar worker threads, default 2),
//!      XL_BENCH_SIDECAR_BIN (another sidecar binary, to compare builds)

use std::{
    future::Future,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use xlattice_protocol::{client, Identity, MemberDirectory, MemberRecord, NodeIdBits, PortKind, RsaBits, Target};

mod common;

use common::{env_or, free_port, rss_kib, sidecar_command, Ports, Usage, HOST};

const DIRECT: usize = 0;
const VIA_SIDECAR: usize = 1;
const VIA_RELAY: usize = 2;

/// The app: on the sink port it counts bytes to EOF and answers the count; on the
/// echo port it echoes; on the source port it sends as many bytes as the 8-byte count
/// it is sent asks for.
async fn start_app() -> (u16, u16, u16) {
    let sink = TcpListener::bind((HOST, 0)).await.unwrap();
    let echo = TcpListener::bind((HOST, 0)).await.unwrap();
    let source = TcpListener::bind((HOST, 0)).await.unwrap();
    let ports = (
        sink.local_addr().unwrap().port(),
        echo.local_addr().unwrap().port(),
        source.local_addr().unwrap().port(),
    );
    serve_each(source, serve_source);
    serve_each(sink, serve_sink);
    serve_each(echo, serve_echo);
    ports
}

/// Accepts on `listener` for good, each connection served by `serve` in a task of its own.
fn serve_each<F, Fut>(listener: TcpListener, serve: F)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(serve(tcp));
        }
    });
}

/// Sends as many bytes as the 8-byte count it is sent first asks for, then ends.
async fn serve_source(mut tcp: TcpStream) {
    let mut count = [0u8; 8];
    if tcp.read_exact(&mut count).await.is_err() {
        return;
    }
    let chunk = vec![0xa5u8; 256 * 1024];
    let mut left = u64::from_be_bytes(count) as usize;
    while left > 0 {
        let n = left.min(chunk.len());
        if tcp.write_all(&chunk[..n]).await.is_err() {
            return;
        }
        left -= n;
    }
    let _ = tcp.shutdown().await;
}

/// Counts the bytes it is sent up to EOF and answers the count.
async fn serve_sink(mut tcp: TcpStream) {
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
}

async fn serve_echo(tcp: TcpStream) {
    tcp.set_nodelay(true).unwrap();
    let (mut r, mut w) = tcp.into_split();
    let _ = tokio::io::copy(&mut r, &mut w).await;
}

/// A plaintext TCP relay in its own process (this binary again, see `main`), shaped like
/// the sidecar: same worker threads, same largest buffer. What it costs is what the second
/// loopback hop costs any sidecar, before any cryptography.
struct Relay {
    child: Child,
    port: u16,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const RELAY_ENV: &str = "XL_BENCH_RELAY_UPSTREAM";
/// The sidecar's largest buffer each way (its record batches and proxy buffer).
const RELAY_BUFFER: usize = 1024 * 1024;

fn start_relay(upstream: u16) -> Relay {
    use std::io::BufRead;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(RELAY_ENV, upstream.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    Relay {
        child,
        port: line.trim().parse().expect("relay prints its port"),
    }
}

fn run_relay(upstream: u16) {
    let threads = env_or("XL_BENCH_SIDECAR_THREADS", 2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = TcpListener::bind((HOST, 0)).await.unwrap();
        println!("{}", listener.local_addr().unwrap().port());
        loop {
            let (mut inbound, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut app = TcpStream::connect((HOST, upstream)).await.unwrap();
                let _ =
                    tokio::io::copy_bidirectional_with_sizes(&mut inbound, &mut app, RELAY_BUFFER, RELAY_BUFFER).await;
            });
        }
    });
}

struct Sidecar {
    child: Child,
    directory: xlattice_protocol::DirectoryIndex,
    ports: Ports,
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
    /// Stops the sidecar as Kubernetes would (SIGTERM), so a wrapper given as
    /// XL_BENCH_SIDECAR_BIN (valgrind, strace) sees it exit and writes its report; killed
    /// if it has not gone after a few seconds.
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid, which we have not yet waited for.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sidecar {
    fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id())
    }
}

/// One sidecar whose client port leads to `upstream` on the app.
async fn start_sidecar(upstream: u16) -> Sidecar {
    let (identity, ports, record) = new_member("bench-0", upstream);
    let directory = MemberDirectory {
        cluster: "bench/c".into(),
        members: vec![record],
    };
    spawn_sidecar(&identity, ports, &directory).await
}

/// A new member `name`: its identity, its sidecar's ports (both upstreams `upstream`) and
/// the record the directory lists it by.
fn new_member(name: &str, upstream: u16) -> (Identity, Ports, MemberRecord) {
    let identity = Identity::generate(NodeIdBits::B256, RsaBits::B2048).unwrap();
    let ports = Ports {
        cluster: free_port(),
        client: free_port(),
        connect: free_port(),
        admin: free_port(),
        upstream,
    };
    let record = MemberRecord {
        client_endpoint: Some(format!("{HOST}:{}", ports.client)),
        cluster_endpoint: Some(format!("{HOST}:{}", ports.cluster)),
        ..MemberRecord::for_identity(name, &identity)
    };
    (identity, ports, record)
}

/// `xlattice run` as the member with `identity` on `ports`, knowing the members of
/// `directory`; returns once its client port answers.
async fn spawn_sidecar(identity: &Identity, ports: Ports, directory: &MemberDirectory) -> Sidecar {
    // Named by its cluster port: two sidecars may run at once, each with its own files.
    let dir = std::env::temp_dir().join(format!("xl-bench-{}-{}", std::process::id(), ports.cluster));
    identity.save_dir(&dir.join("identity")).unwrap();
    std::fs::write(dir.join("directory.yaml"), directory.to_yaml()).unwrap();
    let child = sidecar_command(&dir, &ports)
        .args(["--max-client-connections", "100000", "--max-client-handshakes", "64"])
        .env("XLATTICE_LOG", "warn")
        .env(
            "XLATTICE_WORKER_THREADS",
            std::env::var("XL_BENCH_SIDECAR_THREADS").unwrap_or_else(|_| "2".into()),
        )
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect((HOST, ports.client)).await.is_err() {
        assert!(Instant::now() < deadline, "sidecar did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    Sidecar {
        child,
        directory: directory.index().unwrap(),
        ports,
        _dir: tempdir::TempDir(dir),
    }
}

async fn open(sidecar: &Sidecar) -> xlattice_protocol::SecureStream<TcpStream> {
    let target = Target {
        member: "bench-0",
        port: PortKind::Client,
        address: None,
        identity: None,
        post_quantum: Default::default(),
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

/// Asks the source for `total` bytes and reads them to EOF; returns MiB/s.
async fn download<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, total: usize) -> f64 {
    let started = Instant::now();
    stream.write_all(&(total as u64).to_be_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0;
    loop {
        match stream.read(&mut buf).await.unwrap() {
            0 => break,
            n => got += n,
        }
    }
    assert_eq!(got, total);
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

/// The other direction: the app sends, the client library reads; direct, via the sidecar
/// and via the plaintext relay, in rotated order. The relay's CPU per GiB here against
/// upload's says what the direction costs any relay, before any cryptography.
async fn download_rounds(source_port: u16, rounds: usize, mib: usize, gib: f64) {
    let (sidecar, relay) = (start_sidecar(source_port).await, start_relay(source_port));
    let pids = [std::process::id(), sidecar.child.id(), relay.child.id()];
    let (mut mibs, mut middle) = ([Vec::new(), Vec::new(), Vec::new()], [Usage::default(); 3]);
    let mut sched = [[Sched::default(); 3]; 3];
    let (mut via_ratios, mut relay_ratios) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let mut speed = [0f64; 3];
        for k in 0..3 {
            let path = (round + k) % 3;
            let before = Usage::of(pids[path]);
            let sched_before = pids.map(Sched::of);
            speed[path] = match path {
                DIRECT => download(TcpStream::connect((HOST, source_port)).await.unwrap(), mib << 20).await,
                VIA_SIDECAR => download(open(&sidecar).await, mib << 20).await,
                _ => download(TcpStream::connect((HOST, relay.port)).await.unwrap(), mib << 20).await,
            };
            Usage::of(pids[path]).add_since(&before, &mut middle[path]);
            let sched_after = pids.map(Sched::of);
            for (p, used) in sched[path].iter_mut().enumerate() {
                sched_after[p].add_since(&sched_before[p], used);
            }
            mibs[path].push(speed[path]);
        }
        via_ratios.push(speed[VIA_SIDECAR] / speed[DIRECT]);
        relay_ratios.push(speed[VIA_SIDECAR] / speed[VIA_RELAY]);
    }
    let [direct, via, plain] = mibs.map(|mut m| median(&mut m));
    println!("download    direct {direct:.0} MiB/s, via sidecar {via:.0} MiB/s, via relay {plain:.0} MiB/s");
    for (name, ratios) in [("via/direct", &mut via_ratios), ("via/relay ", &mut relay_ratios)] {
        println!("download    {}", ratio_line(name, ratios));
    }
    println!("download    sidecar alone {}", middle[VIA_SIDECAR].per_gib(gib));
    println!("download    relay alone   {}", middle[VIA_RELAY].per_gib(gib));
    println!(
        "download    sidecar sched {}",
        sched[VIA_SIDECAR][VIA_SIDECAR].per_gib(gib)
    );
    println!(
        "download    client+app, via sidecar, sched {}",
        sched[VIA_SIDECAR][DIRECT].per_gib(gib)
    );
}

// The member-to-member path's two directions: app A sends to app B (UP), and app B sends
// back to app A over the same path (DOWN). The byte app A sends first tells app B which: a
// member's cluster upstream is one port, so its app cannot be told by port.
const UP: usize = 0;
const DOWN: usize = 1;
const MODES: [u8; 2] = [b'u', b'd'];
/// App A's peer in the directory.
const MEMBER_B: &str = "bench-1";

/// App B: one port, a sink or a source by the first byte of each connection.
async fn start_member_app() -> u16 {
    let listener = TcpListener::bind((HOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    serve_each(listener, |mut tcp: TcpStream| async move {
        let mut mode = [0u8];
        if tcp.read_exact(&mut mode).await.is_err() {
            return;
        }
        if mode[0] == MODES[UP] {
            serve_sink(tcp).await
        } else {
            serve_source(tcp).await
        }
    });
    port
}

/// Everything the member path runs through. DIRECT, VIA_SIDECAR and VIA_RELAY name its
/// paths too: app A -> app B, app A -> sidecar A -> sidecar B -> app B, and app A ->
/// relay -> relay -> app B. Both apps are this process, as both ends are in the other benches.
struct Members {
    app: u16,
    a: Sidecar,
    b: Sidecar,
    relays: [Relay; 2],
}

/// Processes whose CPU the member path counts, by their index in `Members::pids`.
const APPS: usize = 0;
const SIDECAR_A: usize = 1;
const SIDECAR_B: usize = 2;
const RELAY_1: usize = 3;
const RELAY_2: usize = 4;

impl Members {
    /// Two members in one directory, so each sidecar accepts the other on its cluster
    /// port; both upstreams lead to app B. The relays are chained in front of app B.
    async fn start() -> Self {
        let app = start_member_app().await;
        let (a, a_ports, a_record) = new_member("bench-0", app);
        let (b, b_ports, b_record) = new_member(MEMBER_B, app);
        let directory = MemberDirectory {
            cluster: "bench/c".into(),
            members: vec![a_record, b_record],
        };
        let (a, b) = (
            spawn_sidecar(&a, a_ports, &directory).await,
            spawn_sidecar(&b, b_ports, &directory).await,
        );
        let second = start_relay(app);
        let first = start_relay(second.port);
        Members {
            app,
            a,
            b,
            relays: [first, second],
        }
    }

    fn pids(&self) -> [u32; 5] {
        let [first, second] = &self.relays;
        [
            std::process::id(),
            self.a.child.id(),
            self.b.child.id(),
            first.child.id(),
            second.child.id(),
        ]
    }

    /// One transfer of `mib` MiB in `direction` over `path`; returns MiB/s. The CONNECT and
    /// its handshake come before the clock starts, as `open` does for the other benches.
    async fn transfer(&self, direction: usize, path: usize, mib: usize) -> f64 {
        let mut stream = match path {
            DIRECT => TcpStream::connect((HOST, self.app)).await.unwrap(),
            VIA_SIDECAR => connect_via(&self.a, MEMBER_B).await,
            _ => TcpStream::connect((HOST, self.relays[0].port)).await.unwrap(),
        };
        stream.write_all(&[MODES[direction]]).await.unwrap();
        match direction {
            UP => upload(stream, mib << 20).await,
            _ => download(stream, mib << 20).await,
        }
    }
}

/// What an application does to reach another member: CONNECT on its own sidecar's
/// outbound listener, naming the member and the cluster port (its own sidecar's number for
/// it; the sidecar dials the member's cluster endpoint from the directory).
async fn connect_via(sidecar: &Sidecar, member: &str) -> TcpStream {
    let mut tcp = TcpStream::connect((HOST, sidecar.ports.connect)).await.unwrap();
    let request = format!(
        "CONNECT {member}:{} HTTP/1.1\r\nHost: {member}\r\n\r\n",
        sidecar.ports.cluster
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    // Byte by byte up to the blank line, so that not one byte of the stream is read here.
    let (mut head, mut byte) = (Vec::new(), [0u8]);
    while !head.ends_with(b"\r\n\r\n") {
        let n = tcp.read(&mut byte).await.unwrap();
        assert_eq!(
            n,
            1,
            "CONNECT: sidecar closed after {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200 "),
        "CONNECT refused: {:?}",
        String::from_utf8_lossy(&head)
    );
    tcp
}

/// What the member path measured: MiB/s by direction, path and round, and what every
/// process used by direction and path.
#[derive(Default)]
struct MemberFigures {
    mibs: [[Vec<f64>; 3]; 2],
    usage: [[[Usage; 5]; 3]; 2],
    sched: [[[Sched; 5]; 3]; 2],
}

/// The member path in rounds, each one transfer per direction and path; the directions
/// alternate which goes first and the paths rotate within each, so that nothing always
/// runs first on a machine whose speed drifts more than the effect measured.
async fn member_rounds(rounds: usize, mib: usize) -> MemberFigures {
    let members = Members::start().await;
    let pids = members.pids();
    let mut figures = MemberFigures::default();
    for round in 0..rounds {
        for direction in [round % 2, 1 - round % 2] {
            for k in 0..3 {
                let path = (round + k) % 3;
                let before = pids.map(Usage::of);
                let sched_before = pids.map(Sched::of);
                let speed = members.transfer(direction, path, mib).await;
                let after = pids.map(Usage::of);
                let sched_after = pids.map(Sched::of);
                for (p, used) in figures.usage[direction][path].iter_mut().enumerate() {
                    after[p].add_since(&before[p], used);
                }
                for (p, used) in figures.sched[direction][path].iter_mut().enumerate() {
                    sched_after[p].add_since(&sched_before[p], used);
                }
                figures.mibs[direction][path].push(speed);
            }
        }
    }
    figures
}

/// Every round's ratios, their medians against the goals, and CPU per GiB of
/// every process that carried the bytes, for one direction.
fn report_member(figures: &MemberFigures, direction: usize, gib: f64) {
    let label = ["member A->B", "member B->A"][direction];
    let [direct, via, relays] = &figures.mibs[direction];
    let (mut to_direct, mut to_relays) = (Vec::new(), Vec::new());
    for round in 0..direct.len() {
        let (d, v, r) = (direct[round], via[round], relays[round]);
        println!(
            "{label} round {}: direct {d:.0} MiB/s, two sidecars {v:.0}, two relays {r:.0}; \
             sidecars/direct {:.2}, sidecars/relays {:.2}",
            round + 1,
            v / d,
            v / r
        );
        to_direct.push(v / d);
        to_relays.push(v / r);
    }
    let [d, v, r] = figures.mibs[direction].clone().map(|mut m| median(&mut m));
    println!("{label} median: direct {d:.0} MiB/s, two sidecars {v:.0}, two relays {r:.0}");
    for (name, ratios, goal) in [
        ("sidecars/direct", &mut to_direct, 0.5),
        ("sidecars/relays", &mut to_relays, 0.85),
    ] {
        println!("{label} {}; goal >= {goal}", ratio_line(name, ratios));
    }
    let usage = &figures.usage[direction];
    println!("{label} sidecar A     {}", usage[VIA_SIDECAR][SIDECAR_A].per_gib(gib));
    println!("{label} sidecar B     {}", usage[VIA_SIDECAR][SIDECAR_B].per_gib(gib));
    println!("{label} relay 1       {}", usage[VIA_RELAY][RELAY_1].per_gib(gib));
    println!("{label} relay 2       {}", usage[VIA_RELAY][RELAY_2].per_gib(gib));
    for (name, path) in [("direct", DIRECT), ("sidecars", VIA_SIDECAR), ("relays", VIA_RELAY)] {
        println!("{label} apps, {name:<8} {}", usage[path][APPS].per_gib(gib));
    }
    let sched = &figures.sched[direction][VIA_SIDECAR];
    for (name, p) in [("sidecar A", SIDECAR_A), ("sidecar B", SIDECAR_B), ("apps     ", APPS)] {
        println!("{label} sched {name} {}", sched[p].per_gib(gib));
    }
}

/// What the scheduler says of every thread of a process so far (/proc/<pid>/task/*/schedstat
/// and status): CPU time to the nanosecond, time spent runnable but waiting for a CPU, and
/// switches split into voluntary (it slept: waiting for I/O) and involuntary (preempted).
/// Whether a slower path waits on its peers or on the CPU is in the split.
#[derive(Clone, Copy, Debug, Default)]
struct Sched {
    run_ns: u64,
    wait_ns: u64,
    voluntary: u64,
    involuntary: u64,
}

// === impl Sched ===

impl Sched {
    fn of(pid: u32) -> Self {
        let mut total = Self::default();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return total;
        };
        for task in tasks.filter_map(Result::ok) {
            if let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) {
                let mut fields = stat.split_whitespace().map(|f| f.parse::<u64>().unwrap_or(0));
                total.run_ns += fields.next().unwrap_or(0);
                total.wait_ns += fields.next().unwrap_or(0);
            }
            if let Ok(status) = std::fs::read_to_string(task.path().join("status")) {
                for line in status.lines() {
                    let value = || line.split_whitespace().nth(1)?.parse::<u64>().ok();
                    if line.starts_with("voluntary_ctxt_switches:") {
                        total.voluntary += value().unwrap_or(0);
                    } else if line.starts_with("nonvoluntary_ctxt_switches:") {
                        total.involuntary += value().unwrap_or(0);
                    }
                }
            }
        }
        total
    }

    /// What was used between `before` and `self`, added to `total`.
    fn add_since(&self, before: &Self, total: &mut Self) {
        total.run_ns += self.run_ns.saturating_sub(before.run_ns);
        total.wait_ns += self.wait_ns.saturating_sub(before.wait_ns);
        total.voluntary += self.voluntary.saturating_sub(before.voluntary);
        total.involuntary += self.involuntary.saturating_sub(before.involuntary);
    }

    fn per_gib(&self, gib: f64) -> String {
        format!(
            "cpu {:.0} ms/GiB exact, run-queue wait {:.0} ms/GiB; {:.0} voluntary, {:.0} involuntary switches per GiB",
            self.run_ns as f64 / 1e6 / gib,
            self.wait_ns as f64 / 1e6 / gib,
            self.voluntary as f64 / gib,
            self.involuntary as f64 / gib
        )
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// One ratio as every section reports it: the median of the rounds' own ratios, and the
/// spread (the machine swings more between runs than within one).
fn ratio_line(name: &str, ratios: &mut [f64]) -> String {
    let mid = median(ratios);
    let (lowest, highest) = (ratios[0], ratios[ratios.len() - 1]);
    format!(
        "ratio {name}  {mid:.2} (median of {} rounds' own ratios; lowest {lowest:.2}, highest {highest:.2})",
        ratios.len()
    )
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p) as usize]
}

fn main() {
    if let Some(upstream) = std::env::var(RELAY_ENV).ok().and_then(|p| p.parse().ok()) {
        return run_relay(upstream);
    }
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
        let (sink_port, echo_port, source_port) = start_app().await;

        println!("xlattice sidecar data path (sidecar: separate process; client and app: this process, 1 worker)");
        // Throughput in rounds of one upload each way, the two paths back to back and
        // in alternating order. The machine's speed drifts by more than the effect being
        // measured (direct alone moves by ±20% between runs here), so the figure is the
        // median of each round's own ratio, which the drift largely cancels. CPU time
        // (this process plus the sidecar) per GiB is reported too.
        let sidecar = start_sidecar(sink_port).await;
        let relay = start_relay(sink_port);
        let rounds = if quick { 1 } else { env_or("XL_BENCH_ROUNDS", 9) };
        // Per path: MiB/s of each round, CPU seconds in all, and each round's ratio to direct.
        let mut mibs = [Vec::new(), Vec::new(), Vec::new()];
        let mut cpu = [0f64; 3];
        // What the middle process alone (sidecar or relay) used: what it costs per GiB.
        let mut middle = [Usage::default(); 3];
        let (mut via_ratios, mut relay_ratios) = (Vec::new(), Vec::new());
        let pids = [std::process::id(), sidecar.child.id(), relay.child.id()];
        let usage_now = || pids.map(Usage::of);
        let mut sched = [[Sched::default(); 3]; 3];
        for round in 0..rounds {
            let mut speed = [0f64; 3];
            // Rotate the order so no path always runs first.
            for k in 0..3 {
                let path = (round + k) % 3;
                let before = usage_now();
                let sched_before = pids.map(Sched::of);
                speed[path] = match path {
                    DIRECT => upload(TcpStream::connect((HOST, sink_port)).await.unwrap(), mib << 20).await,
                    VIA_SIDECAR => upload(open(&sidecar).await, mib << 20).await,
                    _ => upload(TcpStream::connect((HOST, relay.port)).await.unwrap(), mib << 20).await,
                };
                let after = usage_now();
                let sched_after = pids.map(Sched::of);
                for (p, used) in sched[path].iter_mut().enumerate() {
                    sched_after[p].add_since(&sched_before[p], used);
                }
                // This process always; the sidecar or the relay when they carried the bytes.
                if path != DIRECT {
                    let before_cpu = middle[path].cpu();
                    after[path].add_since(&before[path], &mut middle[path]);
                    cpu[path] += middle[path].cpu() - before_cpu;
                }
                cpu[path] += after[0].cpu() - before[0].cpu();
                mibs[path].push(speed[path]);
            }
            via_ratios.push(speed[VIA_SIDECAR] / speed[DIRECT]);
            relay_ratios.push(speed[VIA_SIDECAR] / speed[VIA_RELAY]);
        }
        let gib = (rounds * mib) as f64 / 1024.0;
        let ms_per_gib = cpu.map(|c| c / gib * 1e3);
        let [direct, via, plain] = mibs.map(|mut m| median(&mut m));
        println!(
            "throughput  direct TCP        {direct:>9.0} MiB/s   cpu {:>5.0} ms/GiB",
            ms_per_gib[DIRECT]
        );
        println!(
            "throughput  plaintext relay   {plain:>9.0} MiB/s   cpu {:>5.0} ms/GiB (relay alone {})",
            ms_per_gib[VIA_RELAY],
            middle[VIA_RELAY].per_gib(gib)
        );
        println!(
            "throughput  via sidecar       {via:>9.0} MiB/s   cpu {:>5.0} ms/GiB (sidecar alone {})",
            ms_per_gib[VIA_SIDECAR],
            middle[VIA_SIDECAR].per_gib(gib)
        );
        for (name, ratios) in [("via/direct", &mut via_ratios), ("via/relay ", &mut relay_ratios)] {
            println!("throughput  {}", ratio_line(name, ratios));
        }
        println!(
            "throughput  sidecar sched {}",
            sched[VIA_SIDECAR][VIA_SIDECAR].per_gib(gib)
        );
        println!(
            "throughput  client+app, via sidecar, sched {}",
            sched[VIA_SIDECAR][DIRECT].per_gib(gib)
        );
        drop(relay);
        drop(sidecar);

        download_rounds(source_port, rounds, mib, gib).await;

        // The path members use to talk to each other, both ways, against the same two
        // hops without cryptography: the member path crosses loopback three times.
        let figures = member_rounds(rounds, mib).await;
        report_member(&figures, UP, gib);
        report_member(&figures, DOWN, gib);

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

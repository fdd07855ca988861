//! A toy member application, as a user would write one: plaintext on loopback only, peers
//! reached through the sidecar's HTTP CONNECT proxy. The image `xlattice-member-app` holds
//! it (hack/build-images.sh); the demo and the real-node tests run it in member pods.
//!
//! ```text
//! member_app serve                 greet + echo on 127.0.0.1:$CLUSTER_UPSTREAM and $CLIENT_UPSTREAM
//! member_app hello PEER [MSG]      CONNECT PEER:$CLUSTER_PORT via 127.0.0.1:15001, send MSG, print the reply
//! member_app probe HOST:PORT [MS]  open a TCP connection, print open|refused|timeout (exit 0|1|2)
//! member_app bench TARGET MIB      send MIB to an echoing app (HOST:PORT or via:PEER), print the rate
//! ```
//! Standard library (and tokio, for TERM): the image holds this binary and the C runtime.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;
use std::{env, thread};

fn main() -> ExitCode {
    exit_on_term();
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["serve"] => serve(),
        ["hello", peer] => hello(peer, "hello"),
        ["hello", peer, msg] => hello(peer, msg),
        ["bench", target, mib] => mib
            .parse()
            .map_err(|_| format!("{mib}: not a number of MiB"))
            .and_then(|m: u64| bench(target, m << 20)),
        ["probe", addr] => return probe(addr, 2000),
        ["probe", addr, ms] => return probe(addr, ms.parse().unwrap_or(2000)),
        _ => Err(
            "usage: member_app serve | hello PEER [MSG] | probe HOST:PORT [TIMEOUT_MS] | bench HOST:PORT|via:PEER MIB"
                .into(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("member_app: {e}");
            ExitCode::from(3)
        }
    }
}

/// As a container's PID 1 the process ignores TERM unless it handles it, and the kubelet
/// would wait out the whole grace period before killing it.
fn exit_on_term() {
    thread::spawn(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
        let Ok(runtime) = runtime else { return };
        runtime.block_on(async {
            let kind = tokio::signal::unix::SignalKind::terminate();
            if let Ok(mut term) = tokio::signal::unix::signal(kind) {
                term.recv().await;
                std::process::exit(0);
            }
        });
    });
}

fn var(name: &str, default: &str) -> String {
    env::var(name).unwrap_or_else(|_| default.to_string())
}

/// Greets with the pod's name and the port, then echoes lines until the peer half-closes.
fn serve() -> Result<(), String> {
    let name = var("POD_NAME", "member");
    let ports = [
        ("cluster", var("CLUSTER_UPSTREAM", "17000")),
        ("client", var("CLIENT_UPSTREAM", "18000")),
    ];
    let mut listeners = Vec::new();
    for (label, port) in ports {
        let addr = format!("{}:{port}", var("LISTEN_HOST", "127.0.0.1"));
        let listener = TcpListener::bind(&addr).map_err(|e| format!("bind {addr}: {e}"))?;
        println!("{name}: {label} upstream on {addr}");
        listeners.push((label, listener));
    }
    let threads: Vec<_> = listeners
        .into_iter()
        .map(|(label, listener)| {
            let name = name.clone();
            thread::spawn(move || accept_loop(&name, label, listener))
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn accept_loop(name: &str, label: &str, listener: TcpListener) {
    for conn in listener.incoming().flatten() {
        let greeting = format!("hello from {name} on the {label} port\n");
        thread::spawn(move || {
            let _ = echo(conn, &greeting);
        });
    }
}

/// Echoes bytes, not lines: a bulk transfer (`bench`) never piles up in memory.
fn echo(mut conn: TcpStream, greeting: &str) -> std::io::Result<()> {
    conn.write_all(greeting.as_bytes())?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return conn.shutdown(Shutdown::Write);
        }
        conn.write_all(&buf[..n])?;
    }
}

const CHUNK: usize = 256 * 1024;

/// Sends BYTES to an echoing member app and reads them back at the same time: directly
/// (`HOST:PORT`, the app listening on its pod IP with LISTEN_HOST) or through this pod's
/// sidecar and the peer's (`via:PEER`). Prints the rate of one direction.
fn bench(target: &str, bytes: u64) -> Result<(), String> {
    let s = match target.strip_prefix("via:") {
        Some(peer) => connect_via_sidecar(peer).map_err(|e| match e {
            Hello::SidecarDown(e) | Hello::PeerRefused(e) => e,
        })?,
        None => TcpStream::connect(target).map_err(|e| format!("{target}: {e}"))?,
    };
    s.set_read_timeout(None).map_err(|e| e.to_string())?;
    let start = std::time::Instant::now();
    let mut reader = s.try_clone().map_err(|e| e.to_string())?;
    let counted = thread::spawn(move || {
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0u64;
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        total
    });
    let mut writer = s;
    let chunk = vec![0x5au8; CHUNK];
    let mut sent = 0u64;
    while sent < bytes {
        let n = (bytes - sent).min(CHUNK as u64) as usize;
        writer.write_all(&chunk[..n]).map_err(|e| e.to_string())?;
        sent += n as u64;
    }
    writer.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
    let received = counted.join().map_err(|_| "reader panicked")?;
    let secs = start.elapsed().as_secs_f64();
    if received < bytes {
        return Err(format!("echoed {received} of {bytes} bytes"));
    }
    println!(
        "bytes={bytes} secs={secs:.3} mib_per_s={:.1}",
        bytes as f64 / secs / 1048576.0
    );
    Ok(())
}

/// One session to a peer on the private port through this pod's sidecar. A peer that
/// refuses is retried for HELLO_RETRY_SECS (a new member waits until the peers' sidecars
/// see it in the directory); a sidecar that does not answer fails at once.
fn hello(peer: &str, msg: &str) -> Result<(), String> {
    let retry: u64 = var("HELLO_RETRY_SECS", "0")
        .parse()
        .map_err(|_| "HELLO_RETRY_SECS: not a number")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(retry);
    loop {
        match hello_once(peer, msg) {
            Err(Hello::PeerRefused(e)) if std::time::Instant::now() < deadline => {
                eprintln!("member_app: {e}; retrying");
                thread::sleep(Duration::from_millis(500));
            }
            Err(Hello::SidecarDown(e) | Hello::PeerRefused(e)) => return Err(e),
            Ok(()) => return Ok(()),
        }
    }
}

enum Hello {
    SidecarDown(String),
    PeerRefused(String),
}

fn hello_once(peer: &str, msg: &str) -> Result<(), Hello> {
    let mut s = connect_via_sidecar(peer)?;
    let mut reply = String::new();
    let mut talk = || -> std::io::Result<()> {
        writeln!(s, "{msg}")?;
        s.shutdown(Shutdown::Write)?;
        s.read_to_string(&mut reply)?;
        Ok(())
    };
    talk().map_err(|e| Hello::PeerRefused(format!("{peer}: {e}")))?;
    print!("{reply}");
    Ok(())
}

/// An open session to PEER's private port through this pod's sidecar (HTTP CONNECT).
fn connect_via_sidecar(peer: &str) -> Result<TcpStream, Hello> {
    let target = format!("{peer}:{}", var("CLUSTER_PORT", "7000"));
    let proxy = var("XLATTICE_CONNECT", "127.0.0.1:15001");
    let s = TcpStream::connect(&proxy).map_err(|e| Hello::SidecarDown(format!("sidecar at {proxy}: {e}")))?;
    connect_request(s, &target).map_err(Hello::PeerRefused)
}

fn connect_request(mut s: TcpStream, target: &str) -> Result<TcpStream, String> {
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(s, "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").map_err(|e| e.to_string())?;
    // The reply's head a byte at a time: the peer's first bytes may follow in the same
    // segment, and they belong to the caller.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).map_err(|e| e.to_string())? == 0 || head.len() > 8192 {
            return Err(format!("{target}: the sidecar closed during the CONNECT reply"));
        }
        head.push(byte[0]);
    }
    let status = String::from_utf8_lossy(&head);
    let status = status.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("{target}: {}", status.trim()));
    }
    Ok(s)
}

/// Exit 0 when a TCP connection opens, 1 when it is refused, 2 when it times out: what a
/// NetworkPolicy test needs to tell "dropped" from "nobody listens".
fn probe(addr: &str, timeout_ms: u64) -> ExitCode {
    let addr: SocketAddr = match addr.to_socket_addrs().ok().and_then(|mut a| a.next()) {
        Some(a) => a,
        None => {
            eprintln!("member_app: {addr} is not HOST:PORT");
            return ExitCode::from(3);
        }
    };
    match TcpStream::connect_timeout(&addr, Duration::from_millis(timeout_ms)) {
        Ok(_) => {
            println!("open");
            ExitCode::SUCCESS
        }
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            println!("refused");
            ExitCode::from(1)
        }
        Err(e) if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::WouldBlock => {
            println!("timeout");
            ExitCode::from(2)
        }
        Err(e) => {
            println!("error: {e}");
            ExitCode::from(3)
        }
    }
}

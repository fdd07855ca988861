//! What the sidecar benches share: the `xlattice run` command line over a bench's files and
//! ports, a process's RSS, and settings from the environment.
#![allow(dead_code)] // each bench uses its own part

use std::{path::Path, process::Command};

pub const HOST: &str = "127.0.0.1";

pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A free port on HOST (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind((HOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The sidecar's ports in a bench; both upstreams lead to `upstream` on the bench's app.
pub struct Ports {
    pub cluster: u16,
    pub client: u16,
    pub connect: u16,
    pub admin: u16,
    pub upstream: u16,
}

/// `xlattice run` on HOST with the identity in `dir/identity` and the directory in
/// `dir/directory.yaml`; callers add their own flags and environment. XL_BENCH_SIDECAR_BIN
/// names another binary, so two builds can be compared side by side.
pub fn sidecar_command(dir: &Path, ports: &Ports) -> Command {
    let program = std::env::var("XL_BENCH_SIDECAR_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_xlattice").into());
    let upstream = format!("{HOST}:{}", ports.upstream);
    let mut command = Command::new(program);
    command
        .arg("run")
        .arg("--identity-dir")
        .arg(dir.join("identity"))
        .arg("--directory")
        .arg(dir.join("directory.yaml"))
        .args(["--listen-host", HOST, "--cluster-port", &ports.cluster.to_string()])
        .args(["--client-port", &ports.client.to_string()])
        .args(["--cluster-upstream", &upstream, "--client-upstream", &upstream])
        .args(["--connect-listen", &format!("{HOST}:{}", ports.connect)])
        .args(["--admin-listen", &format!("{HOST}:{}", ports.admin)]);
    command
}

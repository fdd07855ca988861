//! What the sidecar benches share: the `xlattice run` command line over a bench's files and
//! ports, a process's RSS and CPU usage, and settings from the environment.
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

/// What a process has used so far, from /proc: CPU time split into user and system (clock
/// ticks of 10 ms), minor page faults and context switches of all its threads. The split
/// and the counts say where a difference in CPU per GiB comes from, not only that it exists.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub user: f64,
    pub sys: f64,
    pub minor_faults: u64,
    pub switches: u64,
}

// === impl Usage ===

impl Usage {
    pub fn of(pid: u32) -> Self {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // Fields after the parenthesised command name: minflt is the 10th, utime and stime
        // the 14th and 15th.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<u64> = rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
        Self {
            user: fields[11] as f64 / 100.0,
            sys: fields[12] as f64 / 100.0,
            minor_faults: fields[7],
            switches: switches(pid),
        }
    }

    pub fn cpu(&self) -> f64 {
        self.user + self.sys
    }

    /// What was used between `before` and `self`, added to `total`.
    pub fn add_since(&self, before: &Self, total: &mut Self) {
        total.user += self.user - before.user;
        total.sys += self.sys - before.sys;
        total.minor_faults += self.minor_faults - before.minor_faults;
        total.switches += self.switches - before.switches;
    }

    /// One line per GiB moved: CPU ms (user + system), minor faults, context switches.
    pub fn per_gib(&self, gib: f64) -> String {
        format!(
            "{:.0} ms/GiB (user {:.0}, sys {:.0}; {:.0} faults, {:.0} switches per GiB)",
            self.cpu() / gib * 1e3,
            self.user / gib * 1e3,
            self.sys / gib * 1e3,
            self.minor_faults as f64 / gib,
            self.switches as f64 / gib
        )
    }
}

/// Voluntary and involuntary context switches of every thread of `pid` so far.
fn switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
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

//! Command-line configuration of the sidecar (flags double as environment variables,
//! so the injected container and a local run read the same names).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Args;

#[derive(Clone, Debug, Args)]
pub struct SidecarConfig {
    /// Directory holding node-id, sk.pem and ck.pem (the mounted identity Secret).
    #[arg(long, env = "XLATTICE_IDENTITY_DIR", default_value = "/var/run/xlattice/identity")]
    pub identity_dir: PathBuf,
    /// The member directory: a file, or a folder whose *.yaml/*.json files are merged
    /// (the operator's directory shards, mounted side by side).
    #[arg(long, env = "XLATTICE_DIRECTORY", default_value = "/var/run/xlattice/directory")]
    pub directory: PathBuf,
    /// The directory version this pod should serve, which the operator stamps on the pod
    /// (a Downward API file the kubelet swaps in with the shards);
    /// `xlattice_sidecar_directory_behind_seconds` counts while the
    /// directory loaded differs. Ignored when absent.
    #[arg(
        long,
        env = "XLATTICE_EXPECTED_DIRECTORY_VERSION",
        default_value = "/var/run/xlattice/directory/directory-version"
    )]
    pub expected_directory_version: PathBuf,
    /// Address to listen on; the ports come from --cluster-port and --client-port.
    #[arg(long, env = "XLATTICE_LISTEN_HOST", default_value = "0.0.0.0")]
    pub listen_host: std::net::IpAddr,
    /// The private cluster port (members only).
    #[arg(long, env = "XLATTICE_CLUSTER_PORT")]
    pub cluster_port: u16,
    /// The public client port.
    #[arg(long, env = "XLATTICE_CLIENT_PORT")]
    pub client_port: u16,
    /// Where plaintext from the cluster port goes: the application on loopback.
    #[arg(long, env = "XLATTICE_CLUSTER_UPSTREAM")]
    pub cluster_upstream: SocketAddr,
    /// Where plaintext from the client port goes.
    #[arg(long, env = "XLATTICE_CLIENT_UPSTREAM")]
    pub client_upstream: SocketAddr,
    /// HTTP CONNECT listener through which the application reaches its peers.
    #[arg(long, env = "XLATTICE_CONNECT_LISTEN", default_value = "127.0.0.1:15001")]
    pub connect_listen: SocketAddr,
    /// /livez, /readyz and /metrics.
    #[arg(long, env = "XLATTICE_ADMIN_LISTEN", default_value = "0.0.0.0:15090")]
    pub admin_listen: SocketAddr,
    /// Connections open at once on the cluster port (members only); more are reset.
    #[arg(long, default_value_t = 2048)]
    pub max_cluster_connections: usize,
    /// Connections open at once on the client port, anonymous sessions and connections
    /// still sending their hello alike; more are reset. The cluster port and the
    /// application's outbound connections have pools of their own.
    #[arg(long, default_value_t = 1024)]
    pub max_client_connections: usize,
    /// Client-port connections from one source address still sending their hello, at
    /// most; more from that address are reset. 0: no limit.
    #[arg(long, default_value_t = 64)]
    pub max_client_pending_per_source: usize,
    /// Connections open at once from the application to its peers (CONNECT); more are reset.
    #[arg(long, default_value_t = 2048)]
    pub max_outbound_connections: usize,
    /// Cluster-port hellos being checked at once. A connection takes a slot only once its
    /// whole hello has arrived; it waits for one until the handshake deadline.
    #[arg(long, default_value_t = 64)]
    pub max_cluster_handshakes: usize,
    /// Client-port hellos being checked at once (one RSA decryption each). Default: half
    /// the CPUs, at least one, so a flood of hellos leaves CPU for members and the data path.
    #[arg(long)]
    pub max_client_handshakes: Option<usize>,
    /// MiB that all sessions together may hold in buffers. Each buffer's first record is
    /// always granted (a partial record must fit); growth past it comes from what is left.
    /// Bulk transfers move up to 1 MiB per syscall while the budget lasts (a third less
    /// CPU per byte than 256 KiB); past it they move a record at a time. Default: half of
    /// --memory-limit-mib, at most 512; 64 without a limit.
    #[arg(long, env = "XLATTICE_BUFFER_BUDGET_MIB")]
    pub buffer_budget_mib: Option<usize>,
    /// This container's memory limit in MiB; the injected sidecar gets it from the
    /// Downward API.
    #[arg(long, env = "XLATTICE_MEMORY_LIMIT_MIB")]
    pub memory_limit_mib: Option<usize>,
    /// The handshake versions spoken on both ports and out (docs/protocol.md, "Choosing a
    /// version"): Preferred, the hybrid post-quantum handshake (version 2) first, version 1
    /// with members and clients that speak only that; Required, version 2 only (once every
    /// member speaks it); Disabled, version 1 only.
    #[arg(long, env = "XLATTICE_POST_QUANTUM", default_value = "Preferred")]
    pub post_quantum: xlattice_protocol::PostQuantum,
    /// A hello must arrive whole, find a handshake slot and be answered within this time.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub handshake_timeout: Duration,
    /// A cluster-port or outbound session with no traffic either way for this long is closed.
    #[arg(long, value_parser = parse_duration, default_value = "1h")]
    pub idle_timeout: Duration,
    /// A client-port session (anonymous) with no traffic either way for this long is closed.
    #[arg(long, value_parser = parse_duration, default_value = "5m")]
    pub client_idle_timeout: Duration,
    /// How often the identity and directory files are checked for changes.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub reload_interval: Duration,
    /// On SIGTERM, how long open sessions may take to finish.
    #[arg(long, value_parser = parse_duration, default_value = "20s")]
    pub drain_timeout: Duration,
    /// Refuse to start unless the AWS-LC FIPS module is in FIPS mode (an image built with
    /// `--features fips`).
    #[arg(long, env = "XLATTICE_REQUIRE_FIPS")]
    pub require_fips: bool,
}

const DEFAULT_BUFFER_BUDGET_MIB: usize = 64;
const MAX_DERIVED_BUFFER_BUDGET_MIB: usize = 512;

// === impl SidecarConfig ===

impl SidecarConfig {
    /// The buffer budget in bytes: as given, or half the memory limit, which leaves the
    /// other half for the process itself and each session's minimum buffers.
    pub fn buffer_budget_bytes(&self) -> usize {
        let mib = self.buffer_budget_mib.unwrap_or_else(|| {
            self.memory_limit_mib.map_or(DEFAULT_BUFFER_BUDGET_MIB, |limit| {
                (limit / 2).min(MAX_DERIVED_BUFFER_BUDGET_MIB)
            })
        });
        mib.saturating_mul(1 << 20)
    }

    /// The client port's handshake slots: as given, or half the CPUs this process may
    /// use (cgroup quotas included), at least one.
    pub fn client_handshakes(&self) -> usize {
        self.max_client_handshakes.unwrap_or_else(|| {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            (cpus / 2).max(1)
        })
    }
}

/// Worker threads per runtime (the sidecar runs two: members' and the client port's):
/// XLATTICE_WORKER_THREADS, else tokio's default of one per CPU the process may use.
pub fn worker_threads() -> Option<usize> {
    std::env::var("XLATTICE_WORKER_THREADS").ok()?.parse().ok()
}

/// The nice value of the client port's threads (lib.rs, `client_runtime`):
/// XLATTICE_CLIENT_NICE (0 to 19), else 10. Lower priority than the members' threads (0).
pub fn client_nice() -> i32 {
    std::env::var("XLATTICE_CLIENT_NICE")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(10, |n: i32| n.clamp(0, 19))
}

/// Parses `250ms`, `5s`, `10m`, `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number followed by ms, s, m or h"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{text:?}: unit must be ms, s, m or h")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_buffer_budget_follows_the_memory_limit_unless_given() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            config: SidecarConfig,
        }
        let budget = |extra: &[&str]| {
            let base = [
                "xlattice",
                "--cluster-port=1",
                "--client-port=2",
                "--cluster-upstream=127.0.0.1:3",
                "--client-upstream=127.0.0.1:4",
            ];
            let cli = Cli::try_parse_from(base.iter().chain(extra)).unwrap();
            cli.config.buffer_budget_bytes() >> 20
        };
        assert_eq!(budget(&[]), 64);
        assert_eq!(budget(&["--memory-limit-mib=128"]), 64);
        assert_eq!(budget(&["--memory-limit-mib=300"]), 150);
        assert_eq!(
            budget(&["--memory-limit-mib=65536"]),
            512,
            "a node-sized limit is capped"
        );
        assert_eq!(budget(&["--memory-limit-mib=128", "--buffer-budget-mib=8"]), 8);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("5").unwrap_err().contains("unit"));
        assert!(parse_duration("fast").unwrap_err().contains("number"));
    }
}

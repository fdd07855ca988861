//! Relaying a client-port session addressed to another member, as happens when clients
//! dial a load-balanced address such as the cluster's client Service. The bytes pass
//! through unopened: the addressed member runs the handshake, so end-to-end security
//! is the client's and that member's alone; this sidecar only learns whom it was for.

use std::net::{IpAddr, SocketAddr};

use tokio::{io::AsyncWriteExt, net::TcpStream};
use xlattice_protocol::handshake::ROUTE_LEN;

use crate::{runtime::Runtime, state::Loaded};

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("no member of the directory has that ck")]
    UnknownMember,
    #[error("the addressed member {0} has no client endpoint yet")]
    NoEndpoint(String),
    #[error("the directory sends {0}'s sessions back here (stale directory)")]
    Loop(String),
    #[error("member {member} not reachable: {source}")]
    Unreachable { member: String, source: std::io::Error },
}

// === impl RelayError ===

impl RelayError {
    /// A short, stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownMember => "relay_unknown_member",
            Self::NoEndpoint(_) => "relay_no_endpoint",
            Self::Loop(_) => "relay_loop",
            Self::Unreachable { .. } => "relay_unreachable",
        }
    }
}

/// Connects to the member whose ck has `hint` and hands it `preamble`; the caller then
/// passes bytes both ways, unopened.
pub async fn open(
    client: &TcpStream,
    hint: [u8; 8],
    preamble: [u8; ROUTE_LEN],
    loaded: &Loaded,
    rt: &Runtime,
) -> Result<TcpStream, RelayError> {
    let member = loaded.directory.by_ck_hint(&hint).ok_or(RelayError::UnknownMember)?;
    let name = &member.record.name;
    let endpoint = member
        .record
        .client_endpoint
        .as_deref()
        .ok_or_else(|| RelayError::NoEndpoint(name.clone()))?;
    // A member never relays to itself: our own record with a ck we no longer hold, or
    // another's record with our address, would send the session round in a circle.
    let here = client.local_addr().ok();
    if member.record.node_id == loaded.identity.node_id || endpoint.parse::<SocketAddr>().ok() == here {
        return Err(RelayError::Loop(name.clone()));
    }
    let unreachable = |source| RelayError::Unreachable {
        member: name.clone(),
        source,
    };
    let mut target = tokio::time::timeout(rt.config.handshake_timeout, TcpStream::connect(endpoint))
        .await
        .map_err(|_| unreachable(std::io::ErrorKind::TimedOut.into()))?
        .map_err(unreachable)?;
    // The literal check above misses our address written another way (a name, an
    // IPv4-mapped IPv6 address, another address of this host): where the connection landed
    // tells, before a byte is relayed.
    let own = (rt.config.listen_host, rt.config.client_port);
    if target.peer_addr().is_ok_and(|landed| is_own(landed, own)) {
        return Err(RelayError::Loop(name.clone()));
    }
    target.set_nodelay(true).ok();
    target.write_all(&preamble).await.map_err(unreachable)?;
    Ok(target)
}

/// Whether `addr` is the listener `(host, port)` of this sidecar. Listening on every
/// address, any address of this host is ours: binding a socket to it succeeds only then.
fn is_own(addr: SocketAddr, (host, port): (IpAddr, u16)) -> bool {
    let (ip, host) = (addr.ip().to_canonical(), host.to_canonical());
    addr.port() == port
        && if host.is_unspecified() {
            std::net::UdpSocket::bind((ip, 0)).is_ok()
        } else {
            ip == host
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_landing_on_our_own_listener_is_seen_whatever_the_form_of_the_address() {
        let any = IpAddr::from([0, 0, 0, 0]);
        let here: IpAddr = "127.0.0.10".parse().unwrap();
        for (addr, own, is) in [
            ("127.0.0.10:7001", (here, 7001), true),
            ("[::ffff:127.0.0.10]:7001", (here, 7001), true),
            ("127.0.0.11:7001", (here, 7001), false),
            ("127.0.0.10:7002", (here, 7001), false),
            // Listening on every address: a local address is ours, another host's is not
            // (192.0.2.0/24 is reserved for documentation; binding to it sends nothing).
            ("127.0.0.1:7001", (any, 7001), true),
            ("[::ffff:127.0.0.1]:7001", (any, 7001), true),
            ("192.0.2.7:7001", (any, 7001), false),
            ("127.0.0.1:7002", (any, 7001), false),
        ] {
            assert_eq!(is_own(addr.parse().unwrap(), own), is, "{addr} against {own:?}");
        }
    }
}

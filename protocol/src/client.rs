//! The client API: open a session with a member named in a member directory.

use std::time::Duration;

use tokio::net::TcpStream;

use crate::{directory::DirectoryIndex, handshake::PortKind, session, HandshakeError, Identity, SecureStream};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no member {0:?} in the directory (give a NodeID or a member name)")]
    UnknownMember(String),
    #[error("member {member:?} has no {port} endpoint in the directory yet; pass an address")]
    NoEndpoint { member: String, port: &'static str },
    #[error("cannot reach {address}: {source}")]
    Connect { address: String, source: std::io::Error },
    #[error("handshake with {member:?} failed: {source}")]
    Handshake { member: String, source: HandshakeError },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// Where to reach a member and how.
pub struct Target<'a> {
    /// NodeID (hex) or member name.
    pub member: &'a str,
    pub port: PortKind,
    /// host:port to dial instead of the directory's endpoint (a Service, a NodePort…).
    pub address: Option<&'a str>,
    /// This side's identity; required on the cluster port.
    pub identity: Option<&'a Identity>,
}

/// Resolves `target` in `directory`, dials it and runs the handshake, all within `timeout`.
pub async fn open(
    directory: &DirectoryIndex,
    target: Target<'_>,
    timeout: Duration,
) -> Result<SecureStream<TcpStream>, ClientError> {
    let member = directory
        .lookup(target.member)
        .ok_or_else(|| ClientError::UnknownMember(target.member.to_string()))?;
    let (endpoint, port_name) = match target.port {
        PortKind::Cluster => (&member.record.cluster_endpoint, "cluster"),
        PortKind::Client => (&member.record.client_endpoint, "client"),
    };
    let address = target
        .address
        .or(endpoint.as_deref())
        .ok_or_else(|| ClientError::NoEndpoint {
            member: member.record.name.clone(),
            port: port_name,
        })?
        .to_string();
    let attempt = async {
        let tcp = TcpStream::connect(&address)
            .await
            .map_err(|source| ClientError::Connect {
                address: address.clone(),
                source,
            })?;
        tcp.set_nodelay(true).ok();
        session::connect(tcp, &member.ck, target.port, target.identity)
            .await
            .map_err(|source| ClientError::Handshake {
                member: member.record.name.clone(),
                source,
            })
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| ClientError::Timeout(timeout))?
}

//! The client API: open a session with a member named in a member directory, with the
//! hybrid handshake (version 2), falling back to version 1 only for a member that closes
//! on a version 2 hello and does not speak version 2 (docs/protocol.md, "Versions").

use std::{collections::HashSet, time::Duration};

use tokio::net::TcpStream;

use crate::{
    directory::DirectoryIndex,
    handshake::{Offer, PortKind, PostQuantum},
    session, HandshakeError, Identity, SecureStream,
};

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
    /// Which handshake versions to speak (the cluster's `postQuantum`).
    pub post_quantum: PostQuantum,
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
    let name = &member.record.name;
    let attempt = async {
        let first = target.post_quantum.first_offer();
        let opened = handshake(&address, name, &member.ck, &target, first).await;
        let refused = matches!(
            &opened,
            Err(ClientError::Handshake {
                source: HandshakeError::Io(_),
                ..
            })
        );
        let fallback = target
            .post_quantum
            .fallback(first)
            .filter(|_| refused && !speaks_hybrid(&member.ck));
        let Some(fallback) = fallback else {
            return remember(opened, &member.ck);
        };
        // Closed on a version 2 hello by a member never seen speaking it: one that speaks
        // only version 1, or someone in the path dropping it; the fallback's reply tells.
        match handshake(&address, name, &member.ck, &target, fallback).await {
            // It speaks version 2 after all. A refusal for a passing reason (no handshake
            // slot free) looks the same as a dropped hello: one more version 2 hello, and
            // if that is closed too, the downgrade is the error.
            Err(
                downgrade @ ClientError::Handshake {
                    source: HandshakeError::Downgrade,
                    ..
                },
            ) => {
                remember_hybrid(&member.ck);
                handshake(&address, name, &member.ck, &target, first)
                    .await
                    .map_err(|_| downgrade)
            }
            other => other,
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| ClientError::Timeout(timeout))?
}

async fn handshake(
    address: &str,
    member: &str,
    ck: &crate::PublicKey,
    target: &Target<'_>,
    offer: Offer,
) -> Result<SecureStream<TcpStream>, ClientError> {
    let tcp = TcpStream::connect(address)
        .await
        .map_err(|source| ClientError::Connect {
            address: address.to_string(),
            source,
        })?;
    tcp.set_nodelay(true).ok();
    session::connect_offering(tcp, ck, target.port, target.identity, offer)
        .await
        .map_err(|source| ClientError::Handshake {
            member: member.to_string(),
            source,
        })
}

/// Members seen speaking version 2, by ck hint: a refused version 2 hello to one of them is
/// final, never retried as version 1 (once seen, the downgrade path is closed, as HSTS
/// closes plain HTTP). A new ck (rotated keys) is learned again. Bounded: forgotten all at
/// once when full.
static SPEAKS_HYBRID: std::sync::Mutex<Option<HashSet<[u8; 8]>>> = std::sync::Mutex::new(None);
const SPEAKS_HYBRID_MAX: usize = 4096;

fn speaks_hybrid(ck: &crate::PublicKey) -> bool {
    let known = SPEAKS_HYBRID.lock().unwrap_or_else(|e| e.into_inner());
    known.as_ref().is_some_and(|set| set.contains(&ck.hint()))
}

fn remember_hybrid(ck: &crate::PublicKey) {
    let mut known = SPEAKS_HYBRID.lock().unwrap_or_else(|e| e.into_inner());
    let set = known.get_or_insert_with(HashSet::new);
    if set.len() >= SPEAKS_HYBRID_MAX {
        set.clear();
    }
    set.insert(ck.hint());
}

fn remember(
    opened: Result<SecureStream<TcpStream>, ClientError>,
    ck: &crate::PublicKey,
) -> Result<SecureStream<TcpStream>, ClientError> {
    if opened.as_ref().is_ok_and(|s| s.version() == crate::Version::Hybrid) {
        remember_hybrid(ck);
    }
    opened
}

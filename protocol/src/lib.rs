//! XLattice cluster identities and the hardened XLattice handshake.
//!
//! This crate knows nothing of Kubernetes. It holds:
//! - [`NodeId`], the RSA keys ([`SigningKey`] skPriv, [`DecryptionKey`] ckPriv,
//!   [`PublicKey`]) and the [`Identity`] that bundles them;
//! - [`MemberRecord`] and [`MemberDirectory`], the public halves of a cluster;
//! - the handshake ([`handshake`]), the record layer ([`record`]) and
//!   [`SecureStream`], with [`connect`] and [`accept`] to run them over a socket (the
//!   hybrid post-quantum handshake, version 2, by default; version 1 still answered).
//!
//! The wire format is specified in docs/protocol.md.

pub mod buffer_size;
pub mod client;
pub mod crypto;
pub mod directory;
pub mod handshake;
pub mod identity;
pub mod keys;
pub mod node_id;
pub mod record;
pub mod replay;
mod session;
mod stream;

pub use buffer_size::{BufferBudget, BufferSize};
pub use client::{ClientError, Target};
pub use directory::{Attribute, DirectoryError, DirectoryIndex, Member, MemberDirectory, MemberRecord};
pub use handshake::{HandshakeError, Offer, PortKind, PostQuantum, ServerContext, Version};
pub use identity::{Identity, IdentityError};
pub use keys::{DecryptionKey, KeyError, PublicKey, RsaBits, SigningKey};
pub use node_id::{NodeId, NodeIdBits, NodeIdError};
pub use replay::ReplayGuard;
pub use session::{accept, accept_or_route, answer, connect, connect_offering, read_hello, Arrived, Incoming};
pub use stream::{Role, SecureStream, MAX_PLAINTEXT_SLICES};

//! The XLattice handshake, version 1, as pure functions over byte buffers
//! (docs/protocol.md is the normative description; keep the two in step).
//!
//! hello  = header(8) | RSA-OAEP-SHA256(ck, plain hello) | AES-256-GCM(key1, member proof)?
//! reply  = header(6) | AES-256-GCM(key1, key2 | server nonce | server X25519 public)
//! keys   = HKDF-SHA256(salt = transcript hash, ikm = key2 | X25519 shared secret)

use aws_lc_rs::{
    aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM},
    agreement::{self, PrivateKey, UnparsedPublicKey, X25519},
    digest::{self, SHA256},
    hkdf::{self, HKDF_SHA256},
};
use zeroize::Zeroizing;

use crate::{
    directory::DirectoryIndex,
    identity::Identity,
    keys::{DecryptionKey, PublicKey},
    replay::{ReplayError, ReplayGuard},
    NodeId,
};

pub const VERSION: u8 = 1;
pub const MAGIC: [u8; 2] = *b"XL";
pub const TYPE_HELLO: u8 = 1;
pub const TYPE_REPLY: u8 = 2;
pub const TYPE_ROUTE: u8 = 3;
/// The routing preamble a client sends before its hello on the client port:
/// magic | version | TYPE_ROUTE | the addressed member's ck hint (8 bytes).
pub const ROUTE_LEN: usize = 4 + 8;
pub const HELLO_HEADER_LEN: usize = 8;
pub const REPLY_HEADER_LEN: usize = 6;
pub const HELLO_PLAIN_LEN: usize = 1 + 1 + 8 + 32 + 32 + 32;
pub const REPLY_PLAIN_LEN: usize = 32 + 32 + 32;
pub const REPLY_BODY_LEN: usize = REPLY_PLAIN_LEN + TAG_LEN;
pub const REPLY_LEN: usize = REPLY_HEADER_LEN + REPLY_BODY_LEN;
const TAG_LEN: usize = 16;
/// Member proof bounds: id length byte, NodeID, signature length, signature, tag.
pub const MIN_PROOF_LEN: usize = 1 + 20 + 2 + 256 + TAG_LEN;
pub const MAX_PROOF_LEN: usize = 1 + 32 + 2 + 512 + TAG_LEN;
/// Largest hello on the wire: header, RSA-4096 ciphertext, largest proof.
pub const MAX_HELLO_LEN: usize = HELLO_HEADER_LEN + 512 + MAX_PROOF_LEN;

pub const HELLO_LABEL: &[u8] = b"xlattice/1 hello";
pub const PROOF_CONTEXT: &[u8] = b"xlattice/1 member-proof\0";
pub const TRANSCRIPT_CONTEXT: &[u8] = b"xlattice/1 transcript\0";
pub const C2S_INFO: &[u8] = b"xlattice/1 c2s";
pub const S2C_INFO: &[u8] = b"xlattice/1 s2c";
const PROOF_NONCE: u8 = 1;
const REPLY_NONCE: u8 = 2;

/// Which of a member's two ports a hello is meant for; authenticated inside the hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PortKind {
    /// The public client port: anyone may open a session.
    Client = 1,
    /// The private cluster port: members only, proven by a signature.
    Cluster = 2,
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("not an XLattice message (bad magic)")]
    BadMagic,
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    #[error("unexpected message type {0}")]
    UnexpectedType(u8),
    #[error("{what} length {len} is out of bounds")]
    BadLength { what: &'static str, len: usize },
    #[error("hello does not decrypt under this member's ck")]
    Undecryptable,
    #[error("hello is for the other port")]
    WrongPort,
    #[error("hello is addressed to another member")]
    OtherMember,
    #[error(transparent)]
    Replay(#[from] ReplayError),
    #[error("member proof is malformed or was tampered with")]
    BadProof,
    #[error("{0} is not a member of this cluster")]
    NotMember(NodeId),
    #[error("member signature of {0} does not verify")]
    BadSignature(NodeId),
    #[error("the cluster port needs a member identity to prove membership")]
    MissingIdentity,
    #[error("reply does not authenticate: the peer does not hold the ck it was addressed with")]
    BadReply,
    #[error("handshake timed out")]
    Timeout,
    #[error("connection closed during the handshake: {0}")]
    Io(#[from] std::io::Error),
}

impl HandshakeError {
    /// A short, stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadMagic => "bad_magic",
            Self::UnsupportedVersion(_) => "unsupported_version",
            Self::UnexpectedType(_) => "unexpected_type",
            Self::BadLength { .. } => "bad_length",
            Self::Undecryptable => "undecryptable",
            Self::WrongPort => "wrong_port",
            Self::OtherMember => "other_member",
            Self::Replay(ReplayError::ClockSkew(_)) => "clock_skew",
            Self::Replay(ReplayError::Replayed) => "replayed",
            Self::Replay(ReplayError::Full) => "replay_cache_full",
            Self::BadProof => "bad_proof",
            Self::NotMember(_) => "not_member",
            Self::BadSignature(_) => "bad_signature",
            Self::MissingIdentity => "missing_identity",
            Self::BadReply => "bad_reply",
            Self::Timeout => "timeout",
            Self::Io(_) => "io",
        }
    }
}

/// The two directions' record keys and the transcript hash they were derived from.
pub struct SessionKeys {
    pub client_to_server: Zeroizing<[u8; 32]>,
    pub server_to_client: Zeroizing<[u8; 32]>,
    pub transcript_hash: [u8; 32],
}

/// The client's randomness for one hello, explicit so test vectors can fix it.
pub struct ClientSecrets {
    pub key1: Zeroizing<[u8; 32]>,
    pub nonce: [u8; 32],
    pub ephemeral: Zeroizing<[u8; 32]>,
    pub timestamp: u64,
}

/// The server's randomness for one reply.
pub struct ServerSecrets {
    pub key2: Zeroizing<[u8; 32]>,
    pub nonce: [u8; 32],
    pub ephemeral: Zeroizing<[u8; 32]>,
}

/// A client that has sent its hello and waits for the reply.
pub struct ClientPending {
    key1: Zeroizing<[u8; 32]>,
    ephemeral: PrivateKey,
    hello: Vec<u8>,
}

/// What the server learned from a good hello.
pub struct Accepted {
    pub reply: Vec<u8>,
    pub keys: SessionKeys,
    /// The proven member on the cluster port; `None` on the client port.
    pub peer: Option<NodeId>,
}

/// The checked fixed part of a hello.
#[derive(Clone, Copy, Debug)]
pub struct HelloHeader {
    pub rsa_len: usize,
    pub proof_len: usize,
}

// === helpers ===

fn random32() -> [u8; 32] {
    let mut out = [0u8; 32];
    aws_lc_rs::rand::fill(&mut out).expect("system RNG failed");
    out
}

fn aead(key: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32-byte key"))
}

fn nonce(n: u8) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[11] = n;
    Nonce::assume_unique_for_key(bytes)
}

fn seal_once(key: &[u8; 32], n: u8, aad: &[u8], plain: &[u8]) -> Vec<u8> {
    let mut buf = plain.to_vec();
    aead(key)
        .seal_in_place_append_tag(nonce(n), Aad::from(aad), &mut buf)
        .expect("AES-GCM sealing");
    buf
}

fn open_once(key: &[u8; 32], n: u8, aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(sealed.to_vec());
    let len = aead(key).open_in_place(nonce(n), Aad::from(aad), &mut buf).ok()?.len();
    buf.truncate(len);
    Some(buf)
}

fn x25519(private: &[u8; 32]) -> PrivateKey {
    PrivateKey::from_private_key(&X25519, private).expect("any 32 bytes are an X25519 key")
}

fn x25519_public(private: &PrivateKey) -> [u8; 32] {
    let public = private.compute_public_key().expect("X25519 public key");
    public.as_ref().try_into().expect("32-byte X25519 public key")
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&SHA256);
    for part in parts {
        ctx.update(part);
    }
    ctx.finish().as_ref().try_into().expect("32-byte digest")
}

fn derive_keys(
    hello: &[u8],
    reply: &[u8],
    key2: &[u8],
    ephemeral: &PrivateKey,
    peer_public: &[u8],
) -> Option<SessionKeys> {
    let transcript_hash = sha256(&[TRANSCRIPT_CONTEXT, hello, reply]);
    let shared = agreement::agree(ephemeral, UnparsedPublicKey::new(&X25519, peer_public), (), |shared| {
        Ok(Zeroizing::new(shared.to_vec()))
    })
    .ok()?;
    // A low-order peer key gives an all-zero secret; aws-lc refuses it, check anyway.
    if shared.iter().all(|b| *b == 0) {
        return None;
    }
    let ikm = Zeroizing::new([key2, &shared[..]].concat());
    let prk = hkdf::Salt::new(HKDF_SHA256, &transcript_hash).extract(&ikm);
    let expand = |info: &[u8]| {
        let mut out = Zeroizing::new([0u8; 32]);
        prk.expand(&[info], HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut out[..]))
            .ok()?;
        Some(out)
    };
    Some(SessionKeys {
        client_to_server: expand(C2S_INFO)?,
        server_to_client: expand(S2C_INFO)?,
        transcript_hash,
    })
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

// === impl ClientSecrets / ServerSecrets ===

impl ClientSecrets {
    pub fn random() -> Self {
        Self {
            key1: Zeroizing::new(random32()),
            nonce: random32(),
            ephemeral: Zeroizing::new(random32()),
            timestamp: unix_now(),
        }
    }
}

impl ServerSecrets {
    pub fn random() -> Self {
        Self {
            key2: Zeroizing::new(random32()),
            nonce: random32(),
            ephemeral: Zeroizing::new(random32()),
        }
    }
}

// === client side ===

/// Builds a hello to the member whose public encryption key is `server_ck`.
/// On the cluster port `member` is the initiator's own identity, used for the proof.
pub fn client_hello(
    server_ck: &PublicKey,
    port: PortKind,
    member: Option<&Identity>,
    secrets: ClientSecrets,
) -> Result<(Vec<u8>, ClientPending), HandshakeError> {
    let ephemeral = x25519(&secrets.ephemeral);
    let mut plain = Zeroizing::new(Vec::with_capacity(HELLO_PLAIN_LEN));
    plain.extend_from_slice(&[VERSION, port as u8]);
    plain.extend_from_slice(&secrets.timestamp.to_be_bytes());
    plain.extend_from_slice(&secrets.key1[..]);
    plain.extend_from_slice(&secrets.nonce);
    plain.extend_from_slice(&x25519_public(&ephemeral));
    let rsa = server_ck.encrypt_oaep(&plain, HELLO_LABEL);

    let proof_len = match (port, member) {
        (PortKind::Client, _) => 0,
        (PortKind::Cluster, None) => return Err(HandshakeError::MissingIdentity),
        (PortKind::Cluster, Some(id)) => 1 + id.node_id.as_bytes().len() + 2 + id.sk_public().bits().bytes() + TAG_LEN,
    };
    let mut hello = Vec::with_capacity(HELLO_HEADER_LEN + rsa.len() + proof_len);
    hello.extend_from_slice(&MAGIC);
    hello.extend_from_slice(&[VERSION, TYPE_HELLO]);
    hello.extend_from_slice(&(rsa.len() as u16).to_be_bytes());
    hello.extend_from_slice(&(proof_len as u16).to_be_bytes());
    hello.extend_from_slice(&rsa);
    if let (PortKind::Cluster, Some(id)) = (port, member) {
        let signature = id.sk.sign_pss(&[PROOF_CONTEXT, &hello].concat());
        let mut proof = Vec::with_capacity(proof_len - TAG_LEN);
        proof.push(id.node_id.as_bytes().len() as u8);
        proof.extend_from_slice(id.node_id.as_bytes());
        proof.extend_from_slice(&(signature.len() as u16).to_be_bytes());
        proof.extend_from_slice(&signature);
        let sealed = seal_once(&secrets.key1, PROOF_NONCE, &hello, &proof);
        hello.extend_from_slice(&sealed);
    }
    Ok((
        hello.clone(),
        ClientPending {
            key1: secrets.key1,
            ephemeral,
            hello,
        },
    ))
}

impl ClientPending {
    /// Rebuilds the client state for a hello already on the wire (test vectors:
    /// OAEP and PSS are randomized, so a vector fixes the hello bytes themselves).
    pub fn resume(secrets: ClientSecrets, hello: Vec<u8>) -> Self {
        Self {
            key1: secrets.key1,
            ephemeral: x25519(&secrets.ephemeral),
            hello,
        }
    }

    pub fn hello(&self) -> &[u8] {
        &self.hello
    }

    /// Checks the reply and derives the session keys.
    pub fn finish(self, reply: &[u8]) -> Result<SessionKeys, HandshakeError> {
        let (header, body) = reply
            .split_at_checked(REPLY_HEADER_LEN)
            .ok_or(HandshakeError::BadReply)?;
        check_magic_version(header)?;
        if header[3] != TYPE_REPLY {
            return Err(HandshakeError::UnexpectedType(header[3]));
        }
        let len = u16::from_be_bytes([header[4], header[5]]) as usize;
        if len != REPLY_BODY_LEN || body.len() != len {
            return Err(HandshakeError::BadLength { what: "reply", len });
        }
        let aad = [header, &sha256(&[&self.hello])].concat();
        let plain = open_once(&self.key1, REPLY_NONCE, &aad, body).ok_or(HandshakeError::BadReply)?;
        let (key2, rest) = plain.split_at(32);
        let server_public = &rest[32..64];
        derive_keys(&self.hello, reply, key2, &self.ephemeral, server_public).ok_or(HandshakeError::BadReply)
    }
}

/// The routing preamble for a session with the member whose ck is `server_ck`: lets a
/// member that receives it by way of a load-balanced address relay it to that member.
pub fn route_preamble(server_ck: &PublicKey) -> [u8; ROUTE_LEN] {
    let mut preamble = [0u8; ROUTE_LEN];
    preamble[..2].copy_from_slice(&MAGIC);
    preamble[2..4].copy_from_slice(&[VERSION, TYPE_ROUTE]);
    preamble[4..].copy_from_slice(&server_ck.hint());
    preamble
}

// === server side ===

/// The ck hint a routing preamble carries.
pub fn parse_route(preamble: &[u8; ROUTE_LEN]) -> Result<[u8; 8], HandshakeError> {
    check_magic_version(preamble)?;
    if preamble[3] != TYPE_ROUTE {
        return Err(HandshakeError::UnexpectedType(preamble[3]));
    }
    Ok(preamble[4..].try_into().expect("8 bytes"))
}

fn check_magic_version(header: &[u8]) -> Result<(), HandshakeError> {
    if header[..2] != MAGIC {
        return Err(HandshakeError::BadMagic);
    }
    if header[2] != VERSION {
        return Err(HandshakeError::UnsupportedVersion(header[2]));
    }
    Ok(())
}

/// Checks the fixed part of a hello before any more of it is read.
pub fn parse_hello_header(
    header: &[u8; HELLO_HEADER_LEN],
    port: PortKind,
    ck_size: usize,
) -> Result<HelloHeader, HandshakeError> {
    check_magic_version(header)?;
    if header[3] != TYPE_HELLO {
        return Err(HandshakeError::UnexpectedType(header[3]));
    }
    let rsa_len = u16::from_be_bytes([header[4], header[5]]) as usize;
    let proof_len = u16::from_be_bytes([header[6], header[7]]) as usize;
    if rsa_len != ck_size {
        return Err(HandshakeError::BadLength {
            what: "hello RSA ciphertext",
            len: rsa_len,
        });
    }
    let proof_ok = match port {
        PortKind::Client => proof_len == 0,
        PortKind::Cluster => (MIN_PROOF_LEN..=MAX_PROOF_LEN).contains(&proof_len),
    };
    if !proof_ok {
        return Err(HandshakeError::BadLength {
            what: "member proof",
            len: proof_len,
        });
    }
    Ok(HelloHeader { rsa_len, proof_len })
}

/// Everything a server needs to answer hellos on one port.
pub struct ServerContext<'a> {
    pub port: PortKind,
    pub identity: &'a Identity,
    /// Members allowed on the cluster port; unused on the client port.
    pub directory: &'a DirectoryIndex,
    pub replay: &'a ReplayGuard,
}

/// Checks a whole hello and builds the reply. Any error means: close, send nothing.
pub fn server_accept(
    ctx: &ServerContext<'_>,
    hello: &[u8],
    now: u64,
    secrets: ServerSecrets,
) -> Result<Accepted, HandshakeError> {
    let header: &[u8; HELLO_HEADER_LEN] =
        hello
            .get(..HELLO_HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(HandshakeError::BadLength {
                what: "hello",
                len: hello.len(),
            })?;
    let ck: &DecryptionKey = &ctx.identity.ck;
    let lens = parse_hello_header(header, ctx.port, ck.size_bytes())?;
    if hello.len() != HELLO_HEADER_LEN + lens.rsa_len + lens.proof_len {
        return Err(HandshakeError::BadLength {
            what: "hello",
            len: hello.len(),
        });
    }
    let signed_part = &hello[..HELLO_HEADER_LEN + lens.rsa_len];
    let rsa = &signed_part[HELLO_HEADER_LEN..];
    let plain = ck.decrypt_oaep(rsa, HELLO_LABEL).ok_or(HandshakeError::Undecryptable)?;
    if plain.len() != HELLO_PLAIN_LEN {
        return Err(HandshakeError::Undecryptable);
    }
    if plain[0] != header[2] {
        // The version in the clear was altered; the one inside OAEP cannot be.
        return Err(HandshakeError::UnsupportedVersion(plain[0]));
    }
    if plain[1] != ctx.port as u8 {
        return Err(HandshakeError::WrongPort);
    }
    let timestamp = u64::from_be_bytes(plain[2..10].try_into().expect("8 bytes"));
    let key1: Zeroizing<[u8; 32]> = Zeroizing::new(plain[10..42].try_into().expect("32 bytes"));
    let client_nonce: [u8; 32] = plain[42..74].try_into().expect("32 bytes");
    let client_public = &plain[74..106];

    let peer = match ctx.port {
        PortKind::Client => None,
        PortKind::Cluster => Some(check_proof(
            ctx.directory,
            &key1,
            signed_part,
            &hello[signed_part.len()..],
        )?),
    };
    ctx.replay.check(&client_nonce, timestamp, now)?;

    let ephemeral = x25519(&secrets.ephemeral);
    let mut reply_plain = Zeroizing::new(Vec::with_capacity(REPLY_PLAIN_LEN));
    reply_plain.extend_from_slice(&secrets.key2[..]);
    reply_plain.extend_from_slice(&secrets.nonce);
    reply_plain.extend_from_slice(&x25519_public(&ephemeral));
    let mut reply = Vec::with_capacity(REPLY_LEN);
    reply.extend_from_slice(&MAGIC);
    reply.extend_from_slice(&[VERSION, TYPE_REPLY]);
    reply.extend_from_slice(&(REPLY_BODY_LEN as u16).to_be_bytes());
    let aad = [&reply[..], &sha256(&[hello])].concat();
    reply.extend_from_slice(&seal_once(&key1, REPLY_NONCE, &aad, &reply_plain));

    let keys = derive_keys(hello, &reply, &secrets.key2[..], &ephemeral, client_public)
        .ok_or(HandshakeError::Undecryptable)?;
    Ok(Accepted { reply, keys, peer })
}

fn check_proof(
    directory: &DirectoryIndex,
    key1: &[u8; 32],
    signed_part: &[u8],
    sealed: &[u8],
) -> Result<NodeId, HandshakeError> {
    let proof = open_once(key1, PROOF_NONCE, signed_part, sealed).ok_or(HandshakeError::BadProof)?;
    let (node_id, signature) = parse_proof(&proof)?;
    let member = directory
        .by_node_id(&node_id)
        .ok_or(HandshakeError::NotMember(node_id))?;
    if !member.sk.verify_pss(&[PROOF_CONTEXT, signed_part].concat(), signature) {
        return Err(HandshakeError::BadSignature(node_id));
    }
    Ok(node_id)
}

/// Splits an opened member proof into the NodeID it claims and the signature. Every byte
/// of it is the client's choice (it picks key1), so this is fuzzed like the hello itself.
pub fn parse_proof(proof: &[u8]) -> Result<(NodeId, &[u8]), HandshakeError> {
    let id_len = *proof.first().ok_or(HandshakeError::BadProof)? as usize;
    let node_id = proof
        .get(1..1 + id_len)
        .and_then(|raw| NodeId::from_bytes(raw).ok())
        .ok_or(HandshakeError::BadProof)?;
    let rest = &proof[1 + id_len..];
    let sig_len = rest
        .get(..2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
        .ok_or(HandshakeError::BadProof)?;
    let signature = rest
        .get(2..)
        .filter(|s| s.len() == sig_len)
        .ok_or(HandshakeError::BadProof)?;
    Ok((node_id, signature))
}

pub(crate) fn now_unix() -> u64 {
    unix_now()
}

//! The XLattice handshake, versions 1 (classical) and 2 (hybrid post-quantum), as pure
//! functions over byte buffers (docs/protocol.md is the normative description; keep the
//! two in step).
//!
//! hello  = header(8) | RSA-OAEP-SHA256(ck, plain hello) | [v2] ML-KEM-768 encapsulation key
//!        | AES-256-GCM(key1, member proof)?
//! reply  = header(6) | AES-256-GCM(key1, key2 | server nonce | server X25519 public
//!                                  | [v2] ML-KEM-768 ciphertext)
//! keys   = HKDF-SHA256(salt = transcript hash, ikm = key2 | X25519 shared | [v2] ML-KEM shared)

use aws_lc_rs::{
    aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM},
    agreement::{self, PrivateKey, UnparsedPublicKey, X25519},
    digest::{self, SHA256},
    hkdf::{self, HKDF_SHA256},
    kem::{Ciphertext, DecapsulationKey, EncapsulationKey, ML_KEM_768},
};
use zeroize::Zeroizing;

use crate::{
    directory::DirectoryIndex,
    identity::Identity,
    keys::{DecryptionKey, PublicKey},
    replay::{ReplayError, ReplayGuard},
    NodeId,
};

/// The version byte of the routing preamble (which both handshake versions share).
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
/// The length of a version 1 reply.
pub const REPLY_LEN: usize = REPLY_HEADER_LEN + REPLY_BODY_LEN;
/// ML-KEM-768 (FIPS 203) sizes: the client's encapsulation key in a version 2 hello, the
/// server's ciphertext in its reply.
pub const KEM_KEY_LEN: usize = 1184;
pub const KEM_CIPHERTEXT_LEN: usize = 1088;
/// A version 2 reply: the version 1 plaintext followed by the ML-KEM ciphertext.
pub const REPLY_V2_BODY_LEN: usize = REPLY_PLAIN_LEN + KEM_CIPHERTEXT_LEN + TAG_LEN;
pub const REPLY_V2_LEN: usize = REPLY_HEADER_LEN + REPLY_V2_BODY_LEN;
/// The largest reply of any version: what a client may have to read.
pub const MAX_REPLY_LEN: usize = REPLY_V2_LEN;
/// The last 8 bytes of the server nonce in a version 1 reply from a server that speaks
/// version 2: a client that offered version 2, was refused and fell back to version 1
/// refuses such a reply (someone in the path dropped its hybrid hello). As TLS 1.3's
/// downgrade sentinel (RFC 8446, 4.1.3); the nonce is inside the key1-sealed reply.
pub const HYBRID_SENTINEL: [u8; 8] = *b"XLHYBRID";
const TAG_LEN: usize = 16;
/// Member proof bounds: id length byte, NodeID, signature length, signature, tag.
pub const MIN_PROOF_LEN: usize = 1 + 20 + 2 + 256 + TAG_LEN;
pub const MAX_PROOF_LEN: usize = 1 + 32 + 2 + 512 + TAG_LEN;
/// Largest hello on the wire: header, RSA-4096 ciphertext, [v2] ML-KEM key, largest proof.
pub const MAX_HELLO_LEN: usize = HELLO_HEADER_LEN + 512 + KEM_KEY_LEN + MAX_PROOF_LEN;

pub const HELLO_LABEL: &[u8] = b"xlattice/1 hello";
pub const PROOF_CONTEXT: &[u8] = b"xlattice/1 member-proof\0";
pub const TRANSCRIPT_CONTEXT: &[u8] = b"xlattice/1 transcript\0";
pub const C2S_INFO: &[u8] = b"xlattice/1 c2s";
pub const S2C_INFO: &[u8] = b"xlattice/1 s2c";
/// Version 2 changes every string with the version, so nothing of one version can be
/// taken for the other.
pub const HELLO_LABEL_V2: &[u8] = b"xlattice/2 hello";
pub const PROOF_CONTEXT_V2: &[u8] = b"xlattice/2 member-proof\0";
pub const TRANSCRIPT_CONTEXT_V2: &[u8] = b"xlattice/2 transcript\0";
pub const C2S_INFO_V2: &[u8] = b"xlattice/2 c2s";
pub const S2C_INFO_V2: &[u8] = b"xlattice/2 s2c";
const PROOF_NONCE: u8 = 1;
const REPLY_NONCE: u8 = 2;

/// A handshake version: the byte in every header and inside the OAEP plaintext.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Version {
    /// RSA-OAEP key transport and X25519.
    Classical = 1,
    /// Version 1 plus ML-KEM-768 (FIPS 203): the session keys also depend on a KEM shared
    /// secret, so recorded sessions stay closed if either X25519 or ML-KEM holds.
    Hybrid = 2,
}

/// Which versions a party speaks: the cluster's `postQuantum` setting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PostQuantum {
    /// Version 1 only, as a version 1 implementation (no sentinel, no version 2 hello).
    Disabled,
    /// Both; version 2 first as a client, falling back to version 1 only for a member that
    /// does not speak version 2 (the sentinel tells).
    #[default]
    Preferred,
    /// Version 2 only: version 1 hellos are refused, and a client never falls back.
    Required,
}

impl PostQuantum {
    pub fn name(self) -> &'static str {
        match self {
            Self::Disabled => "Disabled",
            Self::Preferred => "Preferred",
            Self::Required => "Required",
        }
    }

    /// The first hello a client sends.
    pub fn first_offer(self) -> Offer {
        match self {
            Self::Disabled => Offer::Classical,
            Self::Preferred | Self::Required => Offer::Hybrid,
        }
    }

    /// The hello to send on a new connection after the member closed on `refused`.
    pub fn fallback(self, refused: Offer) -> Option<Offer> {
        (self == Self::Preferred && refused == Offer::Hybrid).then_some(Offer::ClassicalAfterRefusal)
    }
}

impl std::str::FromStr for PostQuantum {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "Disabled" | "disabled" => Ok(Self::Disabled),
            "Preferred" | "preferred" => Ok(Self::Preferred),
            "Required" | "required" => Ok(Self::Required),
            other => Err(format!("{other:?}: expected one of Disabled, Preferred, Required")),
        }
    }
}

/// What a client offers, and what it concludes from the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    /// Version 2: the default.
    Hybrid,
    /// Version 1 after the member refused version 2: a reply carrying `HYBRID_SENTINEL`
    /// (the member speaks version 2 after all) is refused as a downgrade.
    ClassicalAfterRefusal,
    /// Version 1 by choice (a peer known to speak only version 1, tests, benchmarks).
    Classical,
}

/// The strings a version binds into its messages and keys: the OAEP label, the proof and
/// transcript contexts, the two HKDF infos.
pub struct Labels {
    pub hello: &'static [u8],
    pub proof: &'static [u8],
    pub transcript: &'static [u8],
    pub c2s: &'static [u8],
    pub s2c: &'static [u8],
}

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
    #[error("the ML-KEM encapsulation key in the hello is not a valid ML-KEM-768 key")]
    BadKemKey,
    #[error("a classical (version 1) hello, and this cluster requires the hybrid handshake")]
    ClassicalRefused,
    #[error("the member speaks the hybrid handshake but answered a classical one: someone dropped the hybrid hello (downgrade)")]
    Downgrade,
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
            Self::BadKemKey => "bad_kem_key",
            Self::ClassicalRefused => "classical_refused",
            Self::Downgrade => "downgrade",
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
    /// The version the keys were agreed with.
    pub version: Version,
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
    /// Version 2: the ML-KEM decapsulation key whose encapsulation key is in the hello.
    kem: Option<DecapsulationKey>,
    offer: Offer,
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
    pub version: Version,
    pub rsa_len: usize,
    /// `KEM_KEY_LEN` in version 2, else 0.
    pub kem_len: usize,
    pub proof_len: usize,
}

impl HelloHeader {
    /// The bytes that follow the 8-byte header.
    pub fn rest_len(&self) -> usize {
        self.rsa_len + self.kem_len + self.proof_len
    }
}

// === impl Version ===

impl Version {
    pub fn from_byte(byte: u8) -> Result<Self, HandshakeError> {
        match byte {
            1 => Ok(Self::Classical),
            2 => Ok(Self::Hybrid),
            other => Err(HandshakeError::UnsupportedVersion(other)),
        }
    }

    pub fn labels(self) -> &'static Labels {
        const V1: Labels = Labels {
            hello: HELLO_LABEL,
            proof: PROOF_CONTEXT,
            transcript: TRANSCRIPT_CONTEXT,
            c2s: C2S_INFO,
            s2c: S2C_INFO,
        };
        const V2: Labels = Labels {
            hello: HELLO_LABEL_V2,
            proof: PROOF_CONTEXT_V2,
            transcript: TRANSCRIPT_CONTEXT_V2,
            c2s: C2S_INFO_V2,
            s2c: S2C_INFO_V2,
        };
        match self {
            Self::Classical => &V1,
            Self::Hybrid => &V2,
        }
    }

    fn kem_key_len(self) -> usize {
        match self {
            Self::Classical => 0,
            Self::Hybrid => KEM_KEY_LEN,
        }
    }

    fn reply_body_len(self) -> usize {
        match self {
            Self::Classical => REPLY_BODY_LEN,
            Self::Hybrid => REPLY_V2_BODY_LEN,
        }
    }

    /// The length of the reply to a hello of this version.
    pub fn reply_len(self) -> usize {
        REPLY_HEADER_LEN + self.reply_body_len()
    }

    /// A label for metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Classical => "classical",
            Self::Hybrid => "hybrid",
        }
    }
}

impl Offer {
    pub fn version(self) -> Version {
        match self {
            Self::Hybrid => Version::Hybrid,
            Self::ClassicalAfterRefusal | Self::Classical => Version::Classical,
        }
    }
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

/// Through AWS-LC's TLS 1.3 AES-GCM, as the record layer seals (the FIPS module's approved
/// service): each call is a fresh context sealing once, under a key that seals once per side.
fn seal_once(key: &[u8; 32], n: u8, aad: &[u8], plain: &[u8]) -> Vec<u8> {
    let mut buf = plain.to_vec();
    aws_lc_rs::aead::TlsRecordSealingKey::new(&AES_256_GCM, aws_lc_rs::aead::TlsProtocolId::TLS13, key)
        .expect("32-byte key")
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

/// The session keys; `kem_shared` is the ML-KEM shared secret in version 2.
fn derive_keys(
    version: Version,
    hello: &[u8],
    reply: &[u8],
    key2: &[u8],
    ephemeral: &PrivateKey,
    peer_public: &[u8],
    kem_shared: Option<&[u8]>,
) -> Option<SessionKeys> {
    let labels = version.labels();
    let transcript_hash = sha256(&[labels.transcript, hello, reply]);
    let shared = agreement::agree(ephemeral, UnparsedPublicKey::new(&X25519, peer_public), (), |shared| {
        Ok(Zeroizing::new(shared.to_vec()))
    })
    .ok()?;
    // A low-order peer key gives an all-zero secret; aws-lc refuses it, check anyway.
    if shared.iter().all(|b| *b == 0) {
        return None;
    }
    let ikm = Zeroizing::new([key2, &shared[..], kem_shared.unwrap_or_default()].concat());
    let prk = hkdf::Salt::new(HKDF_SHA256, &transcript_hash).extract(&ikm);
    let expand = |info: &[u8]| {
        let mut out = Zeroizing::new([0u8; 32]);
        prk.expand(&[info], HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut out[..]))
            .ok()?;
        Some(out)
    };
    Some(SessionKeys {
        client_to_server: expand(labels.c2s)?,
        server_to_client: expand(labels.s2c)?,
        transcript_hash,
        version,
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

/// Builds a version 1 hello to the member whose public encryption key is `server_ck`.
/// On the cluster port `member` is the initiator's own identity, used for the proof.
pub fn client_hello(
    server_ck: &PublicKey,
    port: PortKind,
    member: Option<&Identity>,
    secrets: ClientSecrets,
) -> Result<(Vec<u8>, ClientPending), HandshakeError> {
    client_hello_offering(server_ck, port, member, secrets, Offer::Classical)
}

/// Builds the hello `offer` names (version 2 carries a fresh ML-KEM-768 key pair's
/// encapsulation key after the OAEP ciphertext).
pub fn client_hello_offering(
    server_ck: &PublicKey,
    port: PortKind,
    member: Option<&Identity>,
    secrets: ClientSecrets,
    offer: Offer,
) -> Result<(Vec<u8>, ClientPending), HandshakeError> {
    let kem = match offer.version() {
        Version::Classical => None,
        Version::Hybrid => Some(DecapsulationKey::generate(&ML_KEM_768).expect("ML-KEM-768 key generation")),
    };
    let hello = hello_bytes(server_ck, port, member, &secrets, offer.version(), kem.as_ref())?;
    let pending = ClientPending {
        key1: secrets.key1,
        ephemeral: x25519(&secrets.ephemeral),
        kem,
        offer,
        hello: hello.clone(),
    };
    Ok((hello, pending))
}

fn hello_bytes(
    server_ck: &PublicKey,
    port: PortKind,
    member: Option<&Identity>,
    secrets: &ClientSecrets,
    version: Version,
    kem: Option<&DecapsulationKey>,
) -> Result<Vec<u8>, HandshakeError> {
    let labels = version.labels();
    let ephemeral = x25519(&secrets.ephemeral);
    let mut plain = Zeroizing::new(Vec::with_capacity(HELLO_PLAIN_LEN));
    plain.extend_from_slice(&[version as u8, port as u8]);
    plain.extend_from_slice(&secrets.timestamp.to_be_bytes());
    plain.extend_from_slice(&secrets.key1[..]);
    plain.extend_from_slice(&secrets.nonce);
    plain.extend_from_slice(&x25519_public(&ephemeral));
    let rsa = server_ck.encrypt_oaep(&plain, labels.hello);

    let proof_len = match (port, member) {
        (PortKind::Client, _) => 0,
        (PortKind::Cluster, None) => return Err(HandshakeError::MissingIdentity),
        (PortKind::Cluster, Some(id)) => 1 + id.node_id.as_bytes().len() + 2 + id.sk_public().bits().bytes() + TAG_LEN,
    };
    let kem_len = version.kem_key_len();
    let mut hello = Vec::with_capacity(HELLO_HEADER_LEN + rsa.len() + kem_len + proof_len);
    hello.extend_from_slice(&MAGIC);
    hello.extend_from_slice(&[version as u8, TYPE_HELLO]);
    hello.extend_from_slice(&(rsa.len() as u16).to_be_bytes());
    hello.extend_from_slice(&(proof_len as u16).to_be_bytes());
    hello.extend_from_slice(&rsa);
    if let Some(kem) = kem {
        let ek = kem.encapsulation_key().expect("ML-KEM encapsulation key");
        hello.extend_from_slice(ek.key_bytes().expect("ML-KEM key bytes").as_ref());
    }
    if let (PortKind::Cluster, Some(id)) = (port, member) {
        let signature = id.sk.sign_pss(&[labels.proof, &hello].concat());
        let mut proof = Vec::with_capacity(proof_len - TAG_LEN);
        proof.push(id.node_id.as_bytes().len() as u8);
        proof.extend_from_slice(id.node_id.as_bytes());
        proof.extend_from_slice(&(signature.len() as u16).to_be_bytes());
        proof.extend_from_slice(&signature);
        let sealed = seal_once(&secrets.key1, PROOF_NONCE, &hello, &proof);
        hello.extend_from_slice(&sealed);
    }
    Ok(hello)
}

impl ClientPending {
    /// Rebuilds the client state for a hello already on the wire (test vectors:
    /// OAEP and PSS are randomized, so a vector fixes the hello bytes themselves). A
    /// version 2 hello needs the ML-KEM decapsulation key (FIPS 203 form, 2400 bytes).
    ///
    /// # Panics
    /// When `kem_private` is given for a version 1 offer or missing for version 2, or is not
    /// 2400 bytes: a vector or test that is wrong, which must not derive keys quietly.
    pub fn resume(secrets: ClientSecrets, hello: Vec<u8>, offer: Offer, kem_private: Option<&[u8]>) -> Self {
        assert_eq!(
            kem_private.is_some(),
            offer.version() == Version::Hybrid,
            "an ML-KEM decapsulation key goes with a version 2 offer, and only with it"
        );
        Self {
            key1: secrets.key1,
            ephemeral: x25519(&secrets.ephemeral),
            kem: kem_private.map(|dk| DecapsulationKey::new(&ML_KEM_768, dk).expect("an ML-KEM-768 decapsulation key")),
            offer,
            hello,
        }
    }

    pub fn hello(&self) -> &[u8] {
        &self.hello
    }

    /// The length of the reply to wait for.
    pub fn reply_len(&self) -> usize {
        self.offer.version().reply_len()
    }

    /// The ML-KEM decapsulation key of a version 2 hello (FIPS 203 form), for test vectors.
    pub fn kem_private(&self) -> Option<Vec<u8>> {
        Some(self.kem.as_ref()?.key_bytes().ok()?.as_ref().to_vec())
    }

    /// Checks the reply and derives the session keys.
    pub fn finish(self, reply: &[u8]) -> Result<SessionKeys, HandshakeError> {
        let version = self.offer.version();
        let (header, body) = reply
            .split_at_checked(REPLY_HEADER_LEN)
            .ok_or(HandshakeError::BadReply)?;
        check_magic(header)?;
        if header[2] != version as u8 {
            return Err(HandshakeError::UnsupportedVersion(header[2]));
        }
        if header[3] != TYPE_REPLY {
            return Err(HandshakeError::UnexpectedType(header[3]));
        }
        let len = u16::from_be_bytes([header[4], header[5]]) as usize;
        if len != version.reply_body_len() || body.len() != len {
            return Err(HandshakeError::BadLength { what: "reply", len });
        }
        let aad = [header, &sha256(&[&self.hello])].concat();
        let plain = open_once(&self.key1, REPLY_NONCE, &aad, body).ok_or(HandshakeError::BadReply)?;
        let (key2, rest) = plain.split_at(32);
        let (server_nonce, rest) = rest.split_at(32);
        let (server_public, kem_ciphertext) = rest.split_at(32);
        if self.offer == Offer::ClassicalAfterRefusal && server_nonce[24..] == HYBRID_SENTINEL {
            return Err(HandshakeError::Downgrade);
        }
        let kem_shared = match &self.kem {
            None => None,
            Some(dk) => Some(
                dk.decapsulate(Ciphertext::from(kem_ciphertext))
                    .map_err(|_| HandshakeError::BadReply)?,
            ),
        };
        derive_keys(
            version,
            &self.hello,
            reply,
            key2,
            &self.ephemeral,
            server_public,
            kem_shared.as_ref().map(|s| s.as_ref()),
        )
        .ok_or(HandshakeError::BadReply)
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

fn check_magic(header: &[u8]) -> Result<(), HandshakeError> {
    if header[..2] != MAGIC {
        return Err(HandshakeError::BadMagic);
    }
    Ok(())
}

/// The routing preamble has version 1 in both handshake versions.
fn check_magic_version(header: &[u8]) -> Result<(), HandshakeError> {
    check_magic(header)?;
    if header[2] != VERSION {
        return Err(HandshakeError::UnsupportedVersion(header[2]));
    }
    Ok(())
}

/// Checks the fixed part of a hello before any more of it is read (either version).
pub fn parse_hello_header(
    header: &[u8; HELLO_HEADER_LEN],
    port: PortKind,
    ck_size: usize,
) -> Result<HelloHeader, HandshakeError> {
    check_magic(header)?;
    let version = Version::from_byte(header[2])?;
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
    Ok(HelloHeader {
        version,
        rsa_len,
        kem_len: version.kem_key_len(),
        proof_len,
    })
}

/// Everything a server needs to answer hellos on one port.
pub struct ServerContext<'a> {
    pub port: PortKind,
    pub identity: &'a Identity,
    /// Members allowed on the cluster port; unused on the client port.
    pub directory: &'a DirectoryIndex,
    pub replay: &'a ReplayGuard,
    /// Which versions are answered (the cluster's `postQuantum`).
    pub post_quantum: PostQuantum,
}

impl ServerContext<'_> {
    /// Refuses a version this server does not answer, as soon as the header names it.
    pub fn admit(&self, version: Version) -> Result<(), HandshakeError> {
        match (self.post_quantum, version) {
            (PostQuantum::Required, Version::Classical) => Err(HandshakeError::ClassicalRefused),
            (PostQuantum::Disabled, Version::Hybrid) => Err(HandshakeError::UnsupportedVersion(version as u8)),
            _ => Ok(()),
        }
    }
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
    ctx.admit(lens.version)?;
    if hello.len() != HELLO_HEADER_LEN + lens.rest_len() {
        return Err(HandshakeError::BadLength {
            what: "hello",
            len: hello.len(),
        });
    }
    let labels = lens.version.labels();
    let signed_part = &hello[..HELLO_HEADER_LEN + lens.rsa_len + lens.kem_len];
    let rsa = &signed_part[HELLO_HEADER_LEN..HELLO_HEADER_LEN + lens.rsa_len];
    // Version 2: encapsulate first. FIPS 203's input check on the key runs here, before
    // any RSA work, and a hello refused for its key leaves no nonce in the replay cache.
    let kem = match lens.version {
        Version::Classical => None,
        Version::Hybrid => Some(encapsulate(&signed_part[HELLO_HEADER_LEN + lens.rsa_len..])?),
    };
    let plain = ck
        .decrypt_oaep(rsa, labels.hello)
        .ok_or(HandshakeError::Undecryptable)?;
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
            labels.proof,
            &key1,
            signed_part,
            &hello[signed_part.len()..],
        )?),
    };
    ctx.replay.check(&client_nonce, timestamp, now)?;
    let speaks_hybrid = ctx.post_quantum != PostQuantum::Disabled;
    let (kem_ciphertext, kem_shared) = kem.unzip();
    let (reply, ephemeral) = reply_bytes(lens.version, speaks_hybrid, hello, &key1, kem_ciphertext, &secrets);
    let keys = derive_keys(
        lens.version,
        hello,
        &reply,
        &secrets.key2[..],
        &ephemeral,
        client_public,
        kem_shared.as_ref().map(|s| &s[..]),
    )
    .ok_or(HandshakeError::Undecryptable)?;
    Ok(Accepted { reply, keys, peer })
}

/// Version 2: an ML-KEM-768 ciphertext and shared secret for the hello's encapsulation key.
fn encapsulate(kem_key: &[u8]) -> Result<(Vec<u8>, Zeroizing<Vec<u8>>), HandshakeError> {
    let ek = EncapsulationKey::new(&ML_KEM_768, kem_key).map_err(|_| HandshakeError::BadKemKey)?;
    let (ciphertext, shared) = ek.encapsulate().map_err(|_| HandshakeError::BadKemKey)?;
    Ok((ciphertext.as_ref().to_vec(), Zeroizing::new(shared.as_ref().to_vec())))
}

/// The reply to a checked hello (carrying `kem_ciphertext` in version 2) and the server's
/// X25519 key.
fn reply_bytes(
    version: Version,
    speaks_hybrid: bool,
    hello: &[u8],
    key1: &[u8; 32],
    kem_ciphertext: Option<Vec<u8>>,
    secrets: &ServerSecrets,
) -> (Vec<u8>, PrivateKey) {
    let ephemeral = x25519(&secrets.ephemeral);
    let mut nonce = secrets.nonce;
    if version == Version::Classical && speaks_hybrid {
        // This server speaks version 2: say so where only the holder of key1 can read it.
        nonce[24..].copy_from_slice(&HYBRID_SENTINEL);
    }
    let mut reply_plain = Zeroizing::new(Vec::with_capacity(version.reply_body_len()));
    reply_plain.extend_from_slice(&secrets.key2[..]);
    reply_plain.extend_from_slice(&nonce);
    reply_plain.extend_from_slice(&x25519_public(&ephemeral));
    reply_plain.extend_from_slice(kem_ciphertext.as_deref().unwrap_or_default());
    let mut reply = Vec::with_capacity(version.reply_len());
    reply.extend_from_slice(&MAGIC);
    reply.extend_from_slice(&[version as u8, TYPE_REPLY]);
    reply.extend_from_slice(&(version.reply_body_len() as u16).to_be_bytes());
    let aad = [&reply[..], &sha256(&[hello])].concat();
    reply.extend_from_slice(&seal_once(key1, REPLY_NONCE, &aad, &reply_plain));
    (reply, ephemeral)
}

fn check_proof(
    directory: &DirectoryIndex,
    context: &[u8],
    key1: &[u8; 32],
    signed_part: &[u8],
    sealed: &[u8],
) -> Result<NodeId, HandshakeError> {
    let proof = open_once(key1, PROOF_NONCE, signed_part, sealed).ok_or(HandshakeError::BadProof)?;
    let (node_id, signature) = parse_proof(&proof)?;
    let member = directory
        .by_node_id(&node_id)
        .ok_or(HandshakeError::NotMember(node_id))?;
    if !member.sk.verify_pss(&[context, signed_part].concat(), signature) {
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

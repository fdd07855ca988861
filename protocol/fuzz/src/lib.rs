//! What every fuzz target shares: the server identity, member directory, session keys and
//! client secrets of the test vectors (docs/test-vectors/v1.json), so that seeds taken
//! from the vectors reach past the first check, and a runtime to drive async decoders
//! over in-memory input.

use std::sync::OnceLock;

use serde_json::Value;
use xlattice_protocol::{
    handshake::{ClientSecrets, SessionKeys},
    identity::{CK_FILE, NODE_ID_FILE, SK_FILE},
    DirectoryIndex, Identity, MemberDirectory, PublicKey, ReplayGuard,
};

const VECTORS: &str = include_str!("../../../docs/test-vectors/v1.json");

pub fn vectors() -> &'static Value {
    static V: OnceLock<Value> = OnceLock::new();
    V.get_or_init(|| serde_json::from_str(VECTORS).expect("the test vectors parse"))
}

pub fn hex(value: &Value) -> Vec<u8> {
    let text = value.as_str().expect("a hex string");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

fn array32(value: &Value) -> [u8; 32] {
    hex(value).try_into().expect("32 bytes")
}

/// The vectors' server: the member whose ck every vector hello is sealed to.
pub fn server() -> &'static Identity {
    static S: OnceLock<Identity> = OnceLock::new();
    S.get_or_init(|| {
        let s = &vectors()["identities"]["server"];
        let text = |key: &str| s[key].as_str().expect("a string").as_bytes();
        Identity::from_files(|file| match file {
            NODE_ID_FILE => Some(text("node_id")),
            SK_FILE => Some(text("sk_private_pkcs8_pem")),
            CK_FILE => Some(text("ck_private_pkcs8_pem")),
            _ => None,
        })
        .expect("the vectors' server identity loads")
    })
}

pub fn server_ck() -> &'static PublicKey {
    server().ck_public()
}

pub fn directory() -> &'static DirectoryIndex {
    static D: OnceLock<DirectoryIndex> = OnceLock::new();
    D.get_or_init(|| {
        let json = serde_json::to_vec(&vectors()["directory"]).expect("json");
        MemberDirectory::from_slice(&json)
            .and_then(|d| d.index())
            .expect("the vectors' directory loads")
    })
}

pub fn replay() -> &'static ReplayGuard {
    static R: OnceLock<ReplayGuard> = OnceLock::new();
    R.get_or_init(ReplayGuard::default)
}

/// The time at which the vectors' hellos are fresh.
pub fn server_now() -> u64 {
    vectors()["handshakes"][0]["server_now"].as_u64().expect("server_now")
}

/// The keys of the vectors' first (client-port) handshake.
pub fn session_keys() -> SessionKeys {
    let h = &vectors()["handshakes"][0];
    SessionKeys {
        client_to_server: array32(&h["client_to_server_key"]).into(),
        server_to_client: array32(&h["server_to_client_key"]).into(),
        transcript_hash: array32(&h["transcript_hash"]),
        version: xlattice_protocol::Version::Hybrid,
    }
}

/// The client secrets of the vectors' first handshake, whose reply is in the vectors.
pub fn client_secrets() -> ClientSecrets {
    let c = &vectors()["handshakes"][0]["client_secrets"];
    ClientSecrets {
        key1: array32(&c["key1"]).into(),
        nonce: array32(&c["nonce"]),
        ephemeral: array32(&c["ephemeral_private"]).into(),
        timestamp: c["timestamp"].as_u64().expect("timestamp"),
    }
}

/// Runs an async decoder over in-memory input to its end.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    thread_local! {
        static RT: tokio::runtime::Runtime =
            tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
    }
    RT.with(|rt| rt.block_on(future))
}

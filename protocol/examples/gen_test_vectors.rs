//! Writes docs/test-vectors/v1.json: two complete handshakes (client port and cluster
//! port) with fixed keys and fixed randomness, their session records, and hellos the
//! server must refuse. docs/protocol.md ("Test vectors") describes every field.
//!
//!     cargo run -p xlattice-protocol --example gen_test_vectors            # keep the keys
//!     cargo run -p xlattice-protocol --example gen_test_vectors -- --new-keys
//!
//! The RSA keys are minted once and live in the vector file as PEM; a rerun reuses them
//! unless told otherwise. OAEP and PSS are randomized, so every rerun still produces new
//! hello bytes (and so a new reply, transcript and keys): the committed file is the
//! reference, and tests/test_vectors.rs checks the implementation against it. Rerun only
//! when the wire format changes on purpose.

use std::path::PathBuf;

use aws_lc_rs::{
    aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM},
    agreement::{self, PrivateKey, UnparsedPublicKey, X25519},
    digest::{self, SHA256},
    hmac,
};
use serde_json::{json, Value};
use xlattice_protocol::{
    handshake::{
        self, client_hello, server_accept, ClientSecrets, ServerSecrets, HELLO_HEADER_LEN, HELLO_LABEL, MAGIC,
        PROOF_CONTEXT, TRANSCRIPT_CONTEXT, VERSION,
    },
    record::{ContentType, RecordSealer},
    replay::MAX_CLOCK_SKEW,
    DecryptionKey, DirectoryIndex, Identity, MemberDirectory, MemberRecord, NodeId, PortKind, ReplayGuard, RsaBits,
    ServerContext, SigningKey,
};
use zeroize::Zeroizing;

/// 2026-01-01T00:00:00Z, the client's clock in every vector.
const TIMESTAMP: u64 = 1_767_225_600;
/// The server's clock: a little ahead of the client's, within MAX_CLOCK_SKEW.
const SERVER_NOW: u64 = TIMESTAMP + 7;

fn out_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/test-vectors/v1.json")
}

/// Fixed "randomness": SHA-256 of a label, so the values look random but are reproducible.
fn fixed(label: &str) -> [u8; 32] {
    digest::digest(&SHA256, format!("xlattice/1 test vector: {label}").as_bytes())
        .as_ref()
        .try_into()
        .unwrap()
}

fn client_secrets(case: &str) -> ClientSecrets {
    ClientSecrets {
        key1: Zeroizing::new(fixed(&format!("{case} key1"))),
        nonce: fixed(&format!("{case} client nonce")),
        ephemeral: Zeroizing::new(fixed(&format!("{case} client ephemeral"))),
        timestamp: TIMESTAMP,
    }
}

fn server_secrets(case: &str) -> ServerSecrets {
    ServerSecrets {
        key2: Zeroizing::new(fixed(&format!("{case} key2"))),
        nonce: fixed(&format!("{case} server nonce")),
        ephemeral: Zeroizing::new(fixed(&format!("{case} server ephemeral"))),
    }
}

fn x25519_public(private: &[u8; 32]) -> Vec<u8> {
    let key = PrivateKey::from_private_key(&X25519, private).unwrap();
    key.compute_public_key().unwrap().as_ref().to_vec()
}

fn x25519_shared(private: &[u8; 32], public: &[u8]) -> Vec<u8> {
    let key = PrivateKey::from_private_key(&X25519, private).unwrap();
    agreement::agree(&key, UnparsedPublicKey::new(&X25519, public), (), |s| Ok(s.to_vec())).unwrap()
}

fn sha256(parts: &[&[u8]]) -> Vec<u8> {
    let mut ctx = digest::Context::new(&SHA256);
    parts.iter().for_each(|p| ctx.update(p));
    ctx.finish().as_ref().to_vec()
}

fn aes_gcm_open(key: &[u8], nonce_last_byte: u8, aad: &[u8], sealed: &[u8]) -> Vec<u8> {
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).unwrap());
    let mut nonce = [0u8; 12];
    nonce[11] = nonce_last_byte;
    let mut buf = sealed.to_vec();
    let len = key
        .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut buf)
        .unwrap()
        .len();
    buf.truncate(len);
    buf
}

fn h(bytes: impl AsRef<[u8]>) -> String {
    hex::encode(bytes)
}

// === identities ===

struct Keys {
    name: &'static str,
    identity: Identity,
}

fn identity_json(k: &Keys) -> Value {
    let id = &k.identity;
    json!({
        "name": k.name,
        "node_id": id.node_id.to_string(),
        "sk_bits": id.sk_public().bits().bits(),
        "sk_private_pkcs8_pem": id.sk.to_pkcs8_pem().as_str(),
        "sk_public_spki_pem": id.sk_public().to_pem(),
        "ck_bits": id.ck_public().bits().bits(),
        "ck_private_pkcs8_pem": id.ck.to_pkcs8_pem().as_str(),
        "ck_public_spki_pem": id.ck_public().to_pem(),
    })
}

fn identity_from_json(v: &Value) -> Identity {
    let s = |k: &str| v[k].as_str().unwrap_or_else(|| panic!("identity field {k}"));
    Identity {
        node_id: s("node_id").parse::<NodeId>().unwrap(),
        sk: SigningKey::from_pkcs8_pem(s("sk_private_pkcs8_pem").as_bytes()).unwrap(),
        ck: DecryptionKey::from_pkcs8_pem(s("ck_private_pkcs8_pem").as_bytes()).unwrap(),
    }
}

fn load_or_mint(new_keys: bool) -> (Keys, Keys) {
    let existing = (!new_keys)
        .then(|| std::fs::read_to_string(out_path()).ok())
        .flatten()
        .map(|text| serde_json::from_str::<Value>(&text).expect("existing vector file is JSON"));
    let (server, member) = match existing {
        Some(v) => {
            eprintln!("reusing the keys of {}", out_path().display());
            (
                identity_from_json(&v["identities"]["server"]),
                identity_from_json(&v["identities"]["member"]),
            )
        }
        None => {
            eprintln!("minting new keys");
            // The server: 256-bit NodeID, RSA-2048 sk and ck (the defaults).
            let server = Identity::generate(xlattice_protocol::NodeIdBits::B256, RsaBits::B2048).unwrap();
            // The initiating member: 160-bit NodeID and an RSA-3072 sk, so the member proof
            // has lengths other than the defaults.
            let member = Identity {
                node_id: NodeId::random(xlattice_protocol::NodeIdBits::B160),
                sk: SigningKey::generate(RsaBits::B3072).unwrap(),
                ck: DecryptionKey::generate(RsaBits::B2048).unwrap(),
            };
            (server, member)
        }
    };
    (
        Keys {
            name: "server",
            identity: server,
        },
        Keys {
            name: "member",
            identity: member,
        },
    )
}

// === one handshake ===

struct Case {
    name: &'static str,
    port: PortKind,
}

/// A direction's name, its key and the records to seal in it.
type Direction<'a> = (&'static str, &'a [u8; 32], Vec<(ContentType, Vec<u8>)>);

fn records(keys: &handshake::SessionKeys) -> Value {
    let mut out = Vec::new();
    let long: Vec<u8> = (0..300u32).map(|i| (i * 7 % 256) as u8).collect();
    let plan: [Direction; 2] = [
        (
            "client_to_server",
            &keys.client_to_server,
            vec![
                (ContentType::Data, b"GET /status HTTP/1.1\r\n\r\n".to_vec()),
                (ContentType::Data, long.clone()),
                (ContentType::Close, Vec::new()),
            ],
        ),
        (
            "server_to_client",
            &keys.server_to_client,
            vec![
                (
                    ContentType::Data,
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec(),
                ),
                (ContentType::Data, Vec::new()),
                (ContentType::Close, Vec::new()),
            ],
        ),
    ];
    for (direction, key, items) in plan {
        let mut sealer = RecordSealer::new(key);
        for (seq, (kind, payload)) in items.into_iter().enumerate() {
            let mut wire = Vec::new();
            sealer.seal(kind, &payload, &mut wire).unwrap();
            out.push(json!({
                "direction": direction,
                "seq": seq,
                "type": match kind { ContentType::Data => "data", ContentType::Close => "close", ContentType::KeyUpdate => "key_update" },
                "payload": h(&payload),
                "record": h(&wire),
            }));
        }
    }
    Value::Array(out)
}

fn handshake_vector(case: &Case, server: &Identity, member: &Identity, directory: &DirectoryIndex) -> Value {
    let cs = client_secrets(case.name);
    let ss = server_secrets(case.name);
    let client_eph_pub = x25519_public(&cs.ephemeral);
    let server_eph_pub = x25519_public(&ss.ephemeral);
    let cs_json = json!({
        "key1": h(&cs.key1[..]),
        "nonce": h(cs.nonce),
        "ephemeral_private": h(&cs.ephemeral[..]),
        "ephemeral_public": h(&client_eph_pub),
        "timestamp": cs.timestamp,
    });
    let ss_json = json!({
        "key2": h(&ss.key2[..]),
        "nonce": h(ss.nonce),
        "ephemeral_private": h(&ss.ephemeral[..]),
        "ephemeral_public": h(&server_eph_pub),
    });
    let key1 = *cs.key1;
    let client_eph = *cs.ephemeral;
    let proving = (case.port == PortKind::Cluster).then_some(member);
    let (hello, pending) = client_hello(server.ck_public(), case.port, proving, cs).unwrap();

    let replay = ReplayGuard::default();
    let ctx = ServerContext {
        port: case.port,
        identity: server,
        directory,
        replay: &replay,
    };
    let server_eph = *ss.ephemeral;
    let key2 = *ss.key2;
    let accepted = server_accept(&ctx, &hello, SERVER_NOW, ss).unwrap();
    let client_keys = pending.finish(&accepted.reply).unwrap();
    assert_eq!(*client_keys.client_to_server, *accepted.keys.client_to_server);
    assert_eq!(*client_keys.server_to_client, *accepted.keys.server_to_client);

    let rsa_len = server.ck.size_bytes();
    let header = &hello[..HELLO_HEADER_LEN];
    let rsa = &hello[HELLO_HEADER_LEN..HELLO_HEADER_LEN + rsa_len];
    let sealed_proof = &hello[HELLO_HEADER_LEN + rsa_len..];
    let plain = server.ck.decrypt_oaep(rsa, HELLO_LABEL).unwrap();
    let (proof_plain, signed, signature) = if sealed_proof.is_empty() {
        (Vec::new(), Vec::new(), Vec::new())
    } else {
        let proof = aes_gcm_open(&key1, 1, &hello[..HELLO_HEADER_LEN + rsa_len], sealed_proof);
        let id_len = proof[0] as usize;
        let signature = proof[1 + id_len + 2..].to_vec();
        let signed = [PROOF_CONTEXT, &hello[..HELLO_HEADER_LEN + rsa_len]].concat();
        assert!(member.sk_public().verify_pss(&signed, &signature));
        (proof, signed, signature)
    };
    let reply = &accepted.reply;
    let reply_aad = [&reply[..6], &sha256(&[&hello])[..]].concat();
    let reply_plain = aes_gcm_open(&key1, 2, &reply_aad, &reply[6..]);
    let shared = x25519_shared(&client_eph, &server_eph_pub);
    assert_eq!(shared, x25519_shared(&server_eph, &client_eph_pub));
    let transcript = sha256(&[TRANSCRIPT_CONTEXT, &hello, reply]);
    assert_eq!(transcript, accepted.keys.transcript_hash);
    let prk = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, &transcript),
        &[&key2[..], &shared[..]].concat(),
    );

    json!({
        "name": case.name,
        "port": match case.port { PortKind::Client => "client", PortKind::Cluster => "cluster" },
        "server": "server",
        "initiator": if case.port == PortKind::Cluster { json!("member") } else { Value::Null },
        "client_secrets": cs_json,
        "server_secrets": ss_json,
        "server_now": SERVER_NOW,
        "hello_plaintext": h(&plain[..]),
        "hello": h(&hello),
        "hello_header": h(header),
        "hello_rsa_ciphertext": h(rsa),
        "hello_sealed_proof": h(sealed_proof),
        "proof_plaintext": h(&proof_plain),
        "proof_signed_message": h(&signed),
        "proof_signature": h(&signature),
        "reply_plaintext": h(&reply_plain),
        "reply_aad": h(&reply_aad),
        "reply": h(reply),
        "x25519_shared_secret": h(&shared),
        "transcript_hash": h(transcript),
        "hkdf_prk": h(prk),
        "client_to_server_key": h(&accepted.keys.client_to_server[..]),
        "server_to_client_key": h(&accepted.keys.server_to_client[..]),
        "peer": accepted.peer.map(|p| p.to_string()),
        "records": records(&accepted.keys),
    })
}

// === hellos to refuse ===

fn rejection(
    name: &str,
    handshake: &str,
    port: &str,
    hello: Vec<u8>,
    now: u64,
    accept_first: bool,
    error: &str,
) -> Value {
    json!({
        "name": name,
        "handshake": handshake,
        "port": port,
        "hello": h(hello),
        "server_now": now,
        "accept_first": accept_first,
        "expected_error": error,
    })
}

fn rejections(client: &Value, cluster: &Value, server: &Identity, directory: &DirectoryIndex) -> Value {
    let bytes = |v: &Value| hex::decode(v["hello"].as_str().unwrap()).unwrap();
    let (ch, kh) = (bytes(client), bytes(cluster));
    let rsa_end = HELLO_HEADER_LEN + server.ck.size_bytes();

    let mut v2 = ch.clone();
    v2[2] = 2;
    let mut flipped = ch.clone();
    flipped[HELLO_HEADER_LEN + 17] ^= 0x01;
    let mut stripped = kh[..rsa_end].to_vec();
    stripped[6..8].copy_from_slice(&0u16.to_be_bytes());
    let mut proof_flip = kh.clone();
    proof_flip[rsa_end + 3] ^= 0x80;
    let mut wrong_type = ch.clone();
    wrong_type[3] = 2;
    let mut long = ch.clone();
    long.push(0);
    let out = vec![
        rejection(
            "bad magic",
            "client-port",
            "client",
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            SERVER_NOW,
            false,
            "bad_magic",
        ),
        rejection(
            "version 2 in the header",
            "client-port",
            "client",
            v2,
            SERVER_NOW,
            false,
            "unsupported_version",
        ),
        rejection(
            "reply type in a hello",
            "client-port",
            "client",
            wrong_type,
            SERVER_NOW,
            false,
            "unexpected_type",
        ),
        rejection(
            "one byte short",
            "client-port",
            "client",
            ch[..ch.len() - 1].to_vec(),
            SERVER_NOW,
            false,
            "bad_length",
        ),
        rejection(
            "one byte too many",
            "client-port",
            "client",
            long,
            SERVER_NOW,
            false,
            "bad_length",
        ),
        rejection(
            "a bit flipped in the OAEP ciphertext",
            "client-port",
            "client",
            flipped,
            SERVER_NOW,
            false,
            "undecryptable",
        ),
        rejection(
            "timestamp too old",
            "client-port",
            "client",
            ch.clone(),
            TIMESTAMP + MAX_CLOCK_SKEW + 1,
            false,
            "clock_skew",
        ),
        rejection(
            "timestamp too far ahead",
            "client-port",
            "client",
            ch.clone(),
            TIMESTAMP - MAX_CLOCK_SKEW - 1,
            false,
            "clock_skew",
        ),
        rejection(
            "replayed",
            "client-port",
            "client",
            ch.clone(),
            SERVER_NOW,
            true,
            "replayed",
        ),
        rejection(
            "client-port hello on the cluster port",
            "client-port",
            "cluster",
            ch,
            SERVER_NOW,
            false,
            "bad_length",
        ),
        rejection(
            "cluster-port hello on the client port",
            "cluster-port",
            "client",
            kh.clone(),
            SERVER_NOW,
            false,
            "bad_length",
        ),
        rejection(
            "cluster-port hello, proof stripped, on the client port",
            "cluster-port",
            "client",
            stripped,
            SERVER_NOW,
            false,
            "wrong_port",
        ),
        rejection(
            "a bit flipped in the sealed proof",
            "cluster-port",
            "cluster",
            proof_flip,
            SERVER_NOW,
            false,
            "bad_proof",
        ),
        rejection(
            "replayed on the cluster port",
            "cluster-port",
            "cluster",
            kh,
            SERVER_NOW,
            true,
            "replayed",
        ),
    ];
    // Check them here too, so a broken generator never writes a file.
    for r in &out {
        let port = if r["port"] == "client" {
            PortKind::Client
        } else {
            PortKind::Cluster
        };
        let hello = bytes(r);
        let replay = ReplayGuard::default();
        let ctx = ServerContext {
            port,
            identity: server,
            directory,
            replay: &replay,
        };
        let now = r["server_now"].as_u64().unwrap();
        if r["accept_first"].as_bool().unwrap() {
            server_accept(&ctx, &hello, now, ServerSecrets::random()).unwrap();
        }
        let err = server_accept(&ctx, &hello, now, ServerSecrets::random())
            .err()
            .expect("refused");
        assert_eq!(err.reason(), r["expected_error"].as_str().unwrap(), "{}", r["name"]);
    }
    Value::Array(out)
}

fn main() {
    let new_keys = std::env::args().any(|a| a == "--new-keys");
    let (server, member) = load_or_mint(new_keys);
    let mut directory = MemberDirectory {
        cluster: "default/vectors".into(),
        members: vec![
            MemberRecord::for_identity(server.name, &server.identity),
            MemberRecord::for_identity(member.name, &member.identity),
        ],
    };
    directory.members[0].cluster_endpoint = Some("10.0.0.5:7000".into());
    directory.members[0].client_endpoint = Some("10.0.0.5:8000".into());
    directory.members[1].cluster_endpoint = Some("10.0.0.6:7000".into());
    directory.members[1].client_endpoint = Some("10.0.0.6:8000".into());
    let index = directory.index().unwrap();

    let client = handshake_vector(
        &Case {
            name: "client-port",
            port: PortKind::Client,
        },
        &server.identity,
        &member.identity,
        &index,
    );
    let cluster = handshake_vector(
        &Case {
            name: "cluster-port",
            port: PortKind::Cluster,
        },
        &server.identity,
        &member.identity,
        &index,
    );
    let rejections = rejections(&client, &cluster, &server.identity, &index);

    let doc = json!({
        "description": "XLattice handshake v1 test vectors; docs/protocol.md, section 'Test vectors', describes every field. Byte strings are lowercase hex. Generated by protocol/examples/gen_test_vectors.rs; checked by protocol/tests/test_vectors.rs.",
        "protocol_version": VERSION,
        "constants": {
            "magic": h(MAGIC),
            "hello_label": h(HELLO_LABEL),
            "proof_context": h(PROOF_CONTEXT),
            "transcript_context": h(TRANSCRIPT_CONTEXT),
            "c2s_info": h(handshake::C2S_INFO),
            "s2c_info": h(handshake::S2C_INFO),
            "max_clock_skew": MAX_CLOCK_SKEW,
        },
        "identities": { "server": identity_json(&server), "member": identity_json(&member) },
        "directory": serde_json::to_value(&directory).unwrap(),
        "handshakes": [client, cluster],
        "rejections": rejections,
    });
    let path = out_path();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap() + "\n").unwrap();
    eprintln!("wrote {}", path.display());
}

//! Writes docs/test-vectors/v1.json and v2.json: for handshake version 1 (classical) and
//! version 2 (hybrid), two complete handshakes (client port and cluster port) with fixed keys
//! and fixed randomness, their session records, and hellos the server must refuse.
//! docs/protocol.md ("Test vectors") describes every field.
//!
//!     cargo run -p xlattice-protocol --example gen_test_vectors            # keep the keys
//!     cargo run -p xlattice-protocol --example gen_test_vectors -- --new-keys
//!
//! The RSA keys are minted once and live in v1.json as PEM (v2.json holds the same ones); a
//! rerun reuses them unless told otherwise. OAEP and PSS are randomized, so every rerun still
//! produces new hello bytes (and so a new reply, transcript and keys). Version 2 adds ML-KEM-768,
//! whose key generation and encapsulation are randomized too, with no seeded API in aws-lc-rs:
//! its client key pair is new on every run, and so is its reply (the ciphertext), which the
//! file fixes as produced once, like the hello. The committed files are the reference, and
//! tests/test_vectors.rs checks the implementation against them. Rerun only when the wire
//! format changes on purpose.

use std::path::PathBuf;

use aws_lc_rs::{
    aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM},
    agreement::{self, PrivateKey, UnparsedPublicKey, X25519},
    digest::{self, SHA256},
    hmac,
    kem::{Ciphertext, DecapsulationKey, ML_KEM_768},
};
use serde_json::{json, Map, Value};
use xlattice_protocol::{
    handshake::{
        self, client_hello_offering, server_accept, ClientSecrets, ServerSecrets, HELLO_HEADER_LEN, HYBRID_SENTINEL,
        KEM_CIPHERTEXT_LEN, KEM_KEY_LEN, MAGIC, REPLY_PLAIN_LEN,
    },
    record::{ContentType, RecordSealer},
    replay::MAX_CLOCK_SKEW,
    DecryptionKey, DirectoryIndex, Identity, MemberDirectory, MemberRecord, NodeId, Offer, PortKind, PostQuantum,
    ReplayGuard, RsaBits, ServerContext, SigningKey, Version,
};
use zeroize::Zeroizing;

/// 2026-01-01T00:00:00Z, the client's clock in every vector.
const TIMESTAMP: u64 = 1_767_225_600;
/// The server's clock: a little ahead of the client's, within MAX_CLOCK_SKEW.
const SERVER_NOW: u64 = TIMESTAMP + 7;

fn out_path(version: Version) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../docs/test-vectors/v{}.json", version as u8))
}

/// Fixed "randomness": SHA-256 of a label, so the values look random but are reproducible.
fn fixed(version: Version, label: &str) -> [u8; 32] {
    let text = format!("xlattice/{} test vector: {label}", version as u8);
    digest::digest(&SHA256, text.as_bytes()).as_ref().try_into().unwrap()
}

fn client_secrets(version: Version, case: &str) -> ClientSecrets {
    ClientSecrets {
        key1: Zeroizing::new(fixed(version, &format!("{case} key1"))),
        nonce: fixed(version, &format!("{case} client nonce")),
        ephemeral: Zeroizing::new(fixed(version, &format!("{case} client ephemeral"))),
        timestamp: TIMESTAMP,
    }
}

fn server_secrets(version: Version, case: &str) -> ServerSecrets {
    let mut nonce = fixed(version, &format!("{case} server nonce"));
    if version == Version::Classical {
        // A server that speaks version 2 ends every version 1 server nonce with the sentinel.
        // Fixing it here lets a version 1 only server, which uses the nonce as given, reproduce
        // the reply of ours, which overwrites those bytes.
        nonce[24..].copy_from_slice(&HYBRID_SENTINEL);
    }
    ServerSecrets {
        key2: Zeroizing::new(fixed(version, &format!("{case} key2"))),
        nonce,
        ephemeral: Zeroizing::new(fixed(version, &format!("{case} server ephemeral"))),
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
    let path = out_path(Version::Classical);
    let existing = (!new_keys)
        .then(|| std::fs::read_to_string(&path).ok())
        .flatten()
        .map(|text| serde_json::from_str::<Value>(&text).expect("existing vector file is JSON"));
    let (server, member) = match existing {
        Some(v) => {
            eprintln!("reusing the keys of {}", path.display());
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
            // A key update, then a data record under the next key (its seq back at 0). The
            // direction ends there: the close record is shown server to client.
            vec![
                (ContentType::Data, b"GET /status HTTP/1.1\r\n\r\n".to_vec()),
                (ContentType::KeyUpdate, Vec::new()),
                (ContentType::Data, long),
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
        // The sequence number under the direction's current key: 0 again after a key update.
        let mut seq = 0u64;
        for (kind, payload) in items {
            let mut wire = Vec::new();
            sealer.seal(kind, &payload, &mut wire).unwrap();
            out.push(json!({
                "direction": direction,
                "seq": seq,
                "type": match kind { ContentType::Data => "data", ContentType::Close => "close", ContentType::KeyUpdate => "key_update" },
                "payload": h(&payload),
                "record": h(&wire),
            }));
            seq = if kind == ContentType::KeyUpdate { 0 } else { seq + 1 };
        }
    }
    Value::Array(out)
}

fn handshake_vector(
    version: Version,
    case: &Case,
    server: &Identity,
    member: &Identity,
    directory: &DirectoryIndex,
) -> Value {
    let labels = version.labels();
    let cs = client_secrets(version, case.name);
    let ss = server_secrets(version, case.name);
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
    let server_nonce = ss.nonce;
    let offer = match version {
        Version::Classical => Offer::Classical,
        Version::Hybrid => Offer::Hybrid,
    };
    let proving = (case.port == PortKind::Cluster).then_some(member);
    let (hello, pending) = client_hello_offering(server.ck_public(), case.port, proving, cs, offer).unwrap();
    let kem_private = pending.kem_private();
    assert_eq!(kem_private.is_some(), version == Version::Hybrid);

    let replay = ReplayGuard::default();
    let ctx = ServerContext {
        port: case.port,
        identity: server,
        directory,
        replay: &replay,
        post_quantum: PostQuantum::Preferred,
    };
    let server_eph = *ss.ephemeral;
    let key2 = *ss.key2;
    let accepted = server_accept(&ctx, &hello, SERVER_NOW, ss).unwrap();
    assert_eq!(accepted.reply.len(), version.reply_len());
    let client_keys = pending.finish(&accepted.reply).unwrap();
    assert_eq!(*client_keys.client_to_server, *accepted.keys.client_to_server);
    assert_eq!(*client_keys.server_to_client, *accepted.keys.server_to_client);
    assert_eq!(client_keys.version, version);

    let rsa_len = server.ck.size_bytes();
    let kem_len = if version == Version::Hybrid { KEM_KEY_LEN } else { 0 };
    let signed_end = HELLO_HEADER_LEN + rsa_len + kem_len;
    let header = &hello[..HELLO_HEADER_LEN];
    let rsa = &hello[HELLO_HEADER_LEN..HELLO_HEADER_LEN + rsa_len];
    let kem_key = &hello[HELLO_HEADER_LEN + rsa_len..signed_end];
    let sealed_proof = &hello[signed_end..];
    let plain = server.ck.decrypt_oaep(rsa, labels.hello).unwrap();
    assert_eq!(plain[0], version as u8);
    let (proof_plain, signed, signature) = if sealed_proof.is_empty() {
        (Vec::new(), Vec::new(), Vec::new())
    } else {
        let proof = aes_gcm_open(&key1, 1, &hello[..signed_end], sealed_proof);
        let id_len = proof[0] as usize;
        let signature = proof[1 + id_len + 2..].to_vec();
        let signed = [labels.proof, &hello[..signed_end]].concat();
        assert!(member.sk_public().verify_pss(&signed, &signature));
        (proof, signed, signature)
    };
    let reply = &accepted.reply;
    let reply_aad = [&reply[..6], &sha256(&[&hello])[..]].concat();
    let reply_plain = aes_gcm_open(&key1, 2, &reply_aad, &reply[6..]);
    assert_eq!(&reply_plain[..32], &key2[..]);
    assert_eq!(reply_plain[32..64], server_nonce, "the nonce is sent as given");
    if version == Version::Classical {
        assert_eq!(reply_plain[56..64], HYBRID_SENTINEL);
    }
    assert_eq!(&reply_plain[64..96], &server_eph_pub[..]);
    let kem_ciphertext = &reply_plain[REPLY_PLAIN_LEN..];
    assert_eq!(kem_ciphertext.len(), if kem_len > 0 { KEM_CIPHERTEXT_LEN } else { 0 });
    let shared = x25519_shared(&client_eph, &server_eph_pub);
    assert_eq!(shared, x25519_shared(&server_eph, &client_eph_pub));
    let kem_shared = match &kem_private {
        None => Vec::new(),
        Some(dk) => {
            // FIPS 203: dk = dk_pke (1152) | ek (1184) | H(ek) (32) | z (32).
            assert_eq!(dk.len(), 2400);
            assert_eq!(&dk[1152..1152 + KEM_KEY_LEN], kem_key);
            let dk = DecapsulationKey::new(&ML_KEM_768, dk).unwrap();
            dk.decapsulate(Ciphertext::from(kem_ciphertext))
                .unwrap()
                .as_ref()
                .to_vec()
        }
    };
    let transcript = sha256(&[labels.transcript, &hello, reply]);
    assert_eq!(transcript, accepted.keys.transcript_hash);
    let prk = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, &transcript),
        &[&key2[..], &shared[..], &kem_shared[..]].concat(),
    );
    let prk_key = hmac::Key::new(hmac::HMAC_SHA256, prk.as_ref());
    let expand = |info: &[u8]| hmac::sign(&prk_key, &[info, &[1u8]].concat()).as_ref().to_vec();
    assert_eq!(expand(labels.c2s), &accepted.keys.client_to_server[..]);
    assert_eq!(expand(labels.s2c), &accepted.keys.server_to_client[..]);

    let mut out = json!({
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
    });
    if let Some(dk) = &kem_private {
        let fields: &mut Map<String, Value> = out.as_object_mut().unwrap();
        fields.insert("hello_kem_key".into(), json!(h(kem_key)));
        fields.insert("kem_private".into(), json!(h(dk)));
        fields.insert("kem_public".into(), json!(h(kem_key)));
        fields.insert("kem_ciphertext".into(), json!(h(kem_ciphertext)));
        fields.insert("kem_shared_secret".into(), json!(h(&kem_shared)));
    }
    out
}

// === hellos to refuse ===

struct Rejection<'a> {
    name: &'a str,
    handshake: &'a str,
    port: &'a str,
    hello: Vec<u8>,
    now: u64,
    accept_first: bool,
    error: &'a str,
    /// Version 2 file only: `Some(true)` if the server requires version 2 (`postQuantum:
    /// Required`), `Some(false)` otherwise; `None` leaves the field out (v1.json).
    requires_hybrid: Option<bool>,
}

impl Rejection<'_> {
    fn json(&self) -> Value {
        let mut out = json!({
            "name": self.name,
            "handshake": self.handshake,
            "port": self.port,
            "hello": h(&self.hello),
            "server_now": self.now,
            "accept_first": self.accept_first,
            "expected_error": self.error,
        });
        if let Some(requires) = self.requires_hybrid {
            out["server_requires_hybrid"] = json!(requires);
        }
        out
    }
}

/// A rejection in the usual case: sent once, at the server's usual clock.
fn refuse<'a>(name: &'a str, handshake: &'a str, port: &'a str, hello: Vec<u8>, error: &'a str) -> Rejection<'a> {
    Rejection {
        name,
        handshake,
        port,
        hello,
        now: SERVER_NOW,
        accept_first: false,
        error,
        requires_hybrid: None,
    }
}

fn hello_of(v: &Value) -> Vec<u8> {
    hex::decode(v["hello"].as_str().unwrap()).unwrap()
}

fn rejections_v1(client: &Value, cluster: &Value, server: &Identity) -> Vec<Rejection<'static>> {
    let (ch, kh) = (hello_of(client), hello_of(cluster));
    let rsa_end = HELLO_HEADER_LEN + server.ck.size_bytes();

    // Not 2: a server that speaks version 2 reads a `02` header as a version 2 hello (and
    // refuses this one for its length); 3 is no version at all.
    let mut v3 = ch.clone();
    v3[2] = 3;
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
    vec![
        refuse(
            "bad magic",
            "client-port",
            "client",
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            "bad_magic",
        ),
        refuse(
            "version 3 in the header",
            "client-port",
            "client",
            v3,
            "unsupported_version",
        ),
        refuse(
            "reply type in a hello",
            "client-port",
            "client",
            wrong_type,
            "unexpected_type",
        ),
        refuse(
            "one byte short",
            "client-port",
            "client",
            ch[..ch.len() - 1].to_vec(),
            "bad_length",
        ),
        refuse("one byte too many", "client-port", "client", long, "bad_length"),
        refuse(
            "a bit flipped in the OAEP ciphertext",
            "client-port",
            "client",
            flipped,
            "undecryptable",
        ),
        Rejection {
            now: TIMESTAMP + MAX_CLOCK_SKEW + 1,
            ..refuse("timestamp too old", "client-port", "client", ch.clone(), "clock_skew")
        },
        Rejection {
            now: TIMESTAMP - MAX_CLOCK_SKEW - 1,
            ..refuse(
                "timestamp too far ahead",
                "client-port",
                "client",
                ch.clone(),
                "clock_skew",
            )
        },
        Rejection {
            accept_first: true,
            ..refuse("replayed", "client-port", "client", ch.clone(), "replayed")
        },
        refuse(
            "client-port hello on the cluster port",
            "client-port",
            "cluster",
            ch,
            "bad_length",
        ),
        refuse(
            "cluster-port hello on the client port",
            "cluster-port",
            "client",
            kh.clone(),
            "bad_length",
        ),
        refuse(
            "cluster-port hello, proof stripped, on the client port",
            "cluster-port",
            "client",
            stripped,
            "wrong_port",
        ),
        refuse(
            "a bit flipped in the sealed proof",
            "cluster-port",
            "cluster",
            proof_flip,
            "bad_proof",
        ),
        Rejection {
            accept_first: true,
            ..refuse(
                "replayed on the cluster port",
                "cluster-port",
                "cluster",
                kh,
                "replayed",
            )
        },
    ]
}

/// `v1_client` is v1.json's client-port handshake.
fn rejections_v2(client: &Value, cluster: &Value, v1_client: &Value, server: &Identity) -> Vec<Rejection<'static>> {
    let (ch, kh, ch1) = (hello_of(client), hello_of(cluster), hello_of(v1_client));
    let kem_start = HELLO_HEADER_LEN + server.ck.size_bytes();

    // ek = ByteEncode12(t) (1152 bytes) | rho (32): the first coefficient is the low 12 bits
    // of the first two bytes. 0xfff is not below q = 3329, so FIPS 203's input check fails.
    let mut bad_kem = ch.clone();
    bad_kem[kem_start] = 0xff;
    bad_kem[kem_start + 1] |= 0x0f;
    let mut kem_short = ch.clone();
    kem_short.remove(kem_start + 100);
    let mut flipped = ch.clone();
    flipped[HELLO_HEADER_LEN + 17] ^= 0x01;
    // The member proof's AAD is header | rsa | ek: the proof no longer opens.
    let mut kem_flip = kh.clone();
    kem_flip[kem_start + 100] ^= 0x01;
    // A version 1 hello presented as version 2: the right length, but the OAEP label differs.
    let mut relabelled = ch1.clone();
    relabelled[2] = 2;
    relabelled.extend_from_slice(&ch[kem_start..kem_start + KEM_KEY_LEN]);
    let hybrid = |r: Rejection<'static>| Rejection {
        requires_hybrid: Some(r.requires_hybrid.unwrap_or(false)),
        ..r
    };
    [
        refuse(
            "ML-KEM key with a coefficient not below q (first 12 bits 0xfff)",
            "client-port",
            "client",
            bad_kem,
            "bad_kem_key",
        ),
        refuse(
            "one byte of the ML-KEM key missing",
            "client-port",
            "client",
            kem_short,
            "bad_length",
        ),
        refuse(
            "a bit flipped in the OAEP ciphertext",
            "client-port",
            "client",
            flipped,
            "undecryptable",
        ),
        refuse(
            "a bit flipped in the ML-KEM key on the cluster port",
            "cluster-port",
            "cluster",
            kem_flip,
            "bad_proof",
        ),
        refuse(
            "version 1 hello relabelled version 2, with an ML-KEM key",
            "v1.json client-port",
            "client",
            relabelled,
            "undecryptable",
        ),
        Rejection {
            requires_hybrid: Some(true),
            ..refuse(
                "version 1 hello to a server that requires version 2",
                "v1.json client-port",
                "client",
                ch1,
                "classical_refused",
            )
        },
        Rejection {
            accept_first: true,
            ..refuse("replayed", "client-port", "client", ch, "replayed")
        },
    ]
    .into_iter()
    .map(hybrid)
    .collect()
}

/// Checks the rejections here too, so a broken generator never writes a file.
fn check_rejections(rejections: &[Rejection], server: &Identity, directory: &DirectoryIndex) -> Value {
    for r in rejections {
        let port = if r.port == "client" {
            PortKind::Client
        } else {
            PortKind::Cluster
        };
        let replay = ReplayGuard::default();
        let ctx = ServerContext {
            port,
            identity: server,
            directory,
            replay: &replay,
            post_quantum: if r.requires_hybrid == Some(true) {
                PostQuantum::Required
            } else {
                PostQuantum::Preferred
            },
        };
        if r.accept_first {
            server_accept(&ctx, &r.hello, r.now, ServerSecrets::random()).unwrap();
        }
        let err = server_accept(&ctx, &r.hello, r.now, ServerSecrets::random())
            .err()
            .unwrap_or_else(|| panic!("{}: accepted", r.name));
        assert_eq!(err.reason(), r.error, "{}: {err}", r.name);
    }
    rejections.iter().map(Rejection::json).collect()
}

fn constants(version: Version) -> Value {
    let labels = version.labels();
    let mut out = json!({
        "magic": h(MAGIC),
        "hello_label": h(labels.hello),
        "proof_context": h(labels.proof),
        "transcript_context": h(labels.transcript),
        "c2s_info": h(labels.c2s),
        "s2c_info": h(labels.s2c),
        "max_clock_skew": MAX_CLOCK_SKEW,
    });
    if version == Version::Hybrid {
        out["kem_key_len"] = json!(KEM_KEY_LEN);
        out["kem_ciphertext_len"] = json!(KEM_CIPHERTEXT_LEN);
    }
    out
}

fn write(version: Version, doc: &Value) {
    let path = out_path(version);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, serde_json::to_string_pretty(doc).unwrap() + "\n").unwrap();
    eprintln!("wrote {}", path.display());
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

    let cases = [
        Case {
            name: "client-port",
            port: PortKind::Client,
        },
        Case {
            name: "cluster-port",
            port: PortKind::Cluster,
        },
    ];
    let [v1_client, v1_cluster] = cases
        .each_ref()
        .map(|case| handshake_vector(Version::Classical, case, &server.identity, &member.identity, &index));
    let [v2_client, v2_cluster] = cases
        .each_ref()
        .map(|case| handshake_vector(Version::Hybrid, case, &server.identity, &member.identity, &index));
    let v1_rejections = check_rejections(
        &rejections_v1(&v1_client, &v1_cluster, &server.identity),
        &server.identity,
        &index,
    );
    let v2_rejections = check_rejections(
        &rejections_v2(&v2_client, &v2_cluster, &v1_client, &server.identity),
        &server.identity,
        &index,
    );

    let identities = json!({ "server": identity_json(&server), "member": identity_json(&member) });
    let directory = serde_json::to_value(&directory).unwrap();
    let v1 = json!({
        "description": "XLattice handshake v1 test vectors; docs/protocol.md, section 'Test vectors', describes every field. Byte strings are lowercase hex. Generated by protocol/examples/gen_test_vectors.rs; checked by protocol/tests/test_vectors.rs.",
        "protocol_version": Version::Classical as u8,
        "constants": constants(Version::Classical),
        "identities": identities,
        "directory": directory,
        "handshakes": [v1_client, v1_cluster],
        "rejections": v1_rejections,
    });
    let v2 = json!({
        "description": "XLattice handshake v2 (hybrid: X25519 + ML-KEM-768) test vectors; docs/protocol.md, section 'Test vectors', describes every field. Byte strings are lowercase hex. ML-KEM is randomized: the replies are fixed as produced once. Generated by protocol/examples/gen_test_vectors.rs; checked by protocol/tests/test_vectors.rs.",
        "protocol_version": Version::Hybrid as u8,
        "constants": constants(Version::Hybrid),
        "identities": identities,
        "directory": directory,
        "handshakes": [v2_client, v2_cluster],
        "rejections": v2_rejections,
    });
    write(Version::Classical, &v1);
    write(Version::Hybrid, &v2);
}

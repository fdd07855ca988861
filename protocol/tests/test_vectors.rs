//! Checks the implementation against the committed docs/test-vectors/v1.json (version 1)
//! and v2.json (version 2, hybrid), field by field. It never regenerates the files: if the
//! wire format changes, this fails until the vectors are regenerated on purpose
//! (protocol/examples/gen_test_vectors.rs) and docs/protocol.md is updated to match.
//!
//! Besides running the library on the vectors, it recomputes the derived values directly
//! from docs/protocol.md (AES-GCM nonces and AADs, the transcript hash, HKDF written out as
//! HMAC, the layout of the ML-KEM keys), so the document is checked as well as the code.
//! ML-KEM encapsulation is randomized: a version 2 server cannot reproduce the committed
//! reply, so its reply is checked by the client finishing it instead.

use aws_lc_rs::{
    aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM},
    agreement::{self, PrivateKey, UnparsedPublicKey, X25519},
    digest::{self, SHA256, SHA3_256},
    hmac,
    kem::{Ciphertext, DecapsulationKey, EncapsulationKey, ML_KEM_768},
};
use serde_json::Value;
use xlattice_protocol::{
    handshake::{
        self, parse_hello_header, server_accept, ClientPending, ClientSecrets, HandshakeError, Offer, ServerSecrets,
        HELLO_HEADER_LEN, HELLO_LABEL, HELLO_LABEL_V2, HELLO_PLAIN_LEN, HYBRID_SENTINEL, KEM_CIPHERTEXT_LEN,
        KEM_KEY_LEN, MAGIC, PROOF_CONTEXT, PROOF_CONTEXT_V2, REPLY_LEN, REPLY_PLAIN_LEN, REPLY_V2_LEN,
        TRANSCRIPT_CONTEXT, TRANSCRIPT_CONTEXT_V2, VERSION,
    },
    record::{ContentType, RecordOpener, RecordSealer, RECORD_HEADER_LEN},
    replay::MAX_CLOCK_SKEW,
    DecryptionKey, Identity, MemberDirectory, NodeId, PortKind, PostQuantum, PublicKey, ReplayGuard, ServerContext,
    SigningKey, Version,
};
use zeroize::Zeroizing;

const V1: &str = "v1.json";
const V2: &str = "v2.json";

fn vectors(file: &str) -> Value {
    let path = format!("{}/../docs/test-vectors/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file} is not JSON: {e}"))
}

fn hex_field(v: &Value, key: &str) -> Vec<u8> {
    let s = v[key].as_str().unwrap_or_else(|| panic!("missing hex field {key}"));
    hex::decode(s).unwrap_or_else(|e| panic!("{key}: {e}"))
}

fn arr32(v: &Value, key: &str) -> [u8; 32] {
    hex_field(v, key)
        .try_into()
        .unwrap_or_else(|_| panic!("{key} is not 32 bytes"))
}

fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("missing string field {key}"))
}

fn identity(v: &Value) -> Identity {
    Identity {
        node_id: str_field(v, "node_id").parse::<NodeId>().unwrap(),
        sk: SigningKey::from_pkcs8_pem(str_field(v, "sk_private_pkcs8_pem").as_bytes()).unwrap(),
        ck: DecryptionKey::from_pkcs8_pem(str_field(v, "ck_private_pkcs8_pem").as_bytes()).unwrap(),
    }
}

fn port(name: &str) -> PortKind {
    match name {
        "client" => PortKind::Client,
        "cluster" => PortKind::Cluster,
        other => panic!("unknown port {other}"),
    }
}

fn sha256(parts: &[&[u8]]) -> Vec<u8> {
    let mut ctx = digest::Context::new(&SHA256);
    parts.iter().for_each(|p| ctx.update(p));
    ctx.finish().as_ref().to_vec()
}

fn gcm_nonce(last: u8) -> Nonce {
    let mut n = [0u8; 12];
    n[11] = last;
    Nonce::assume_unique_for_key(n)
}

fn gcm_open(key: &[u8], nonce: Nonce, aad: &[u8], sealed: &[u8]) -> Vec<u8> {
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).unwrap());
    let mut buf = sealed.to_vec();
    let len = key
        .open_in_place(nonce, Aad::from(aad), &mut buf)
        .expect("AES-GCM opens")
        .len();
    buf.truncate(len);
    buf
}

fn client_secrets(v: &Value) -> ClientSecrets {
    ClientSecrets {
        key1: Zeroizing::new(arr32(v, "key1")),
        nonce: arr32(v, "nonce"),
        ephemeral: Zeroizing::new(arr32(v, "ephemeral_private")),
        timestamp: v["timestamp"].as_u64().unwrap(),
    }
}

fn server_secrets(v: &Value) -> ServerSecrets {
    ServerSecrets {
        key2: Zeroizing::new(arr32(v, "key2")),
        nonce: arr32(v, "nonce"),
        ephemeral: Zeroizing::new(arr32(v, "ephemeral_private")),
    }
}

struct World {
    v: Value,
    server: Identity,
    member: Identity,
    directory: xlattice_protocol::DirectoryIndex,
}

fn world(file: &str) -> World {
    let v = vectors(file);
    let server = identity(&v["identities"]["server"]);
    let member = identity(&v["identities"]["member"]);
    let directory = MemberDirectory::from_slice(v["directory"].to_string().as_bytes())
        .unwrap()
        .index()
        .unwrap();
    World {
        v,
        server,
        member,
        directory,
    }
}

/// A server of this implementation: it speaks version 2, and requires it if told to.
fn server_context<'a>(
    w: &'a World,
    port: PortKind,
    replay: &'a ReplayGuard,
    post_quantum: PostQuantum,
) -> ServerContext<'a> {
    ServerContext {
        port,
        identity: &w.server,
        directory: &w.directory,
        replay,
        post_quantum,
    }
}

/// A file's constants: the implementation's, and the strings docs/protocol.md gives.
fn check_constants(file: &str, version: Version) -> Value {
    let v = vectors(file);
    let c = &v["constants"];
    let n = version as u8;
    assert_eq!(v["protocol_version"].as_u64(), Some(u64::from(n)));
    assert_eq!(hex_field(c, "magic"), MAGIC);
    assert_eq!(hex_field(c, "magic"), b"XL");
    let labels = version.labels();
    for (field, ours, text) in [
        ("hello_label", labels.hello, format!("xlattice/{n} hello")),
        ("proof_context", labels.proof, format!("xlattice/{n} member-proof\0")),
        (
            "transcript_context",
            labels.transcript,
            format!("xlattice/{n} transcript\0"),
        ),
        ("c2s_info", labels.c2s, format!("xlattice/{n} c2s")),
        ("s2c_info", labels.s2c, format!("xlattice/{n} s2c")),
    ] {
        assert_eq!(hex_field(c, field), ours, "{file}: {field}");
        assert_eq!(ours, text.as_bytes(), "{file}: {field}");
    }
    assert_eq!(c["max_clock_skew"].as_u64(), Some(MAX_CLOCK_SKEW));
    v
}

#[test]
fn constants_match_the_implementation() {
    check_constants(V1, Version::Classical);
    assert_eq!(VERSION, 1);
    let labels = Version::Classical.labels();
    assert_eq!(
        (labels.hello, labels.proof, labels.transcript),
        (HELLO_LABEL, PROOF_CONTEXT, TRANSCRIPT_CONTEXT)
    );
}

#[test]
fn v2_constants_match_the_implementation() {
    let v = check_constants(V2, Version::Hybrid);
    let c = &v["constants"];
    assert_eq!(c["kem_key_len"].as_u64(), Some(KEM_KEY_LEN as u64));
    assert_eq!(c["kem_ciphertext_len"].as_u64(), Some(KEM_CIPHERTEXT_LEN as u64));
    assert_eq!((KEM_KEY_LEN, KEM_CIPHERTEXT_LEN, REPLY_V2_LEN), (1184, 1088, 1206));
}

#[test]
fn keys_node_ids_and_directory_are_consistent() {
    let w = world(V1);
    let w2 = world(V2);
    assert_eq!(
        w.v["identities"], w2.v["identities"],
        "both files hold the same identities"
    );
    assert_eq!(
        w.v["directory"], w2.v["directory"],
        "both files hold the same directory"
    );
    for (name, id) in [("server", &w.server), ("member", &w.member)] {
        let j = &w.v["identities"][name];
        assert_eq!(
            id.sk_public(),
            &PublicKey::from_pem(str_field(j, "sk_public_spki_pem")).unwrap(),
            "{name} sk"
        );
        assert_eq!(
            id.ck_public(),
            &PublicKey::from_pem(str_field(j, "ck_public_spki_pem")).unwrap(),
            "{name} ck"
        );
        assert_eq!(id.sk_public().bits().bits() as u64, j["sk_bits"].as_u64().unwrap());
        assert_eq!(id.ck_public().bits().bits() as u64, j["ck_bits"].as_u64().unwrap());
        let member = w.directory.by_name(name).unwrap();
        assert_eq!(member.record.node_id, id.node_id);
        assert_eq!(&member.sk, id.sk_public());
        assert_eq!(&member.ck, id.ck_public());
        // The routing preamble's ck hint: the first 8 bytes of SHA-256 over the DER of the
        // directory's PEM as given, equal to the one the member computes from its own key.
        assert_eq!(&member.ck.hint()[..], &sha256(&[member.ck.spki_der()])[..8], "{name}");
        assert_eq!(member.ck.hint(), id.ck_public().hint(), "{name}");
    }
    // docs/protocol.md gives the preamble for the vectors' server.
    assert_eq!(
        hex::encode(handshake::route_preamble(&w.directory.by_name("server").unwrap().ck)),
        "584c010388ff4c438932cc41"
    );
}

#[test]
fn handshakes_reproduce_byte_for_byte() {
    let w = world(V1);
    let cases = w.v["handshakes"].as_array().unwrap();
    assert_eq!(cases.len(), 2);
    for hs in cases {
        check_handshake(&w, hs);
    }
}

fn check_handshake(w: &World, hs: &Value) {
    let name = str_field(hs, "name");
    let port = port(str_field(hs, "port"));
    let cs = &hs["client_secrets"];
    let ss = &hs["server_secrets"];
    let hello = hex_field(hs, "hello");
    let reply = hex_field(hs, "reply");
    let now = hs["server_now"].as_u64().unwrap();

    // The hello splits into header | RSA ciphertext | sealed proof as documented.
    let rsa_len = w.server.ck.size_bytes();
    let (_, rsa, _, sealed_proof) = hello_parts(name, hs, &hello, port, rsa_len, Version::Classical);

    // OAEP-SHA256 with the label opens to the stated 106-byte plaintext, laid out as documented.
    let plain = w.server.ck.decrypt_oaep(rsa, HELLO_LABEL).expect("OAEP decrypts");
    assert_eq!(&plain[..], &hex_field(hs, "hello_plaintext")[..], "{name}");
    assert_eq!(plain.len(), HELLO_PLAIN_LEN);
    assert_eq!(plain[0], VERSION);
    assert_eq!(plain[1], port as u8);
    assert_eq!(
        u64::from_be_bytes(plain[2..10].try_into().unwrap()),
        cs["timestamp"].as_u64().unwrap()
    );
    assert_eq!(&plain[10..42], hex_field(cs, "key1"));
    assert_eq!(&plain[42..74], hex_field(cs, "nonce"));
    assert_eq!(&plain[74..106], hex_field(cs, "ephemeral_public"));
    assert!(
        w.server.ck.decrypt_oaep(rsa, b"").is_none(),
        "{name}: the label is part of OAEP"
    );

    // X25519 public keys follow from the private ones; the shared secret agrees both ways.
    let shared = check_x25519(name, cs, ss, hs);

    // The member proof: AES-256-GCM(key1, nonce 0..01, AAD = header | RSA ciphertext),
    // and an RSA-PSS-SHA256 signature over PROOF_CONTEXT | header | RSA ciphertext.
    let key1 = hex_field(cs, "key1");
    match port {
        PortKind::Client => {
            assert!(sealed_proof.is_empty());
            assert!(hs["initiator"].is_null());
            assert!(hs["peer"].is_null());
        }
        PortKind::Cluster => {
            let proof = gcm_open(&key1, gcm_nonce(1), &hello[..HELLO_HEADER_LEN + rsa_len], sealed_proof);
            assert_eq!(proof, hex_field(hs, "proof_plaintext"), "{name}");
            let id_len = proof[0] as usize;
            assert_eq!(&proof[1..1 + id_len], w.member.node_id.as_bytes());
            let sig_len = u16::from_be_bytes([proof[1 + id_len], proof[2 + id_len]]) as usize;
            let signature = &proof[3 + id_len..];
            assert_eq!(signature.len(), sig_len);
            assert_eq!(sig_len, w.member.sk_public().bits().bytes());
            assert_eq!(signature, hex_field(hs, "proof_signature"));
            let signed = [PROOF_CONTEXT, &hello[..HELLO_HEADER_LEN + rsa_len]].concat();
            assert_eq!(signed, hex_field(hs, "proof_signed_message"));
            assert!(
                w.member.sk_public().verify_pss(&signed, signature),
                "{name}: PSS signature verifies"
            );
            assert!(!w.member.sk_public().verify_pss(&signed[1..], signature));
            assert_eq!(hs["peer"].as_str(), Some(w.member.node_id.to_string().as_str()));
        }
    }

    // The server, given the same hello, secrets and clock, answers with the same reply and
    // keys: this one, which speaks version 2 and so ends the server nonce with the sentinel,
    // and one that speaks only version 1 and sends the nonce as given (the vector's nonce
    // already ends with the sentinel).
    assert_eq!(
        hex_field(ss, "nonce")[24..],
        HYBRID_SENTINEL,
        "{name}: the server nonce ends with the sentinel"
    );
    let replay = ReplayGuard::default();
    let ctx = server_context(w, port, &replay, PostQuantum::Preferred);
    let accepted = server_accept(&ctx, &hello, now, server_secrets(ss)).expect("server accepts the vector hello");
    assert_eq!(accepted.reply, reply, "{name}: reply");
    assert_eq!(accepted.reply.len(), REPLY_LEN);
    let replay = ReplayGuard::default();
    let ctx = server_context(w, port, &replay, PostQuantum::Disabled);
    let v1_only = server_accept(&ctx, &hello, now, server_secrets(ss)).expect("a version 1 server accepts it");
    assert_eq!(v1_only.reply, reply, "{name}: reply of a version 1 only server");
    assert_eq!(
        accepted.keys.transcript_hash.to_vec(),
        hex_field(hs, "transcript_hash"),
        "{name}"
    );
    assert_eq!(
        accepted.keys.client_to_server.to_vec(),
        hex_field(hs, "client_to_server_key"),
        "{name}"
    );
    assert_eq!(
        accepted.keys.server_to_client.to_vec(),
        hex_field(hs, "server_to_client_key"),
        "{name}"
    );
    assert_eq!(
        accepted.peer.map(|p| p.to_string()).as_deref(),
        hs["peer"].as_str(),
        "{name}"
    );

    // The reply, as documented: header, then AES-256-GCM(key1, nonce 0..02,
    // AAD = header | SHA-256(hello)) of key2 | server nonce | server X25519 public.
    assert_eq!(&reply[..6], &[b'X', b'L', 1, 2, 0, 112]);
    let reply_aad = [&reply[..6], &sha256(&[&hello])[..]].concat();
    assert_eq!(reply_aad, hex_field(hs, "reply_aad"));
    let reply_plain = gcm_open(&key1, gcm_nonce(2), &reply_aad, &reply[6..]);
    assert_eq!(reply_plain, hex_field(hs, "reply_plaintext"));
    assert_eq!(
        reply_plain,
        [
            hex_field(ss, "key2"),
            hex_field(ss, "nonce"),
            hex_field(ss, "ephemeral_public")
        ]
        .concat()
    );
    assert_eq!(reply_plain[56..64], HYBRID_SENTINEL);

    // Our server puts the sentinel in every version 1 reply, whatever its randomness says.
    let mut plain_nonce = server_secrets(ss);
    plain_nonce.nonce[24..].fill(0);
    let replay = ReplayGuard::default();
    let ctx = server_context(w, port, &replay, PostQuantum::Preferred);
    let marked = server_accept(&ctx, &hello, now, plain_nonce).unwrap();
    let marked_plain = gcm_open(&key1, gcm_nonce(2), &reply_aad, &marked.reply[6..]);
    assert_eq!(
        marked_plain[32..56],
        hex_field(ss, "nonce")[..24],
        "{name}: the rest of the nonce is kept"
    );
    assert_eq!(marked_plain[56..64], HYBRID_SENTINEL, "{name}: the sentinel is set");
    assert_eq!(marked.reply, reply, "{name}: so the reply is the vector's");

    // The key schedule written out: transcript hash, HKDF-Extract and -Expand as HMAC-SHA256.
    let transcript = sha256(&[TRANSCRIPT_CONTEXT, &hello, &reply]);
    assert_eq!(transcript, hex_field(hs, "transcript_hash"));
    let prk = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, &transcript),
        &[hex_field(ss, "key2"), shared].concat(),
    );
    assert_eq!(prk.as_ref(), hex_field(hs, "hkdf_prk"));
    let prk_key = hmac::Key::new(hmac::HMAC_SHA256, prk.as_ref());
    let expand = |info: &[u8]| hmac::sign(&prk_key, &[info, &[1u8]].concat()).as_ref().to_vec();
    assert_eq!(expand(b"xlattice/1 c2s"), hex_field(hs, "client_to_server_key"));
    assert_eq!(expand(b"xlattice/1 s2c"), hex_field(hs, "server_to_client_key"));

    // The client, resumed with its secrets and the hello on the wire, derives the same keys.
    let pending = ClientPending::resume(client_secrets(cs), hello.clone(), Offer::Classical, None);
    assert_eq!(pending.hello(), &hello[..]);
    let keys = pending.finish(&reply).expect("client accepts the vector reply");
    assert_eq!(keys.transcript_hash, accepted.keys.transcript_hash);
    assert_eq!(*keys.client_to_server, *accepted.keys.client_to_server);
    assert_eq!(*keys.server_to_client, *accepted.keys.server_to_client);
    assert_eq!(keys.version, Version::Classical);

    // A client that offered version 2 first and fell back refuses it: the sentinel says the
    // server speaks version 2.
    let fell_back = ClientPending::resume(client_secrets(cs), hello.clone(), Offer::ClassicalAfterRefusal, None);
    assert!(
        matches!(fell_back.finish(&reply), Err(HandshakeError::Downgrade)),
        "{name}: downgrade"
    );

    check_records(hs, &keys);
}

#[test]
fn v2_handshakes_reproduce() {
    let w = world(V2);
    let cases = w.v["handshakes"].as_array().unwrap();
    assert_eq!(cases.len(), 2);
    for hs in cases {
        check_handshake_v2(&w, hs);
    }
}

/// FIPS 203 ML-KEM-768 decapsulation key: dk_pke (1152) | ek (1184) | H(ek) (32) | z (32).
const KEM_PRIVATE_LEN: usize = 2400;
const DK_PKE_LEN: usize = 1152;

fn check_handshake_v2(w: &World, hs: &Value) {
    let name = str_field(hs, "name");
    let port = port(str_field(hs, "port"));
    let cs = &hs["client_secrets"];
    let ss = &hs["server_secrets"];
    let hello = hex_field(hs, "hello");
    let reply = hex_field(hs, "reply");
    let now = hs["server_now"].as_u64().unwrap();
    let kem_private = hex_field(hs, "kem_private");
    let kem_public = hex_field(hs, "kem_public");
    let kem_ciphertext = hex_field(hs, "kem_ciphertext");
    let kem_shared = hex_field(hs, "kem_shared_secret");

    // The hello splits into header | RSA ciphertext | ML-KEM key | sealed proof.
    let rsa_len = w.server.ck.size_bytes();
    let (_, rsa, kem_key, sealed_proof) = hello_parts(name, hs, &hello, port, rsa_len, Version::Hybrid);
    let signed_end = HELLO_HEADER_LEN + rsa_len + KEM_KEY_LEN;

    // OAEP with the version 2 label opens to the 106-byte plaintext; the version 1 label does not.
    let plain = w.server.ck.decrypt_oaep(rsa, HELLO_LABEL_V2).expect("OAEP decrypts");
    assert_eq!(&plain[..], &hex_field(hs, "hello_plaintext")[..], "{name}");
    assert_eq!(plain.len(), HELLO_PLAIN_LEN);
    assert_eq!(plain[0], 2);
    assert_eq!(plain[1], port as u8);
    assert_eq!(
        u64::from_be_bytes(plain[2..10].try_into().unwrap()),
        cs["timestamp"].as_u64().unwrap()
    );
    assert_eq!(&plain[10..42], hex_field(cs, "key1"));
    assert_eq!(&plain[42..74], hex_field(cs, "nonce"));
    assert_eq!(&plain[74..106], hex_field(cs, "ephemeral_public"));
    assert!(w.server.ck.decrypt_oaep(rsa, HELLO_LABEL).is_none(), "{name}: v1 label");

    // X25519, as in version 1.
    let shared = check_x25519(name, cs, ss, hs);

    // ML-KEM-768: the decapsulation key in FIPS 203 form holds the encapsulation key (the
    // one in the hello) and its SHA3-256 hash; decapsulating the ciphertext gives the secret.
    assert_eq!(kem_private.len(), KEM_PRIVATE_LEN, "{name}");
    assert_eq!(kem_public.len(), KEM_KEY_LEN, "{name}");
    assert_eq!(kem_ciphertext.len(), KEM_CIPHERTEXT_LEN, "{name}");
    assert_eq!(kem_shared.len(), 32, "{name}");
    assert_eq!(kem_public, kem_key, "{name}: kem_public is the key in the hello");
    assert_eq!(
        &kem_private[DK_PKE_LEN..DK_PKE_LEN + KEM_KEY_LEN],
        &kem_public[..],
        "{name}: ek inside dk"
    );
    assert_eq!(
        &kem_private[DK_PKE_LEN + KEM_KEY_LEN..DK_PKE_LEN + KEM_KEY_LEN + 32],
        digest::digest(&SHA3_256, &kem_public).as_ref(),
        "{name}: H(ek) inside dk"
    );
    // (aws-lc-rs cannot derive the encapsulation key of a decapsulation key made from bytes,
    // hence the layout check above.)
    let dk = DecapsulationKey::new(&ML_KEM_768, &kem_private).expect("an ML-KEM-768 decapsulation key");
    let decapsulated = dk.decapsulate(Ciphertext::from(&kem_ciphertext[..])).unwrap();
    assert_eq!(decapsulated.as_ref(), &kem_shared[..], "{name}: Decaps(dk, ct)");
    let (ct, secret) = EncapsulationKey::new(&ML_KEM_768, &kem_public)
        .unwrap()
        .encapsulate()
        .unwrap();
    assert_eq!(
        dk.decapsulate(Ciphertext::from(ct.as_ref())).unwrap().as_ref(),
        secret.as_ref()
    );

    // The member proof: AAD and signed message now end with the ML-KEM key.
    let key1 = hex_field(cs, "key1");
    match port {
        PortKind::Client => {
            assert!(sealed_proof.is_empty());
            assert!(hs["initiator"].is_null());
            assert!(hs["peer"].is_null());
        }
        PortKind::Cluster => {
            let proof = gcm_open(&key1, gcm_nonce(1), &hello[..signed_end], sealed_proof);
            assert_eq!(proof, hex_field(hs, "proof_plaintext"), "{name}");
            let id_len = proof[0] as usize;
            assert_eq!(&proof[1..1 + id_len], w.member.node_id.as_bytes());
            let sig_len = u16::from_be_bytes([proof[1 + id_len], proof[2 + id_len]]) as usize;
            let signature = &proof[3 + id_len..];
            assert_eq!(signature.len(), sig_len);
            assert_eq!(signature, hex_field(hs, "proof_signature"));
            let signed = [PROOF_CONTEXT_V2, &hello[..signed_end]].concat();
            assert_eq!(signed, hex_field(hs, "proof_signed_message"));
            assert!(w.member.sk_public().verify_pss(&signed, signature), "{name}: PSS");
            let v1_context = [PROOF_CONTEXT, &hello[..signed_end]].concat();
            assert!(
                !w.member.sk_public().verify_pss(&v1_context, signature),
                "{name}: v1 context"
            );
            assert_eq!(hs["peer"].as_str(), Some(w.member.node_id.to_string().as_str()));
        }
    }

    // The reply: header, then AES-256-GCM(key1, nonce 0..02, AAD = header | SHA-256(hello))
    // of key2 | server nonce | server X25519 public | ML-KEM ciphertext.
    assert_eq!(reply.len(), REPLY_V2_LEN);
    assert_eq!(&reply[..6], &[b'X', b'L', 2, 2, 0x04, 0xb0]);
    let reply_aad = [&reply[..6], &sha256(&[&hello])[..]].concat();
    assert_eq!(reply_aad, hex_field(hs, "reply_aad"));
    let reply_plain = gcm_open(&key1, gcm_nonce(2), &reply_aad, &reply[6..]);
    assert_eq!(reply_plain, hex_field(hs, "reply_plaintext"));
    assert_eq!(
        reply_plain,
        [
            hex_field(ss, "key2"),
            hex_field(ss, "nonce"),
            hex_field(ss, "ephemeral_public"),
            kem_ciphertext.clone(),
        ]
        .concat()
    );

    // The key schedule written out: IKM = key2 | X25519 shared | ML-KEM shared (96 bytes).
    let transcript = sha256(&[TRANSCRIPT_CONTEXT_V2, &hello, &reply]);
    assert_eq!(transcript, hex_field(hs, "transcript_hash"));
    let ikm = [hex_field(ss, "key2"), shared, kem_shared].concat();
    assert_eq!(ikm.len(), 96);
    let prk = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &transcript), &ikm);
    assert_eq!(prk.as_ref(), hex_field(hs, "hkdf_prk"));
    let prk_key = hmac::Key::new(hmac::HMAC_SHA256, prk.as_ref());
    let expand = |info: &[u8]| hmac::sign(&prk_key, &[info, &[1u8]].concat()).as_ref().to_vec();
    assert_eq!(expand(b"xlattice/2 c2s"), hex_field(hs, "client_to_server_key"));
    assert_eq!(expand(b"xlattice/2 s2c"), hex_field(hs, "server_to_client_key"));

    // The client, resumed with its secrets, the hello and the ML-KEM key, finishes the
    // committed reply with exactly the committed keys.
    let resume = || ClientPending::resume(client_secrets(cs), hello.clone(), Offer::Hybrid, Some(&kem_private));
    let pending = resume();
    assert_eq!(pending.hello(), &hello[..]);
    assert_eq!(pending.reply_len(), REPLY_V2_LEN);
    assert_eq!(pending.kem_private().as_deref(), Some(&kem_private[..]));
    let keys = pending.finish(&reply).expect("client accepts the vector reply");
    assert_eq!(keys.version, Version::Hybrid);
    assert_eq!(
        keys.transcript_hash.to_vec(),
        hex_field(hs, "transcript_hash"),
        "{name}"
    );
    assert_eq!(
        keys.client_to_server.to_vec(),
        hex_field(hs, "client_to_server_key"),
        "{name}"
    );
    assert_eq!(
        keys.server_to_client.to_vec(),
        hex_field(hs, "server_to_client_key"),
        "{name}"
    );
    check_records(hs, &keys);

    // The server cannot reproduce the reply (encapsulation is randomized), but everything
    // else in it: its length, header, and the plaintext up to the ciphertext. The client
    // finishes it with the server's keys.
    for post_quantum in [PostQuantum::Preferred, PostQuantum::Required] {
        let replay = ReplayGuard::default();
        let ctx = server_context(w, port, &replay, post_quantum);
        let accepted = server_accept(&ctx, &hello, now, server_secrets(ss)).expect("server accepts the vector hello");
        assert_eq!(accepted.reply.len(), reply.len(), "{name}");
        assert_eq!(accepted.reply[..6], reply[..6], "{name}");
        let plain = gcm_open(&key1, gcm_nonce(2), &reply_aad, &accepted.reply[6..]);
        assert_eq!(plain[..REPLY_PLAIN_LEN], reply_plain[..REPLY_PLAIN_LEN], "{name}");
        assert_ne!(
            plain[REPLY_PLAIN_LEN..],
            kem_ciphertext[..],
            "{name}: a fresh encapsulation"
        );
        assert_eq!(accepted.keys.version, Version::Hybrid);
        assert_eq!(
            accepted.peer.map(|p| p.to_string()).as_deref(),
            hs["peer"].as_str(),
            "{name}"
        );
        let client = resume()
            .finish(&accepted.reply)
            .expect("client accepts the server's reply");
        assert_eq!(client.transcript_hash, accepted.keys.transcript_hash, "{name}");
        assert_eq!(*client.client_to_server, *accepted.keys.client_to_server, "{name}");
        assert_eq!(*client.server_to_client, *accepted.keys.server_to_client, "{name}");
        assert_ne!(client.transcript_hash.to_vec(), hex_field(hs, "transcript_hash"));
    }

    // A server that speaks only version 1 does not know this hello.
    let replay = ReplayGuard::default();
    let ctx = server_context(w, port, &replay, PostQuantum::Disabled);
    let refused = server_accept(&ctx, &hello, now, server_secrets(ss))
        .err()
        .expect("refused");
    assert_eq!(refused.reason(), "unsupported_version");
}

fn check_records(hs: &Value, keys: &handshake::SessionKeys) {
    let records = hs["records"].as_array().unwrap();
    assert!(records.len() >= 4, "records in both directions");
    let kinds: Vec<&str> = records.iter().map(|r| str_field(r, "type")).collect();
    for kind in ["data", "close", "key_update"] {
        assert!(kinds.contains(&kind), "the records include a {kind} record");
    }
    for direction in ["client_to_server", "server_to_client"] {
        let key = if direction == "client_to_server" {
            &keys.client_to_server
        } else {
            &keys.server_to_client
        };
        let mut sealer = RecordSealer::new(key);
        let mut opener = RecordOpener::new(key);
        // This direction's current key and sequence number, kept by hand as documented.
        let mut current = key.to_vec();
        let mut seq = 0u64;
        let mut after_update = false;
        for (i, r) in records.iter().filter(|r| r["direction"] == direction).enumerate() {
            assert_eq!(
                r["seq"].as_u64(),
                Some(seq),
                "{direction} record {i}: seq counts from 0 under each key"
            );
            let kind = match str_field(r, "type") {
                "data" => ContentType::Data,
                "close" => ContentType::Close,
                "key_update" => ContentType::KeyUpdate,
                other => panic!("unknown record type {other}"),
            };
            let payload = hex_field(r, "payload");
            let record = hex_field(r, "record");
            let mut sealed = Vec::new();
            sealer.seal(kind, &payload, &mut sealed).unwrap();
            assert_eq!(
                sealed, record,
                "{direction} record {i}: RecordSealer reproduces the record"
            );

            // Open it with the library and by hand (nonce = 0^4 | seq BE, AAD = length bytes).
            let header = [record[0], record[1]];
            let len = RecordOpener::ciphertext_len(header).unwrap();
            assert_eq!(RECORD_HEADER_LEN + len, record.len());
            assert_eq!(len, payload.len() + 1 + 16);
            let mut body = record[RECORD_HEADER_LEN..].to_vec();
            let (got_kind, got) = opener.open(header, &mut body).unwrap();
            assert_eq!((got_kind, got), (kind, &payload[..]), "{direction} record {i}");
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&seq.to_be_bytes());
            let inner = gcm_open(
                &current,
                Nonce::assume_unique_for_key(nonce),
                &header,
                &record[RECORD_HEADER_LEN..],
            );
            assert_eq!(inner, [&payload[..], &[kind as u8]].concat());
            if after_update {
                assert!(
                    gcm_open_fails(&key[..], &nonce, &header, &record[RECORD_HEADER_LEN..]),
                    "{direction} record {i}: after a key update the first key no longer opens"
                );
            }
            if kind == ContentType::KeyUpdate {
                assert!(payload.is_empty(), "a key update carries no payload");
                // next = HKDF-Expand-SHA256(PRK = current, "xlattice/1 key update", 32), which
                // for one block is HMAC-SHA256(current, info | 01).
                current = hmac::sign(
                    &hmac::Key::new(hmac::HMAC_SHA256, &current),
                    b"xlattice/1 key update\x01",
                )
                .as_ref()
                .to_vec();
                seq = 0;
                after_update = true;
            } else {
                seq += 1;
            }
        }
    }
}

/// Whether AES-256-GCM under `key` refuses `sealed`.
fn gcm_open_fails(key: &[u8], nonce: &[u8; 12], aad: &[u8], sealed: &[u8]) -> bool {
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).unwrap());
    let mut buf = sealed.to_vec();
    key.open_in_place(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), &mut buf)
        .is_err()
}

#[test]
fn rejections_fail_with_the_stated_reason_and_send_nothing() {
    check_rejections(&world(V1), 10);
}

#[test]
fn v2_rejections_fail_with_the_stated_reason_and_send_nothing() {
    let w = world(V2);
    check_rejections(&w, 5);
    let reasons: Vec<&str> = w.v["rejections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| str_field(r, "expected_error"))
        .collect();
    for reason in [
        "bad_kem_key",
        "bad_length",
        "undecryptable",
        "bad_proof",
        "classical_refused",
    ] {
        assert!(reasons.contains(&reason), "v2.json has a {reason} rejection");
    }
}

/// Each rejection against a fresh replay cache; a server that requires version 2 where the
/// entry says so (`server_requires_hybrid`, absent in v1.json), else one that prefers it.
fn check_rejections(w: &World, at_least: usize) {
    let rejections = w.v["rejections"].as_array().unwrap();
    assert!(rejections.len() >= at_least);
    for r in rejections {
        let name = str_field(r, "name");
        let hello = hex_field(r, "hello");
        let now = r["server_now"].as_u64().unwrap();
        let requires_hybrid = match &r["server_requires_hybrid"] {
            Value::Null => false,
            other => other
                .as_bool()
                .unwrap_or_else(|| panic!("{name}: server_requires_hybrid")),
        };
        let post_quantum = if requires_hybrid {
            PostQuantum::Required
        } else {
            PostQuantum::Preferred
        };
        let replay = ReplayGuard::default();
        let ctx = server_context(w, port(str_field(r, "port")), &replay, post_quantum);
        if r["accept_first"].as_bool().unwrap() {
            server_accept(&ctx, &hello, now, ServerSecrets::random())
                .unwrap_or_else(|e| panic!("{name}: first use: {e}"));
        }
        // An error is all there is: no reply is produced, so nothing can be sent.
        match server_accept(&ctx, &hello, now, ServerSecrets::random()) {
            Ok(_) => panic!("{name}: accepted"),
            Err(e) => assert_eq!(e.reason(), str_field(r, "expected_error"), "{name}: {e}"),
        }
    }
}

#[test]
fn a_tampered_reply_is_refused_by_the_client() {
    let w = world(V1);
    for hs in w.v["handshakes"].as_array().unwrap() {
        check_tampered_replies(hs, Offer::Classical, &[0, 2, 3, 5, 6, 50, 70, REPLY_LEN - 1]);
    }
}

#[test]
fn a_tampered_v2_reply_is_refused_by_the_client() {
    let w = world(V2);
    for hs in w.v["handshakes"].as_array().unwrap() {
        // 6 + 96 + 10 is inside the ML-KEM ciphertext.
        check_tampered_replies(
            hs,
            Offer::Hybrid,
            &[0, 2, 3, 4, 5, 6, 50, 6 + 96 + 10, REPLY_V2_LEN - 1],
        );
    }
}

fn check_tampered_replies(hs: &Value, offer: Offer, bytes: &[usize]) {
    let kem_private = (offer == Offer::Hybrid).then(|| hex_field(hs, "kem_private"));
    let resume = |hello: Vec<u8>| {
        ClientPending::resume(
            client_secrets(&hs["client_secrets"]),
            hello,
            offer,
            kem_private.as_deref(),
        )
    };
    let reply = hex_field(hs, "reply");
    for &i in bytes {
        let mut bad = reply.clone();
        bad[i] ^= 0x01;
        assert!(
            resume(hex_field(hs, "hello")).finish(&bad).is_err(),
            "byte {i} of the reply flipped"
        );
    }
    assert!(resume(hex_field(hs, "hello"))
        .finish(&reply[..reply.len() - 1])
        .is_err());
    // The reply answers this hello only.
    let mut other_hello = hex_field(hs, "hello");
    *other_hello.last_mut().unwrap() ^= 1;
    assert!(resume(other_hello).finish(&reply).is_err());
}

#[test]
fn member_signatures_must_use_a_32_byte_salt() {
    use aws_lc_rs::{
        rand::SystemRandom,
        signature::{RsaKeyPair, RsaPssSaltLength, RsaSignatureEncoding, RSA_PSS_SHA256},
    };
    let w = world(V1);
    let pem = str_field(&w.v["identities"]["member"], "sk_private_pkcs8_pem");
    let der = pem::parse(pem).unwrap().into_contents();
    let pair = RsaKeyPair::from_pkcs8(&der).unwrap();
    let message = b"xlattice/1 member-proof\0 any message";
    let sign = |encoding: &'static RsaSignatureEncoding| {
        let mut sig = vec![0u8; pair.public_modulus_len()];
        pair.sign(encoding, &SystemRandom::new(), message, &mut sig).unwrap();
        sig
    };
    const SALT_32: RsaSignatureEncoding = RSA_PSS_SHA256.with_pss_salt_length(RsaPssSaltLength::Custom(32));
    const SALT_20: RsaSignatureEncoding = RSA_PSS_SHA256.with_pss_salt_length(RsaPssSaltLength::Custom(20));
    const SALT_0: RsaSignatureEncoding = RSA_PSS_SHA256.with_pss_salt_length(RsaPssSaltLength::Custom(0));
    const SALT_MAX: RsaSignatureEncoding = RSA_PSS_SHA256.with_pss_salt_length(RsaPssSaltLength::Max);
    let sk = w.member.sk_public();
    assert!(sk.verify_pss(message, &sign(&SALT_32)));
    assert!(sk.verify_pss(message, &w.member.sk.sign_pss(message)));
    for (name, encoding) in [("20", &SALT_20), ("0", &SALT_0), ("max", &SALT_MAX)] {
        assert!(
            !sk.verify_pss(message, &sign(encoding)),
            "a PSS salt of {name} bytes must be refused"
        );
    }
}

/// X25519: the public keys follow from the private ones, and the shared secret agrees.
fn check_x25519(name: &str, cs: &Value, ss: &Value, hs: &Value) -> Vec<u8> {
    for (secrets, who) in [(cs, "client"), (ss, "server")] {
        let key = PrivateKey::from_private_key(&X25519, &hex_field(secrets, "ephemeral_private")).unwrap();
        assert_eq!(
            key.compute_public_key().unwrap().as_ref(),
            hex_field(secrets, "ephemeral_public"),
            "{name} {who}"
        );
    }
    let client_eph = PrivateKey::from_private_key(&X25519, &hex_field(cs, "ephemeral_private")).unwrap();
    let shared = agreement::agree(
        &client_eph,
        UnparsedPublicKey::new(&X25519, hex_field(ss, "ephemeral_public")),
        (),
        |s| Ok(s.to_vec()),
    )
    .unwrap();
    assert_eq!(shared, hex_field(hs, "x25519_shared_secret"), "{name}");
    shared
}

/// The hello's parts as documented (header | RSA ciphertext | [v2] ML-KEM key | sealed
/// proof), each equal to its field, and the header's version, type and lengths.
fn hello_parts<'h>(
    name: &str,
    hs: &Value,
    hello: &'h [u8],
    port: PortKind,
    rsa_len: usize,
    version: Version,
) -> (&'h [u8], &'h [u8], &'h [u8], &'h [u8]) {
    let kem_len = match version {
        Version::Classical => 0,
        Version::Hybrid => KEM_KEY_LEN,
    };
    let (header, rest) = hello.split_at(HELLO_HEADER_LEN);
    let (rsa, rest) = rest.split_at(rsa_len);
    let (kem_key, sealed_proof) = rest.split_at(kem_len);
    assert_eq!(header, hex_field(hs, "hello_header"), "{name}");
    assert_eq!(rsa, hex_field(hs, "hello_rsa_ciphertext"), "{name}");
    if version == Version::Hybrid {
        assert_eq!(kem_key, hex_field(hs, "hello_kem_key"), "{name}");
    }
    assert_eq!(sealed_proof, hex_field(hs, "hello_sealed_proof"), "{name}");
    assert_eq!(&header[..4], &[b'X', b'L', version as u8, 1], "{name}");
    assert_eq!(u16::from_be_bytes([header[4], header[5]]) as usize, rsa_len, "{name}");
    assert_eq!(
        u16::from_be_bytes([header[6], header[7]]) as usize,
        sealed_proof.len(),
        "{name}"
    );
    let lens = parse_hello_header(header.try_into().unwrap(), port, rsa_len).unwrap();
    assert_eq!(lens.version, version, "{name}");
    assert_eq!(
        (lens.rsa_len, lens.kem_len, lens.proof_len),
        (rsa_len, kem_len, sealed_proof.len()),
        "{name}"
    );
    (header, rsa, kem_key, sealed_proof)
}

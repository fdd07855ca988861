//! Checks the implementation against the committed docs/test-vectors/v1.json, field by
//! field. It never regenerates the file: if the wire format changes, this fails until the
//! vectors are regenerated on purpose (protocol/examples/gen_test_vectors.rs) and docs/protocol.md
//! is updated to match.
//!
//! Besides running the library on the vectors, it recomputes the derived values directly
//! from docs/protocol.md (AES-GCM nonces and AADs, the transcript hash, HKDF written out as
//! HMAC), so the document is checked as well as the code.

use aws_lc_rs::{
    aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM},
    agreement::{self, PrivateKey, UnparsedPublicKey, X25519},
    digest::{self, SHA256},
    hmac,
};
use serde_json::Value;
use xlattice_protocol::{
    handshake::{
        self, parse_hello_header, server_accept, ClientPending, ClientSecrets, ServerSecrets, HELLO_HEADER_LEN,
        HELLO_LABEL, HELLO_PLAIN_LEN, MAGIC, PROOF_CONTEXT, REPLY_LEN, TRANSCRIPT_CONTEXT, VERSION,
    },
    record::{ContentType, RecordOpener, RecordSealer, RECORD_HEADER_LEN},
    replay::MAX_CLOCK_SKEW,
    DecryptionKey, Identity, MemberDirectory, NodeId, PortKind, PublicKey, ReplayGuard, ServerContext, SigningKey,
};
use zeroize::Zeroizing;

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/test-vectors/v1.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).expect("v1.json is JSON")
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

fn world() -> World {
    let v = vectors();
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

#[test]
fn constants_match_the_implementation() {
    let v = vectors();
    let c = &v["constants"];
    assert_eq!(v["protocol_version"].as_u64(), Some(VERSION as u64));
    assert_eq!(hex_field(c, "magic"), MAGIC);
    assert_eq!(hex_field(c, "magic"), b"XL");
    assert_eq!(hex_field(c, "hello_label"), HELLO_LABEL);
    assert_eq!(hex_field(c, "hello_label"), b"xlattice/1 hello");
    assert_eq!(hex_field(c, "proof_context"), PROOF_CONTEXT);
    assert_eq!(hex_field(c, "proof_context"), b"xlattice/1 member-proof\0");
    assert_eq!(hex_field(c, "transcript_context"), TRANSCRIPT_CONTEXT);
    assert_eq!(hex_field(c, "transcript_context"), b"xlattice/1 transcript\0");
    assert_eq!(hex_field(c, "c2s_info"), handshake::C2S_INFO);
    assert_eq!(hex_field(c, "c2s_info"), b"xlattice/1 c2s");
    assert_eq!(hex_field(c, "s2c_info"), handshake::S2C_INFO);
    assert_eq!(hex_field(c, "s2c_info"), b"xlattice/1 s2c");
    assert_eq!(c["max_clock_skew"].as_u64(), Some(MAX_CLOCK_SKEW));
}

#[test]
fn keys_node_ids_and_directory_are_consistent() {
    let w = world();
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
    }
}

#[test]
fn handshakes_reproduce_byte_for_byte() {
    let w = world();
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
    let header = &hello[..HELLO_HEADER_LEN];
    let rsa = &hello[HELLO_HEADER_LEN..HELLO_HEADER_LEN + rsa_len];
    let sealed_proof = &hello[HELLO_HEADER_LEN + rsa_len..];
    assert_eq!(header, hex_field(hs, "hello_header"), "{name}");
    assert_eq!(rsa, hex_field(hs, "hello_rsa_ciphertext"), "{name}");
    assert_eq!(sealed_proof, hex_field(hs, "hello_sealed_proof"), "{name}");
    assert_eq!(&header[..4], &[b'X', b'L', 1, 1], "{name}");
    assert_eq!(u16::from_be_bytes([header[4], header[5]]) as usize, rsa_len, "{name}");
    assert_eq!(
        u16::from_be_bytes([header[6], header[7]]) as usize,
        sealed_proof.len(),
        "{name}"
    );
    let lens = parse_hello_header(header.try_into().unwrap(), port, rsa_len).unwrap();
    assert_eq!((lens.rsa_len, lens.proof_len), (rsa_len, sealed_proof.len()));

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

    // The server, given the same hello, secrets and clock, answers with the same reply and keys.
    let replay = ReplayGuard::default();
    let ctx = ServerContext {
        port,
        identity: &w.server,
        directory: &w.directory,
        replay: &replay,
    };
    let accepted = server_accept(&ctx, &hello, now, server_secrets(ss)).expect("server accepts the vector hello");
    assert_eq!(accepted.reply, reply, "{name}: reply");
    assert_eq!(accepted.reply.len(), REPLY_LEN);
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
    let pending = ClientPending::resume(client_secrets(cs), hello.clone());
    assert_eq!(pending.hello(), &hello[..]);
    let keys = pending.finish(&reply).expect("client accepts the vector reply");
    assert_eq!(keys.transcript_hash, accepted.keys.transcript_hash);
    assert_eq!(*keys.client_to_server, *accepted.keys.client_to_server);
    assert_eq!(*keys.server_to_client, *accepted.keys.server_to_client);

    check_records(hs, &keys);
}

fn check_records(hs: &Value, keys: &handshake::SessionKeys) {
    let records = hs["records"].as_array().unwrap();
    assert!(records.len() >= 4, "records in both directions");
    for direction in ["client_to_server", "server_to_client"] {
        let key = if direction == "client_to_server" {
            &keys.client_to_server
        } else {
            &keys.server_to_client
        };
        let mut sealer = RecordSealer::new(key);
        let mut opener = RecordOpener::new(key);
        let mut seen_close = false;
        for (i, r) in records.iter().filter(|r| r["direction"] == direction).enumerate() {
            assert_eq!(
                r["seq"].as_u64(),
                Some(i as u64),
                "{direction} records are in sequence order"
            );
            let kind = match str_field(r, "type") {
                "data" => ContentType::Data,
                "close" => ContentType::Close,
                other => panic!("unknown record type {other}"),
            };
            let payload = hex_field(r, "payload");
            let record = hex_field(r, "record");
            let mut sealed = Vec::new();
            sealer.seal(kind, &payload, &mut sealed).unwrap();
            assert_eq!(
                sealed, record,
                "{direction} seq {i}: RecordSealer reproduces the record"
            );

            // Open it with the library and by hand (nonce = 0^4 | seq BE, AAD = length bytes).
            let header = [record[0], record[1]];
            let len = RecordOpener::ciphertext_len(header).unwrap();
            assert_eq!(RECORD_HEADER_LEN + len, record.len());
            assert_eq!(len, payload.len() + 1 + 16);
            let mut body = record[RECORD_HEADER_LEN..].to_vec();
            let (got_kind, got) = opener.open(header, &mut body).unwrap();
            assert_eq!((got_kind, got), (kind, &payload[..]), "{direction} seq {i}");
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&(i as u64).to_be_bytes());
            let inner = gcm_open(
                &key[..],
                Nonce::assume_unique_for_key(nonce),
                &header,
                &record[RECORD_HEADER_LEN..],
            );
            assert_eq!(inner, [&payload[..], &[kind as u8]].concat());
            seen_close |= kind == ContentType::Close;
        }
        assert!(seen_close, "{direction} ends with a close record");
    }
}

#[test]
fn rejections_fail_with_the_stated_reason_and_send_nothing() {
    let w = world();
    let rejections = w.v["rejections"].as_array().unwrap();
    assert!(rejections.len() >= 10);
    for r in rejections {
        let name = str_field(r, "name");
        let hello = hex_field(r, "hello");
        let now = r["server_now"].as_u64().unwrap();
        let replay = ReplayGuard::default();
        let ctx = ServerContext {
            port: port(str_field(r, "port")),
            identity: &w.server,
            directory: &w.directory,
            replay: &replay,
        };
        if r["accept_first"].as_bool().unwrap() {
            server_accept(&ctx, &hello, now, ServerSecrets::random())
                .unwrap_or_else(|e| panic!("{name}: first use: {e}"));
        }
        match server_accept(&ctx, &hello, now, ServerSecrets::random()) {
            Ok(_) => panic!("{name}: accepted"),
            Err(e) => assert_eq!(e.reason(), str_field(r, "expected_error"), "{name}: {e}"),
        }
    }
}

#[test]
fn a_tampered_reply_is_refused_by_the_client() {
    let w = world();
    for hs in w.v["handshakes"].as_array().unwrap() {
        let reply = hex_field(hs, "reply");
        for i in [0, 2, 3, 5, 6, 50, REPLY_LEN - 1] {
            let mut bad = reply.clone();
            bad[i] ^= 0x01;
            let pending = ClientPending::resume(client_secrets(&hs["client_secrets"]), hex_field(hs, "hello"));
            assert!(pending.finish(&bad).is_err(), "byte {i} of the reply flipped");
        }
        // The reply answers this hello only.
        let mut other_hello = hex_field(hs, "hello");
        *other_hello.last_mut().unwrap() ^= 1;
        let pending = ClientPending::resume(client_secrets(&hs["client_secrets"]), other_hello);
        assert!(pending.finish(&reply).is_err());
    }
}

#[test]
fn member_signatures_must_use_a_32_byte_salt() {
    use aws_lc_rs::{
        rand::SystemRandom,
        signature::{RsaKeyPair, RsaPssSaltLength, RsaSignatureEncoding, RSA_PSS_SHA256},
    };
    let w = world();
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

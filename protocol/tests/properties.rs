//! Property tests of everything that reads bytes from the network: the hello decoder,
//! the record opener and `SecureStream`. Hostile input must produce an error, never a
//! panic, and never an accepted handshake; valid streams survive any chunking.
//!
//! RSA-heavy properties run a few hundred cases (one OAEP decryption each); set
//! PROPTEST_CASES to run more.

use std::sync::OnceLock;

use proptest::{collection::vec, prelude::*};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xlattice_protocol::{
    handshake::{
        client_hello, parse_hello_header, server_accept, ClientSecrets, ServerSecrets, SessionKeys, HELLO_HEADER_LEN,
        MAX_PROOF_LEN, MIN_PROOF_LEN,
    },
    record::{ContentType, RecordError, RecordOpener, RecordSealer, MAX_CIPHERTEXT, MAX_PAYLOAD, MIN_CIPHERTEXT},
    DirectoryIndex, Identity, MemberDirectory, MemberRecord, NodeIdBits, PortKind, ReplayGuard, Role, RsaBits,
    SecureStream, ServerContext,
};
use zeroize::Zeroizing;

struct Fixture {
    server: Identity,
    directory: DirectoryIndex,
    client_hello: Vec<u8>,
    cluster_hello: Vec<u8>,
}

/// One server and one member for the whole file (RSA key generation is the slow part).
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let server = Identity::generate(NodeIdBits::B256, RsaBits::B2048).unwrap();
        let member = Identity::generate(NodeIdBits::B160, RsaBits::B2048).unwrap();
        let directory = MemberDirectory {
            cluster: "test/properties".into(),
            members: vec![
                MemberRecord::for_identity("server", &server),
                MemberRecord::for_identity("member", &member),
            ],
        }
        .index()
        .unwrap();
        let (client, _) = client_hello(server.ck_public(), PortKind::Client, None, ClientSecrets::random()).unwrap();
        let (cluster, _) = client_hello(
            server.ck_public(),
            PortKind::Cluster,
            Some(&member),
            ClientSecrets::random(),
        )
        .unwrap();
        let fixture = Fixture {
            server,
            directory,
            client_hello: client,
            cluster_hello: cluster,
        };
        // The unmutated hellos are good: every rejection below is caused by the mutation.
        for (port, hello) in [
            (PortKind::Client, &fixture.client_hello),
            (PortKind::Cluster, &fixture.cluster_hello),
        ] {
            accept(&fixture, port, hello).expect("the unmutated hello is accepted");
        }
        fixture
    })
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Runs the server side on `hello` with a fresh replay cache (so a replay is never the reason).
fn accept(f: &Fixture, port: PortKind, hello: &[u8]) -> Result<(), String> {
    let replay = ReplayGuard::default();
    let ctx = ServerContext {
        port,
        identity: &f.server,
        directory: &f.directory,
        replay: &replay,
        post_quantum: xlattice_protocol::PostQuantum::Preferred,
    };
    server_accept(&ctx, hello, now(), ServerSecrets::random())
        .map(|_| ())
        .map_err(|e| e.reason().to_string())
}

fn port_strategy() -> impl Strategy<Value = PortKind> {
    prop_oneof![Just(PortKind::Client), Just(PortKind::Cluster)]
}

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit { at: usize, bit: u8 },
    Truncate { len: usize },
    Extend { tail: Vec<u8> },
    Overwrite { at: usize, bytes: Vec<u8> },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        1 => any::<usize>().prop_map(|len| Mutation::Truncate { len }),
        1 => vec(any::<u8>(), 1..64).prop_map(|tail| Mutation::Extend { tail }),
        1 => (any::<usize>(), vec(any::<u8>(), 1..16)).prop_map(|(at, bytes)| Mutation::Overwrite { at, bytes }),
    ]
}

fn apply(hello: &[u8], m: &Mutation) -> Option<Vec<u8>> {
    let mut out = hello.to_vec();
    match m {
        Mutation::FlipBit { at, bit } => out[at % hello.len()] ^= 1 << bit,
        Mutation::Truncate { len } => out.truncate(len % hello.len()),
        Mutation::Extend { tail } => out.extend_from_slice(tail),
        Mutation::Overwrite { at, bytes } => {
            let at = at % hello.len();
            for (i, b) in bytes.iter().enumerate() {
                if let Some(slot) = out.get_mut(at + i) {
                    *slot = *b;
                }
            }
        }
    }
    (out != hello).then_some(out)
}

/// Arbitrary bytes that get past the header checks, so they reach the OAEP decryption
/// and the member proof.
fn well_framed(port: PortKind, rsa: Vec<u8>, proof: Vec<u8>) -> Vec<u8> {
    let mut hello = b"XL\x01\x01".to_vec();
    hello.extend_from_slice(&(rsa.len() as u16).to_be_bytes());
    let proof = if port == PortKind::Cluster { proof } else { Vec::new() };
    hello.extend_from_slice(&(proof.len() as u16).to_be_bytes());
    hello.extend_from_slice(&rsa);
    hello.extend_from_slice(&proof);
    hello
}

/// `cases` unless PROPTEST_CASES says otherwise; no failure files in the source tree
/// (a failing case is printed, shrunk, in the test output).
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn arbitrary_bytes_are_refused(port in port_strategy(), bytes in vec(any::<u8>(), 0..1200)) {
        prop_assert!(accept(fixture(), port, &bytes).is_err());
    }

    #[test]
    fn arbitrary_well_framed_hellos_are_refused(
        port in port_strategy(),
        rsa in vec(any::<u8>(), 256),
        proof in vec(any::<u8>(), MIN_PROOF_LEN..=MAX_PROOF_LEN),
    ) {
        let hello = well_framed(port, rsa, proof);
        let err = accept(fixture(), port, &hello).unwrap_err();
        prop_assert_eq!(err, "undecryptable");
    }

    #[test]
    fn mutated_hellos_are_refused(port in port_strategy(), m in mutation()) {
        let f = fixture();
        let good = match port { PortKind::Client => &f.client_hello, PortKind::Cluster => &f.cluster_hello };
        if let Some(bad) = apply(good, &m) {
            let result = accept(f, port, &bad);
            prop_assert!(result.is_err(), "{:?} was accepted", m);
        }
    }

    #[test]
    fn a_hello_for_one_port_is_refused_on_the_other(m in proptest::option::of(mutation())) {
        let f = fixture();
        for (port, hello) in [(PortKind::Cluster, &f.client_hello), (PortKind::Client, &f.cluster_hello)] {
            let hello = m.as_ref().and_then(|m| apply(hello, m)).unwrap_or_else(|| hello.clone());
            prop_assert!(accept(f, port, &hello).is_err());
        }
    }
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn hello_header_decoding_is_total_and_exact(
        header in prop_oneof![
            any::<[u8; HELLO_HEADER_LEN]>(),
            (any::<u16>(), 0u16..700).prop_map(|(rsa, proof)| {
                let [r0, r1] = (rsa % 600).to_be_bytes();
                let [p0, p1] = proof.to_be_bytes();
                [b'X', b'L', 1, 1, r0, r1, p0, p1]
            }),
        ],
        port in port_strategy(),
        ck in prop_oneof![Just(256usize), Just(384), Just(512)],
    ) {
        let rsa = u16::from_be_bytes([header[4], header[5]]) as usize;
        let proof = u16::from_be_bytes([header[6], header[7]]) as usize;
        let valid = &header[..4] == b"XL\x01\x01"
            && rsa == ck
            && match port {
                PortKind::Client => proof == 0,
                PortKind::Cluster => (MIN_PROOF_LEN..=MAX_PROOF_LEN).contains(&proof),
            };
        let result = parse_hello_header(&header, port, ck);
        prop_assert_eq!(result.is_ok(), valid, "{:?}", result);
        if let Ok(lens) = result {
            prop_assert_eq!((lens.rsa_len, lens.proof_len), (rsa, proof));
        }
    }

    #[test]
    fn record_lengths_are_bounded(header in any::<[u8; 2]>()) {
        let len = u16::from_be_bytes(header) as usize;
        match RecordOpener::ciphertext_len(header) {
            Ok(n) => prop_assert!(n == len && (MIN_CIPHERTEXT..=MAX_CIPHERTEXT).contains(&n)),
            Err(RecordError::TooLarge(n)) => prop_assert!(n == len && n > MAX_CIPHERTEXT),
            Err(RecordError::TooShort(n)) => prop_assert!(n == len && n < MIN_CIPHERTEXT),
            Err(e) => prop_assert!(false, "unexpected {e}"),
        }
    }

    #[test]
    fn arbitrary_records_never_open(
        key in any::<[u8; 32]>(),
        header in any::<[u8; 2]>(),
        body in vec(any::<u8>(), 0..600),
    ) {
        let mut opener = RecordOpener::new(&key);
        let mut body = body;
        prop_assert!(opener.open(header, &mut body).is_err());
    }

    #[test]
    fn arbitrary_framed_records_never_open(key in any::<[u8; 32]>(), body in vec(any::<u8>(), MIN_CIPHERTEXT..600)) {
        let header = (body.len() as u16).to_be_bytes();
        let mut body = body;
        prop_assert_eq!(RecordOpener::new(&key).open(header, &mut body).unwrap_err(), RecordError::Forged);
    }

    #[test]
    fn mutated_records_never_open(payload in vec(any::<u8>(), 0..300), at in any::<usize>(), bit in 0u8..8) {
        let key = [5u8; 32];
        let mut wire = Vec::new();
        RecordSealer::new(&key).seal(ContentType::Data, &payload, &mut wire).unwrap();
        let at = at % wire.len();
        wire[at] ^= 1 << bit;
        let header = [wire[0], wire[1]];
        let mut body = wire[2..].to_vec();
        prop_assert!(RecordOpener::new(&key).open(header, &mut body).is_err());
    }
}

// === SecureStream ===

fn keys() -> SessionKeys {
    SessionKeys {
        client_to_server: Zeroizing::new([0x11; 32]),
        server_to_client: Zeroizing::new([0x22; 32]),
        transcript_hash: [0; 32],
        version: xlattice_protocol::Version::Hybrid,
    }
}

/// A record stream as a client would send it: `sizes` payloads cut from `data`, then a close.
fn record_stream(data: &[u8], sizes: &[usize], close: bool) -> Vec<u8> {
    let mut sealer = RecordSealer::new(&keys().client_to_server);
    let mut wire = Vec::new();
    let mut at = 0;
    let mut sizes = sizes.iter().cycle();
    while at < data.len() {
        let n = (*sizes.next().unwrap()).clamp(1, MAX_PAYLOAD).min(data.len() - at);
        sealer.seal(ContentType::Data, &data[at..at + n], &mut wire).unwrap();
        at += n;
    }
    if close {
        sealer.seal(ContentType::Close, &[], &mut wire).unwrap();
    }
    wire
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Feeds `wire` into a server-side SecureStream in `chunks`-sized writes through a duplex
/// pipe of `pipe` bytes, reading `read_sizes` bytes at a time, either with `read` or, when
/// `copy_free`, through the proxy path (`poll_plaintext`, `consume_plaintext`); returns
/// what was read and how reading ended.
fn read_through(
    wire: Vec<u8>,
    chunks: Vec<usize>,
    pipe: usize,
    read_sizes: Vec<usize>,
    copy_free: bool,
) -> (Vec<u8>, std::io::Result<()>) {
    runtime().block_on(async move {
        let (mut raw, io) = tokio::io::duplex(pipe);
        let writer = tokio::spawn(async move {
            let mut at = 0;
            let mut chunks = chunks.iter().cycle();
            while at < wire.len() {
                let n = (*chunks.next().unwrap()).max(1).min(wire.len() - at);
                if raw.write_all(&wire[at..at + n]).await.is_err() {
                    return;
                }
                at += n;
                tokio::task::yield_now().await;
            }
            raw.shutdown().await.ok();
        });
        let mut session = SecureStream::new(io, &keys(), Role::Server, None);
        let mut got = Vec::new();
        let mut sizes = read_sizes.iter().cycle();
        let end = loop {
            let size = (*sizes.next().unwrap()).max(1);
            if copy_free {
                if let Err(e) = std::future::poll_fn(|cx| session.poll_plaintext(cx)).await {
                    break Err(e);
                }
                let before = got.len();
                for payload in session.plaintext() {
                    let room = size - (got.len() - before);
                    got.extend_from_slice(&payload[..payload.len().min(room)]);
                }
                let n = got.len() - before;
                if n == 0 {
                    break Ok(());
                }
                session.consume_plaintext(n);
                continue;
            }
            let mut buf = vec![0u8; size];
            match session.read(&mut buf).await {
                Ok(0) => break Ok(()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => break Err(e),
            }
        };
        drop(session);
        writer.await.unwrap();
        (got, end)
    })
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn any_chunking_of_a_record_stream_reads_back_the_data(
        data in vec(any::<u8>(), 0..40_000),
        record_sizes in vec(1usize..20_000, 1..8),
        chunks in vec(1usize..5_000, 1..8),
        pipe in 1usize..8192,
        read_sizes in vec(1usize..20_000, 1..8),
        copy_free in any::<bool>(),
    ) {
        let wire = record_stream(&data, &record_sizes, true);
        let (got, end) = read_through(wire, chunks, pipe, read_sizes, copy_free);
        prop_assert!(end.is_ok(), "{:?}", end);
        prop_assert_eq!(got, data);
    }

    #[test]
    fn a_cut_record_stream_is_an_error_and_delivers_only_a_prefix(
        data in vec(any::<u8>(), 1..20_000),
        record_sizes in vec(1usize..8_000, 1..6),
        cut in any::<usize>(),
        chunks in vec(1usize..3_000, 1..6),
        read_sizes in vec(1usize..10_000, 1..6),
        copy_free in any::<bool>(),
    ) {
        let wire = record_stream(&data, &record_sizes, true);
        let cut = cut % wire.len();
        let (got, end) = read_through(wire[..cut].to_vec(), chunks, 4096, read_sizes, copy_free);
        prop_assert_eq!(end.unwrap_err().kind(), std::io::ErrorKind::UnexpectedEof);
        prop_assert!(data.starts_with(&got));
    }

    #[test]
    fn a_stream_without_a_close_record_is_truncated(data in vec(any::<u8>(), 0..5_000), copy_free in any::<bool>()) {
        let wire = record_stream(&data, &[1000], false);
        let (got, end) = read_through(wire, vec![777], 2048, vec![4096], copy_free);
        prop_assert_eq!(end.unwrap_err().kind(), std::io::ErrorKind::UnexpectedEof);
        prop_assert_eq!(got, data);
    }

    #[test]
    fn any_write_and_read_sizes_round_trip_between_two_streams(
        data in vec(any::<u8>(), 0..60_000),
        writes in vec(1usize..30_000, 1..8),
        pipe in 1usize..8192,
        read_sizes in vec(1usize..30_000, 1..8),
    ) {
        let got = runtime().block_on(async move {
            let (a, b) = tokio::io::duplex(pipe);
            let sent = data.clone();
            let writer = tokio::spawn(async move {
                let mut client = SecureStream::new(a, &keys(), Role::Client, None);
                let mut at = 0;
                let mut writes = writes.iter().cycle();
                while at < sent.len() {
                    let n = (*writes.next().unwrap()).min(sent.len() - at);
                    client.write_all(&sent[at..at + n]).await.unwrap();
                    at += n;
                }
                client.shutdown().await.unwrap();
            });
            let mut server = SecureStream::new(b, &keys(), Role::Server, None);
            let mut got = Vec::new();
            let mut sizes = read_sizes.iter().cycle();
            loop {
                let mut buf = vec![0u8; *sizes.next().unwrap()];
                let n = server.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            writer.await.unwrap();
            (got, data)
        });
        prop_assert_eq!(got.0, got.1);
    }
}

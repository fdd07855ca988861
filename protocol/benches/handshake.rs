//! Benchmark 1 of the protocol issue: full handshakes per second on ONE core, the XLattice
//! handshake against a rustls TLS 1.3 handshake with an RSA-2048 certificate, measured in
//! the same run; plus the record-layer AEAD, aws-lc-rs AES-256-GCM against the RustCrypto
//! `aes-gcm` crate, at 16 KiB records.
//!
//!     cargo bench -p xlattice-protocol --bench handshake                 # ~1 min
//!     cargo bench -p xlattice-protocol --bench handshake -- --secs 1 --rounds 1   # quick look
//!
//! Everything runs on a tokio current_thread runtime (one thread, so one core): client and
//! server of each handshake are two tasks joined over an in-memory `tokio::io::duplex` pipe.
//! The "in-process" rows run the same handshakes on byte buffers with no I/O at all.
//! Each benchmark runs `--rounds` times, interleaved with the others (so background load
//! hits all of them alike), for `--secs` seconds each; the median round is reported.
//!
//! Both sides of every handshake are counted: a "handshake" is client + server work.
//! - XLattice, client port: OAEP encrypt + OAEP decrypt (RSA-2048) + 2 X25519 + AES-GCM.
//! - XLattice, cluster port: the above + a member PSS signature (RSA-2048) and its check.
//! - rustls: TLS 1.3, full handshake (no resumption, no tickets), RSA-2048 self-signed
//!   certificate verified by webpki against itself as the trust anchor, RSA-PSS
//!   CertificateVerify, X25519 (and, as a second row, rustls's X25519MLKEM768 hybrid).

use std::{
    hint::black_box,
    sync::Arc,
    time::{Duration, Instant},
};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use rustls::{
    client::Resumption,
    crypto::{aws_lc_rs as provider, CryptoProvider, SupportedKxGroup},
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName},
    ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection,
};
use xlattice_protocol::{
    accept, connect,
    handshake::{client_hello, server_accept, ClientSecrets, ServerSecrets},
    record::{ContentType, RecordOpener, RecordSealer},
    DirectoryIndex, Identity, MemberDirectory, MemberRecord, NodeIdBits, PortKind, ReplayGuard, RsaBits, ServerContext,
};

const SERVER_NAME: &str = "member.xlattice.test";
const RECORD: usize = 16 * 1024;

/// A named benchmark: runs once, returns its rate.
type StaticRow<'a> = (&'static str, Box<dyn FnMut() -> f64 + 'a>);
/// A named primitive operation.
type Op<'a> = (&'static str, Box<dyn FnMut() + 'a>);

struct Options {
    secs: f64,
    rounds: usize,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<f64>().ok())
    };
    Options {
        secs: value("--secs").unwrap_or(3.0),
        rounds: value("--rounds").map(|r| r as usize).unwrap_or(3).max(1),
    }
}

// === fixtures ===

struct Ours {
    server: Identity,
    member: Identity,
    directory: DirectoryIndex,
}

fn ours() -> Ours {
    let server = Identity::generate(NodeIdBits::B256, RsaBits::B2048).unwrap();
    let member = Identity::generate(NodeIdBits::B256, RsaBits::B2048).unwrap();
    let directory = MemberDirectory {
        cluster: "bench/c".into(),
        members: vec![
            MemberRecord::for_identity("server", &server),
            MemberRecord::for_identity("member", &member),
        ],
    }
    .index()
    .unwrap();
    Ours {
        server,
        member,
        directory,
    }
}

struct Tls {
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
}

fn self_signed() -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    // An RSA-2048 key from aws-lc-rs (through rcgen), a self-signed certificate for it.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (
        cert.der().clone(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

/// TLS 1.3 only, full handshakes only; `mutual`: the client also presents an RSA-2048
/// certificate that the server verifies (the counterpart of the cluster port's member proof).
fn tls(kx_groups: Vec<&'static dyn SupportedKxGroup>, mutual: bool) -> Tls {
    let (cert_der, key_der) = self_signed();
    let provider = Arc::new(CryptoProvider {
        kx_groups,
        ..provider::default_provider()
    });

    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap();
    let (server, client_identity) = if mutual {
        let (client_cert, client_key) = self_signed();
        let mut client_roots = RootCertStore::empty();
        client_roots.add(client_cert.clone()).unwrap();
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(client_roots), provider.clone())
                .build()
                .unwrap();
        (
            server.with_client_cert_verifier(verifier),
            Some((client_cert, client_key)),
        )
    } else {
        (server.with_no_client_auth(), None)
    };
    let mut server = server.with_single_cert(vec![cert_der.clone()], key_der).unwrap();
    server.send_tls13_tickets = 0;
    let mut roots = RootCertStore::empty();
    roots.add(cert_der).unwrap();
    let client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let mut client = match client_identity {
        Some((cert, key)) => client.with_client_auth_cert(vec![cert], key).unwrap(),
        None => client.with_no_client_auth(),
    };
    client.resumption = Resumption::disabled();
    Tls {
        client: Arc::new(client),
        server: Arc::new(server),
    }
}

// === one handshake each ===

async fn ours_duplex(o: &Ours, ctx: &ServerContext<'_>, member: Option<&Identity>) {
    let (c, s) = tokio::io::duplex(16 * 1024);
    let (client, server) = tokio::join!(connect(c, o.server.ck_public(), ctx.port, member), accept(s, ctx));
    black_box((client.unwrap(), server.unwrap()));
}

fn ours_in_process(o: &Ours, ctx: &ServerContext<'_>, member: Option<&Identity>) {
    let (hello, pending) = client_hello(o.server.ck_public(), ctx.port, member, ClientSecrets::random()).unwrap();
    let accepted = server_accept(ctx, &hello, now(), ServerSecrets::random()).unwrap();
    black_box(pending.finish(&accepted.reply).unwrap());
}

async fn tls_duplex(t: &Tls) -> &'static str {
    let (c, s) = tokio::io::duplex(16 * 1024);
    let connector = tokio_rustls::TlsConnector::from(t.client.clone());
    let acceptor = tokio_rustls::TlsAcceptor::from(t.server.clone());
    let name = ServerName::try_from(SERVER_NAME).unwrap();
    let (client, server) = tokio::join!(connector.connect(name, c), acceptor.accept(s));
    let (client, server) = (client.unwrap(), server.unwrap());
    let group = client
        .get_ref()
        .1
        .negotiated_key_exchange_group()
        .map(|g| g.name().as_str().unwrap_or("?"));
    black_box(server);
    group.unwrap_or("?")
}

fn tls_in_process(t: &Tls) {
    let mut client = ClientConnection::new(t.client.clone(), ServerName::try_from(SERVER_NAME).unwrap()).unwrap();
    let mut server = ServerConnection::new(t.server.clone()).unwrap();
    let mut buf = Vec::with_capacity(8192);
    while client.is_handshaking() || server.is_handshaking() {
        buf.clear();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            let mut rd = &buf[..];
            while !rd.is_empty() {
                server.read_tls(&mut rd).unwrap();
            }
            server.process_new_packets().unwrap();
        }
        buf.clear();
        while server.wants_write() {
            server.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            let mut rd = &buf[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).unwrap();
            }
            client.process_new_packets().unwrap();
        }
    }
    black_box((client, server));
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// === the timing loop ===

/// Runs `op` (a batch of `batch` operations) for `secs`; returns operations per second.
fn rate(secs: f64, batch: usize, mut op: impl FnMut()) -> f64 {
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_secs_f64((secs / 6.0).min(0.5)) {
        op();
    }
    let start = Instant::now();
    let mut n = 0usize;
    while start.elapsed() < Duration::from_secs_f64(secs) {
        op();
        n += batch;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

// === AEAD ===

fn aws_lc_seal_open(buf: &mut Vec<u8>, key: &LessSafeKey, seq: &mut u64) {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&seq.to_be_bytes());
    *seq += 1;
    let n = || Nonce::assume_unique_for_key(nonce);
    key.seal_in_place_append_tag(n(), Aad::from([0x40, 0x11]), buf).unwrap();
    let len = key.open_in_place(n(), Aad::from([0x40, 0x11]), buf).unwrap().len();
    buf.truncate(len);
}

fn rustcrypto_seal_open(buf: &mut [u8], cipher: &aes_gcm::Aes256Gcm, seq: &mut u64) {
    use aes_gcm::aead::AeadInPlace;
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&seq.to_be_bytes());
    *seq += 1;
    let nonce = aes_gcm::Nonce::from_slice(&nonce);
    let tag = cipher.encrypt_in_place_detached(nonce, &[0x40, 0x11], buf).unwrap();
    cipher
        .decrypt_in_place_detached(nonce, &[0x40, 0x11], buf, &tag)
        .unwrap();
}

fn main() {
    let opts = options();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    println!(
        "one core (tokio current_thread), {} s x {} rounds per row, median round; CPU: {cpu}",
        opts.secs, opts.rounds
    );
    println!();

    let o = ours();
    let x25519 = tls(vec![provider::kx_group::X25519], false);
    let hybrid = tls(
        vec![provider::kx_group::X25519MLKEM768, provider::kx_group::X25519],
        false,
    );
    let mutual = tls(vec![provider::kx_group::X25519], true);
    let group_x = rt.block_on(tls_duplex(&x25519));
    let group_h = rt.block_on(tls_duplex(&hybrid));

    type Row<'a> = (String, Box<dyn FnMut() -> f64 + 'a>);
    let secs = opts.secs;
    let ctx_for = |port: PortKind, replay: &ReplayGuard| -> f64 {
        let ctx = ServerContext {
            port,
            identity: &o.server,
            directory: &o.directory,
            replay,
            post_quantum: xlattice_protocol::PostQuantum::Preferred,
        };
        let member = (port == PortKind::Cluster).then_some(&o.member);
        rt.block_on(async { rate_async(secs, || ours_duplex(&o, &ctx, member)).await })
    };
    let mut rows: Vec<Row> = vec![
        (
            "XLattice v1, client port (duplex)".into(),
            Box::new(|| ctx_for(PortKind::Client, &ReplayGuard::default())),
        ),
        (
            "XLattice v1, cluster port + member proof (duplex)".into(),
            Box::new(|| ctx_for(PortKind::Cluster, &ReplayGuard::default())),
        ),
        (
            format!("rustls TLS 1.3, RSA-2048 cert, {group_x} (duplex)"),
            Box::new(|| {
                rt.block_on(rate_async(secs, || async {
                    tls_duplex(&x25519).await;
                }))
            }),
        ),
        (
            format!("rustls TLS 1.3, RSA-2048 cert, {group_h} (duplex)"),
            Box::new(|| {
                rt.block_on(rate_async(secs, || async {
                    tls_duplex(&hybrid).await;
                }))
            }),
        ),
        (
            format!("rustls TLS 1.3 + client cert (mTLS), {group_x} (duplex)"),
            Box::new(|| {
                rt.block_on(rate_async(secs, || async {
                    tls_duplex(&mutual).await;
                }))
            }),
        ),
        (
            "XLattice v1, client port (in-process)".into(),
            Box::new(|| {
                let replay = ReplayGuard::default();
                let ctx = ServerContext {
                    port: PortKind::Client,
                    identity: &o.server,
                    directory: &o.directory,
                    replay: &replay,
                    post_quantum: xlattice_protocol::PostQuantum::Preferred,
                };
                rate(secs, 1, || ours_in_process(&o, &ctx, None))
            }),
        ),
        (
            "XLattice v1, cluster port (in-process)".into(),
            Box::new(|| {
                let replay = ReplayGuard::default();
                let ctx = ServerContext {
                    port: PortKind::Cluster,
                    identity: &o.server,
                    directory: &o.directory,
                    replay: &replay,
                    post_quantum: xlattice_protocol::PostQuantum::Preferred,
                };
                rate(secs, 1, || ours_in_process(&o, &ctx, Some(&o.member)))
            }),
        ),
        (
            format!("rustls TLS 1.3, RSA-2048 cert, {group_x} (in-process)"),
            Box::new(|| rate(secs, 1, || tls_in_process(&x25519))),
        ),
    ];
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); rows.len()];
    for round in 0..opts.rounds {
        for (i, (name, run)) in rows.iter_mut().enumerate() {
            let r = run();
            eprintln!("round {}: {name}: {r:.0}/s", round + 1);
            results[i].push(r);
        }
    }
    let hs: Vec<f64> = results.into_iter().map(median).collect();
    let names: Vec<&String> = rows.iter().map(|(n, _)| n).collect();
    println!(
        "{:<58} {:>12} {:>10}",
        "full handshakes, client + server, one core", "per second", "µs each"
    );
    for (name, r) in names.iter().zip(&hs) {
        println!("{name:<58} {r:>12.0} {:>10.0}", 1e6 / r);
    }
    println!();
    println!(
        "ratio ours/rustls, duplex, X25519:       client port / TLS {:.2}x, cluster port / TLS {:.2}x",
        hs[0] / hs[2],
        hs[1] / hs[2]
    );
    println!(
        "ratio ours/rustls, duplex, like for like: cluster port (member proof) / mTLS {:.2}x",
        hs[1] / hs[4]
    );
    println!(
        "ratio ours/rustls, duplex, hybrid PQ:    client port / TLS {:.2}x",
        hs[0] / hs[3]
    );
    println!(
        "ratio ours/rustls, in-process, X25519:   client port / TLS {:.2}x, cluster port / TLS {:.2}x",
        hs[5] / hs[7],
        hs[6] / hs[7]
    );
    println!();
    primitives(&o, secs / 3.0);
    println!();

    // === AEAD at 16 KiB records ===
    let key_bytes = [0x42u8; 32];
    let aws = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key_bytes).unwrap());
    let rc = <aes_gcm::Aes256Gcm as aes_gcm::KeyInit>::new_from_slice(&key_bytes).unwrap();
    let mut aead_rows: Vec<StaticRow> = vec![
        (
            "aws-lc-rs AES-256-GCM (seal + open in place)",
            Box::new(move || {
                let mut buf = Vec::with_capacity(RECORD + 16);
                buf.resize(RECORD, 0x5au8);
                let mut seq = 0;
                rate(secs, 16, || {
                    (0..16).for_each(|_| aws_lc_seal_open(&mut buf, &aws, &mut seq))
                }) * RECORD as f64
                    / 1e6
            }),
        ),
        (
            "aes-gcm 0.10 AES-256-GCM (seal + open in place)",
            Box::new(move || {
                let mut buf = vec![0x5au8; RECORD];
                let mut seq = 0;
                rate(secs, 16, || {
                    (0..16).for_each(|_| rustcrypto_seal_open(&mut buf, &rc, &mut seq))
                }) * RECORD as f64
                    / 1e6
            }),
        ),
        (
            "xlattice record layer (RecordSealer + RecordOpener)",
            Box::new(move || {
                let payload = vec![0x5au8; RECORD];
                let mut sealer = RecordSealer::new(&key_bytes);
                let mut opener = RecordOpener::new(&key_bytes);
                let mut wire = Vec::with_capacity(RECORD + 64);
                rate(secs, 16, || {
                    for _ in 0..16 {
                        wire.clear();
                        sealer.seal(ContentType::Data, &payload, &mut wire).unwrap();
                        let header = [wire[0], wire[1]];
                        black_box(opener.open(header, &mut wire[2..]).unwrap());
                    }
                }) * RECORD as f64
                    / 1e6
            }),
        ),
    ];
    let mut aead: Vec<Vec<f64>> = vec![Vec::new(); aead_rows.len()];
    for round in 0..opts.rounds {
        for (i, (name, run)) in aead_rows.iter_mut().enumerate() {
            let r = run();
            eprintln!("round {}: {name}: {r:.0} MB/s", round + 1);
            aead[i].push(r);
        }
    }
    let aead: Vec<f64> = aead.into_iter().map(median).collect();
    println!("{:<58} {:>12}", "AEAD, 16 KiB records, seal + open, one core", "MB/s");
    for ((name, _), r) in aead_rows.iter().zip(&aead) {
        println!("{name:<58} {r:>12.0}");
    }
    println!();
    println!("ratio aws-lc-rs/aes-gcm: {:.2}x", aead[0] / aead[1]);
}

/// What one handshake is made of: the RSA and X25519 operations, one core.
fn primitives(o: &Ours, secs: f64) {
    use aws_lc_rs::agreement::{agree_ephemeral, EphemeralPrivateKey, UnparsedPublicKey, X25519};
    let ck = o.server.ck_public();
    let plain = [7u8; 106];
    let ct = ck.encrypt_oaep(&plain, b"xlattice/1 hello");
    let sig = o.member.sk.sign_pss(b"message");
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let peer = EphemeralPrivateKey::generate(&X25519, &rng)
        .unwrap()
        .compute_public_key()
        .unwrap();
    let ops: Vec<Op> = vec![
        (
            "RSA-2048 OAEP-SHA256 decrypt (server, private)",
            Box::new(|| {
                black_box(o.server.ck.decrypt_oaep(&ct, b"xlattice/1 hello").unwrap());
            }),
        ),
        (
            "RSA-2048 PSS-SHA256 sign (cluster client, private)",
            Box::new(|| {
                black_box(o.member.sk.sign_pss(b"message"));
            }),
        ),
        (
            "RSA-2048 OAEP-SHA256 encrypt (client, public)",
            Box::new(|| {
                black_box(ck.encrypt_oaep(&plain, b"xlattice/1 hello"));
            }),
        ),
        (
            "RSA-2048 PSS-SHA256 verify (cluster server, public)",
            Box::new(|| {
                assert!(o.member.sk_public().verify_pss(b"message", &sig));
            }),
        ),
        (
            "X25519 key generation + agreement",
            Box::new(|| {
                let k = EphemeralPrivateKey::generate(&X25519, &rng).unwrap();
                black_box(
                    agree_ephemeral(k, UnparsedPublicKey::new(&X25519, peer.as_ref()), (), |s| Ok(s[0])).unwrap(),
                );
            }),
        ),
    ];
    println!(
        "{:<58} {:>12} {:>10}",
        "primitives (aws-lc-rs), one core", "per second", "µs each"
    );
    for (name, mut op) in ops {
        let r = rate(secs, 1, &mut op);
        println!("{name:<58} {r:>12.0} {:>10.1}", 1e6 / r);
    }
    println!();
}

async fn rate_async<F, Fut>(secs: f64, mut op: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_secs_f64((secs / 6.0).min(0.5)) {
        op().await;
    }
    let start = Instant::now();
    let mut n = 0usize;
    while start.elapsed() < Duration::from_secs_f64(secs) {
        op().await;
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

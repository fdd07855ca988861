//! Benchmark 1 of the protocol issue: full handshakes per second on ONE core, each XLattice
//! handshake version against rustls TLS 1.3 with the matching key exchange, measured in the
//! same run; plus the record-layer AEAD, aws-lc-rs AES-256-GCM against the RustCrypto
//! `aes-gcm` crate, at 16 KiB records.
//!
//!     cargo bench -p xlattice-protocol --bench handshake                          # ~4 min
//!     cargo bench -p xlattice-protocol --bench handshake -- --secs 1 --rounds 5   # ~2 min
//!     cargo bench -p xlattice-protocol --bench handshake -- --secs 1 --rounds 1   # quick look
//!
//! Like for like, all with RSA-2048 keys and the aws-lc-rs provider:
//! - XLattice version 1 (classical, `Offer::Classical`) against rustls with X25519 only;
//! - XLattice version 2 (hybrid, `Offer::Hybrid`) against rustls with X25519MLKEM768 only
//!   (each rustls configuration offers one group; the group both sides negotiated is checked
//!   once before timing, and the bench panics if it is not the one named);
//! - the client port against plain TLS (server authenticated); the cluster port, whose hello
//!   carries a member proof, against mTLS (both sides authenticated).
//!
//! Both sides of every handshake are counted: a "handshake" is client + server work.
//! - XLattice v1, client port: RSA-OAEP encrypt + decrypt (RSA-2048), 2 X25519 key pairs and
//!   agreements, the AES-GCM-sealed reply, HKDF.
//! - XLattice v1, cluster port: the above + the member's PSS signature (RSA-2048) and its
//!   check against the member directory.
//! - XLattice v2: the same as v1 on the same port + ML-KEM-768 (FIPS 203): key generation
//!   (client), encapsulation (server), decapsulation (client); 1184 more bytes in the hello
//!   and 1088 more in the reply.
//! - rustls: TLS 1.3, full handshake (no resumption, no tickets), RSA-2048 self-signed
//!   certificate verified by webpki against itself as the trust anchor, RSA-PSS
//!   CertificateVerify; mTLS adds the client's RSA-2048 certificate, its CertificateVerify
//!   signature and the server's verification of both. X25519MLKEM768 is X25519 + ML-KEM-768
//!   in one key share (no separate X25519 share is offered).
//!
//! Our servers answer both versions, as deployed (`PostQuantum::Preferred`: a version 1
//! reply then carries the downgrade sentinel); each rustls configuration, client and server,
//! has only its row's group.
//!
//! Two paths for each handshake:
//! - "duplex": on a tokio current_thread runtime (one thread, so one core), client and server
//!   are two tasks joined over an in-memory `tokio::io::duplex` pipe: ours with
//!   `connect_offering(.., offer)` and `accept`, rustls with tokio-rustls.
//! - "in-process": the same handshakes on byte buffers with no I/O: ours with
//!   `client_hello_offering` → `server_accept` → `ClientPending::finish`, rustls with a
//!   `ClientConnection` and a `ServerConnection` pumped through a `Vec`.
//!
//! One more in-process row times only the ML-KEM-768 work of a version 2 handshake (keygen,
//! encapsulation key to bytes and back, encapsulate, decapsulate): what version 2 adds to
//! version 1, to set against the measured difference.
//!
//! Each row runs `--secs` seconds, `--rounds` times, the rows interleaved within each round
//! (so background load hits all of them alike); the median round is reported, with the
//! min–max of the rounds. The ratios at the end are ratios of those medians, with the
//! min–max of the per-round ratios (the two rows measured in the same round). Then the
//! primitive operations (one measurement each, `--secs`/3) and the AEAD rows.

use std::{
    hint::black_box,
    sync::Arc,
    time::{Duration, Instant},
};

use aws_lc_rs::{
    aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM},
    kem::{Ciphertext, DecapsulationKey, EncapsulationKey, ML_KEM_768},
};
use rustls::{
    client::Resumption,
    crypto::{aws_lc_rs as provider, CryptoProvider, SupportedKxGroup},
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName},
    ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection,
};
use tokio::io::DuplexStream;
use xlattice_protocol::{
    accept, connect_offering,
    handshake::{client_hello_offering, server_accept, Accepted, ClientSecrets, ServerSecrets, SessionKeys},
    record::{ContentType, RecordOpener, RecordSealer},
    DirectoryIndex, Identity, MemberDirectory, MemberRecord, NodeIdBits, Offer, PortKind, PostQuantum, ReplayGuard,
    RsaBits, SecureStream, ServerContext, Version,
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
    // `cargo bench` passes --bench; `cargo test --all-targets` passes nothing: then one
    // short round, which still runs every check (versions, negotiated groups) but no figure.
    let quick = !args.iter().any(|a| a == "--bench");
    let (secs, rounds) = if quick { (0.05, 1.0) } else { (3.0, 3.0) };
    Options {
        secs: value("--secs").unwrap_or(secs),
        rounds: value("--rounds").unwrap_or(rounds).max(1.0) as usize,
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

/// A server context answering both versions, as a cluster with `postQuantum: Preferred`.
fn server_context<'a>(o: &'a Ours, port: PortKind, replay: &'a ReplayGuard) -> ServerContext<'a> {
    ServerContext {
        port,
        identity: &o.server,
        directory: &o.directory,
        replay,
        post_quantum: PostQuantum::Preferred,
    }
}

fn offer(version: Version) -> Offer {
    match version {
        Version::Classical => Offer::Classical,
        Version::Hybrid => Offer::Hybrid,
    }
}

struct Tls {
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
    group: &'static dyn SupportedKxGroup,
    mutual: bool,
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

/// TLS 1.3 only, full handshakes only, `group` the only key exchange either side offers;
/// `mutual`: the client also presents an RSA-2048 certificate that the server verifies (the
/// counterpart of the cluster port's member proof).
fn tls(group: &'static dyn SupportedKxGroup, mutual: bool) -> Tls {
    let (cert_der, key_der) = self_signed();
    let provider = Arc::new(CryptoProvider {
        kx_groups: vec![group],
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
        group,
        mutual,
    }
}

// === one handshake each ===

async fn ours_duplex(
    o: &Ours,
    ctx: &ServerContext<'_>,
    member: Option<&Identity>,
    offer: Offer,
) -> (SecureStream<DuplexStream>, SecureStream<DuplexStream>) {
    let (c, s) = tokio::io::duplex(16 * 1024);
    let (client, server) = tokio::join!(
        connect_offering(c, o.server.ck_public(), ctx.port, member, offer),
        accept(s, ctx)
    );
    (client.unwrap(), server.unwrap())
}

fn ours_in_process(
    o: &Ours,
    ctx: &ServerContext<'_>,
    member: Option<&Identity>,
    offer: Offer,
) -> (SessionKeys, Accepted) {
    let (hello, pending) =
        client_hello_offering(o.server.ck_public(), ctx.port, member, ClientSecrets::random(), offer).unwrap();
    let accepted = server_accept(ctx, &hello, now(), ServerSecrets::random()).unwrap();
    (pending.finish(&accepted.reply).unwrap(), accepted)
}

type TlsPair = (ClientConnection, ServerConnection);

async fn tls_duplex(t: &Tls) -> TlsPair {
    let (c, s) = tokio::io::duplex(16 * 1024);
    let connector = tokio_rustls::TlsConnector::from(t.client.clone());
    let acceptor = tokio_rustls::TlsAcceptor::from(t.server.clone());
    let name = ServerName::try_from(SERVER_NAME).unwrap();
    let (client, server) = tokio::join!(connector.connect(name, c), acceptor.accept(s));
    (client.unwrap().into_inner().1, server.unwrap().into_inner().1)
}

fn tls_in_process(t: &Tls) -> TlsPair {
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
    (client, server)
}

/// The ML-KEM-768 work a version 2 handshake adds, as `handshake.rs` does it: the client's
/// key pair and its encapsulation key as bytes, the server's parse of them and encapsulation,
/// the client's decapsulation.
fn ml_kem_once() -> (aws_lc_rs::kem::SharedSecret, aws_lc_rs::kem::SharedSecret) {
    let dk = DecapsulationKey::generate(&ML_KEM_768).unwrap();
    let ek_bytes = dk.encapsulation_key().unwrap().key_bytes().unwrap();
    let ek = EncapsulationKey::new(&ML_KEM_768, ek_bytes.as_ref()).unwrap();
    let (ciphertext, server_shared) = ek.encapsulate().unwrap();
    let client_shared = dk.decapsulate(Ciphertext::from(ciphertext.as_ref())).unwrap();
    (server_shared, client_shared)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// === checks, once, before timing ===

/// Both paths give the version asked for (and, on the cluster port, the proven member).
fn check_ours(rt: &tokio::runtime::Runtime, o: &Ours, version: Version, port: PortKind) {
    let replay = ReplayGuard::default();
    let ctx = server_context(o, port, &replay);
    let member = (port == PortKind::Cluster).then_some(&o.member);
    let (client, server) = rt.block_on(ours_duplex(o, &ctx, member, offer(version)));
    assert_eq!((client.version(), server.version()), (version, version));
    assert_eq!(server.peer(), member.map(|m| m.node_id));
    let (keys, accepted) = ours_in_process(o, &ctx, member, offer(version));
    assert_eq!((keys.version, accepted.keys.version), (version, version));
    assert_eq!(keys.transcript_hash, accepted.keys.transcript_hash);
    assert_eq!(accepted.peer, member.map(|m| m.node_id));
}

/// Both paths negotiate `t.group` on both sides (and, with mTLS, the server saw a client
/// certificate); panics otherwise.
fn check_tls(rt: &tokio::runtime::Runtime, t: &Tls) {
    let want = t.group.name();
    for (path, (client, server)) in [
        ("duplex", rt.block_on(tls_duplex(t))),
        ("in-process", tls_in_process(t)),
    ] {
        let got = (
            client.negotiated_key_exchange_group().map(|g| g.name()),
            server.negotiated_key_exchange_group().map(|g| g.name()),
        );
        if got != (Some(want), Some(want)) {
            panic!("rustls baseline ({path}) negotiated {got:?}, not {want:?}: the comparison would be unfair");
        }
        assert_eq!(client.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
        assert_eq!(
            server.peer_certificates().is_some(),
            t.mutual,
            "mTLS: client certificate"
        );
    }
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

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn min_max(v: impl IntoIterator<Item = f64>) -> (f64, f64) {
    v.into_iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| (lo.min(x), hi.max(x)))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

// === the handshake rows ===

#[derive(Clone, Copy, PartialEq, Eq)]
enum Who {
    Ours,
    Rustls,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    Duplex,
    InProcess,
}

/// What a handshake row measures. For rustls, `version` names the matching key exchange
/// (Classical: X25519, Hybrid: X25519MLKEM768) and `port` the authentication (Client: plain
/// TLS, Cluster: mTLS).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key {
    who: Who,
    version: Version,
    port: PortKind,
    path: Path,
}

struct Row<'a> {
    name: String,
    /// `None`: the ML-KEM-only row.
    key: Option<Key>,
    run: Box<dyn FnMut() -> f64 + 'a>,
}

fn row_name(k: Key) -> String {
    let version = match k.version {
        Version::Classical => "v1 classical",
        Version::Hybrid => "v2 hybrid",
    };
    let group = match k.version {
        Version::Classical => "X25519",
        Version::Hybrid => "X25519MLKEM768",
    };
    match (k.who, k.port) {
        (Who::Ours, PortKind::Client) => format!("XLattice {version}, client port"),
        (Who::Ours, PortKind::Cluster) => format!("XLattice {version}, cluster port + member proof"),
        (Who::Rustls, PortKind::Client) => format!("rustls TLS 1.3, RSA-2048 cert, {group}"),
        (Who::Rustls, PortKind::Cluster) => format!("rustls TLS 1.3 mTLS, RSA-2048 certs, {group}"),
    }
}

fn main() {
    let opts = options();
    let secs = opts.secs;
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
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "one core (tokio current_thread), {} s x {} rounds per row, rows interleaved, median round; \
         CPU: {cpu} ({cores} cores on the machine); load average (1/5/15 min) at start: {}",
        opts.secs,
        opts.rounds,
        load_average()
    );
    println!();

    let o = ours();
    let tls_configs = [
        tls(provider::kx_group::X25519, false),
        tls(provider::kx_group::X25519, true),
        tls(provider::kx_group::X25519MLKEM768, false),
        tls(provider::kx_group::X25519MLKEM768, true),
    ];
    let tls_for = |version: Version, port: PortKind| -> &Tls {
        &tls_configs[match (version, port) {
            (Version::Classical, PortKind::Client) => 0,
            (Version::Classical, PortKind::Cluster) => 1,
            (Version::Hybrid, PortKind::Client) => 2,
            (Version::Hybrid, PortKind::Cluster) => 3,
        }]
    };
    const VERSIONS: [Version; 2] = [Version::Classical, Version::Hybrid];
    const PORTS: [PortKind; 2] = [PortKind::Client, PortKind::Cluster];
    for version in VERSIONS {
        for port in PORTS {
            check_ours(&rt, &o, version, port);
            check_tls(&rt, tls_for(version, port));
        }
    }
    let (a, b) = ml_kem_once();
    assert_eq!(a.as_ref(), b.as_ref(), "ML-KEM shared secrets differ");

    // Round order: duplex v1 (ours client, ours cluster, TLS, mTLS), duplex v2, then the
    // same in-process, then the ML-KEM-only row.
    let (o, rt) = (&o, &rt);
    let mut rows: Vec<Row> = Vec::new();
    for path in [Path::Duplex, Path::InProcess] {
        for version in VERSIONS {
            for who in [Who::Ours, Who::Rustls] {
                for port in PORTS {
                    let key = Key {
                        who,
                        version,
                        port,
                        path,
                    };
                    let run: Box<dyn FnMut() -> f64> = match who {
                        Who::Ours => Box::new(move || {
                            let replay = ReplayGuard::default();
                            let ctx = &server_context(o, port, &replay);
                            let member = (port == PortKind::Cluster).then_some(&o.member);
                            let offer = offer(version);
                            match path {
                                Path::Duplex => rt.block_on(rate_async(secs, || async move {
                                    black_box(ours_duplex(o, ctx, member, offer).await);
                                })),
                                Path::InProcess => rate(secs, 1, || {
                                    black_box(ours_in_process(o, ctx, member, offer));
                                }),
                            }
                        }),
                        Who::Rustls => {
                            let t = tls_for(version, port);
                            Box::new(move || match path {
                                Path::Duplex => rt.block_on(rate_async(secs, || async move {
                                    black_box(tls_duplex(t).await);
                                })),
                                Path::InProcess => rate(secs, 1, || {
                                    black_box(tls_in_process(t));
                                }),
                            })
                        }
                    };
                    rows.push(Row {
                        name: row_name(key),
                        key: Some(key),
                        run,
                    });
                }
            }
        }
    }
    rows.push(Row {
        name: "ML-KEM-768 only: keygen + encapsulate + decapsulate".into(),
        key: None,
        run: Box::new(move || {
            rate(secs, 1, || {
                black_box(ml_kem_once());
            })
        }),
    });

    let mut results: Vec<Vec<f64>> = vec![Vec::new(); rows.len()];
    for round in 0..opts.rounds {
        for (i, row) in rows.iter_mut().enumerate() {
            let r = (row.run)();
            eprintln!("round {}: {}: {r:.0}/s", round + 1, row.name);
            results[i].push(r);
        }
    }
    let load_after = load_average();

    let find = |key: Key| rows.iter().position(|r| r.key == Some(key)).unwrap();
    let med: Vec<f64> = results.iter().map(|r| median(r)).collect();
    println!(
        "{:<56} {:>10} {:>9} {:>18}",
        "full handshakes, client + server, one core", "per second", "µs each", "rounds min–max/s"
    );
    let mut path_shown = None;
    for (i, row) in rows.iter().enumerate() {
        let path = row.key.map(|k| k.path);
        if path != path_shown {
            match path {
                Some(Path::Duplex) => println!("over an in-memory duplex pipe (one runtime thread):"),
                Some(Path::InProcess) => println!("in-process (byte buffers, no I/O):"),
                None => println!("in-process, the ML-KEM work of one version 2 handshake alone:"),
            }
            path_shown = path;
        }
        let (lo, hi) = min_max(results[i].iter().copied());
        println!(
            "  {:<54} {:>10.0} {:>9.0} {:>18}",
            row.name,
            med[i],
            1e6 / med[i],
            format!("{lo:.0}–{hi:.0}")
        );
    }
    println!("load average (1/5/15 min) after the handshake rounds: {load_after}");
    println!();

    // (ratio of the medians, min and max of the per-round ratios)
    let ratio = |a: usize, b: usize| {
        let (lo, hi) = min_max(results[a].iter().zip(&results[b]).map(|(x, y)| x / y));
        (med[a] / med[b], lo, hi)
    };
    let line = |label: &str, cell: &dyn Fn(Path) -> String| {
        println!("  {label:<46} {:>30} {:>30}", cell(Path::Duplex), cell(Path::InProcess));
    };
    println!("ratios of the median rates; in brackets the min–max of the per-round ratios");
    println!(
        "{:<48} {:>30} {:>30}",
        "ours / rustls, like for like (> 1: ours faster)", "duplex", "in-process"
    );
    for version in VERSIONS {
        for port in PORTS {
            let label = match (version, port) {
                (Version::Classical, PortKind::Client) => "v1 client port / TLS, X25519",
                (Version::Classical, PortKind::Cluster) => "v1 cluster port / mTLS, X25519",
                (Version::Hybrid, PortKind::Client) => "v2 client port / TLS, X25519MLKEM768",
                (Version::Hybrid, PortKind::Cluster) => "v2 cluster port / mTLS, X25519MLKEM768",
            };
            line(label, &|path| {
                let k = |who| Key {
                    who,
                    version,
                    port,
                    path,
                };
                let (r, lo, hi) = ratio(find(k(Who::Ours)), find(k(Who::Rustls)));
                format!("{r:.2}x ({lo:.2}–{hi:.2})")
            });
        }
    }
    println!(
        "{:<48} {:>30} {:>30}",
        "cost of v2: v2 rate / v1 rate, µs added", "duplex", "in-process"
    );
    for who in [Who::Ours, Who::Rustls] {
        for port in PORTS {
            let label = match (who, port) {
                (Who::Ours, PortKind::Client) => "ours, client port: v2 / v1",
                (Who::Ours, PortKind::Cluster) => "ours, cluster port: v2 / v1",
                (Who::Rustls, PortKind::Client) => "rustls TLS: X25519MLKEM768 / X25519",
                (Who::Rustls, PortKind::Cluster) => "rustls mTLS: X25519MLKEM768 / X25519",
            };
            line(label, &|path| {
                let k = |version| Key {
                    who,
                    version,
                    port,
                    path,
                };
                let (v1, v2) = (find(k(Version::Classical)), find(k(Version::Hybrid)));
                let (r, lo, hi) = ratio(v2, v1);
                format!("{r:.2}x ({lo:.2}–{hi:.2}) {:+.0} µs", 1e6 / med[v2] - 1e6 / med[v1])
            });
        }
    }
    let kem = rows.iter().position(|r| r.key.is_none()).unwrap();
    let (lo, hi) = min_max(results[kem].iter().map(|r| 1e6 / r));
    println!(
        "  {:<46} {:>30} {:>30}",
        "ML-KEM-768 work alone (rounds min–max)",
        "",
        format!("{:.0} µs ({lo:.0}–{hi:.0})", 1e6 / med[kem])
    );
    println!();
    primitives(o, secs / 3.0);

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
    let aead: Vec<f64> = aead.iter().map(|r| median(r)).collect();
    println!("{:<58} {:>12}", "AEAD, 16 KiB records, seal + open, one core", "MB/s");
    for ((name, _), r) in aead_rows.iter().zip(&aead) {
        println!("{name:<58} {r:>12.0}");
    }
    println!();
    println!("ratio aws-lc-rs/aes-gcm: {:.2}x", aead[0] / aead[1]);
    println!("load average (1/5/15 min) at the end: {}", load_average());
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

/// What one handshake is made of: the RSA, X25519 and ML-KEM-768 operations, one core.
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
    let dk = DecapsulationKey::generate(&ML_KEM_768).unwrap();
    let ek_bytes = dk.encapsulation_key().unwrap().key_bytes().unwrap();
    let ek = EncapsulationKey::new(&ML_KEM_768, ek_bytes.as_ref()).unwrap();
    let (kem_ct, _) = ek.encapsulate().unwrap();
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
        (
            "ML-KEM-768 keygen + encapsulation key bytes (v2 client)",
            Box::new(|| {
                let dk = DecapsulationKey::generate(&ML_KEM_768).unwrap();
                black_box(dk.encapsulation_key().unwrap().key_bytes().unwrap());
            }),
        ),
        (
            "ML-KEM-768 key parse + encapsulate (v2 server)",
            Box::new(|| {
                let ek = EncapsulationKey::new(&ML_KEM_768, ek_bytes.as_ref()).unwrap();
                black_box(ek.encapsulate().unwrap());
            }),
        ),
        (
            "ML-KEM-768 decapsulate (v2 client)",
            Box::new(|| {
                black_box(dk.decapsulate(Ciphertext::from(kem_ct.as_ref())).unwrap());
            }),
        ),
    ];
    println!(
        "{:<58} {:>12} {:>10}",
        "primitives (aws-lc-rs), one core, one measurement each", "per second", "µs each"
    );
    for (name, mut op) in ops {
        let r = rate(secs, 1, &mut op);
        println!("{name:<58} {r:>12.0} {:>10.1}", 1e6 / r);
    }
    println!();
}

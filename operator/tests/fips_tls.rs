//! The webhook's TLS on the FIPS module: `server_config` is FIPS exactly in the fips build,
//! and a handshake with it (loopback, no API server) negotiates only approved algorithms.

use std::sync::Arc;

use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use xlattice_operator::webhook::{certs::TlsMaterial, server};

#[tokio::test]
async fn webhook_tls_is_fips_in_the_fips_build() {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let tls = TlsMaterial {
        ca_pem: cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    };
    let server_config = server::server_config(&tls).unwrap();
    assert_eq!(server_config.fips(), cfg!(feature = "fips"));

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(cert.pem().as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    assert_eq!(client_config.fips(), cfg!(feature = "fips"));

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let served = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        acceptor.accept(tcp).await.map(drop)
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client_config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    served.await.unwrap().unwrap();
    let conn = tls.get_ref().1;
    let group = format!("{:?}", conn.negotiated_key_exchange_group().unwrap().name());
    let suite = format!("{:?}", conn.negotiated_cipher_suite().unwrap().suite());
    eprintln!("negotiated {suite} with {group}");
    if cfg!(feature = "fips") {
        assert_ne!(group, "X25519", "X25519 alone is not FIPS-approved");
        assert!(!suite.contains("CHACHA20"), "{suite}");
    }
}

//! The webhook's certificate lifecycle against the real API server and over real TLS:
//! renewal when due, a renewed serving certificate trusted through the unchanged caBundle,
//! and a new CA that keeps the previous one trusted until every replica has switched.

mod support;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use support::*;
use tokio::net::TcpStream;
use xlattice_operator::webhook::{
    certs::{self, Lifetimes, TlsMaterial, TLS_SECRET},
    inject::Injection,
    server,
};

/// Completes a TLS handshake trusting only `bundle`; the certificate the server presented.
async fn presented(addr: SocketAddr, bundle: &str) -> Result<Vec<u8>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
        roots.add(ca.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    Ok(tls.get_ref().1.peer_certificates().unwrap()[0].to_vec())
}

fn der(tls: &TlsMaterial) -> Vec<u8> {
    CertificateDer::from_pem_slice(tls.cert_pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn the_webhook_certificate_is_renewed_and_served_without_a_gap_in_trust() {
    let Some(path) = kubeconfig_path() else { return };
    let admin = admin_client(&path).await;
    let ns = format!("xl-tls-{}", suffix());
    create_namespace(&admin, &ns).await;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    let sans = vec!["127.0.0.1".to_string()];
    // Short lives, so that renewals fall due within the test: the serving certificate
    // after 2.7 s, the CA after 5.3 s; each check runs while what it checks is still valid.
    let life = Lifetimes {
        serving: Duration::from_secs(4),
        ca: Duration::from_secs(8),
    };
    let ensure = || certs::ensure_secret(admin.clone(), &ns, &sans, life);

    // --- minted once; a second look changes nothing
    let minted = tokio::time::Instant::now();
    let first = ensure().await.unwrap();
    let version = secrets.get(TLS_SECRET).await.unwrap().resource_version();
    assert_eq!(ensure().await.unwrap(), first);
    assert_eq!(
        secrets.get(TLS_SECRET).await.unwrap().resource_version(),
        version,
        "no write"
    );

    let (publish, tls) = tokio::sync::watch::channel(first.clone());
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = Injection {
        image: "xlattice-sidecar:test".into(),
        pull_policy: None,
        resources: Default::default(),
        require_fips: false,
    };
    tokio::spawn(server::serve(
        addr,
        tls,
        admin.clone(),
        config,
        xlattice_operator::scope::Scope::All,
        Default::default(),
    ));
    let served = wait_for("the webhook serves", Duration::from_secs(10), || async {
        presented(addr, &first.ca_pem).await.ok()
    })
    .await;
    assert_eq!(served, der(&first));

    // --- past two thirds of the serving certificate's life: a new one, same CA
    tokio::time::sleep_until(minted + Duration::from_millis(2900)).await;
    let second = ensure().await.unwrap();
    assert_ne!(second.cert_pem, first.cert_pem);
    assert_eq!(second.ca_pem, first.ca_pem, "the caBundle does not change");
    assert_eq!(ensure().await.unwrap(), second, "another replica adopts it");
    publish.send_replace(second.clone());
    let served = wait_for("the renewed certificate is served", Duration::from_secs(5), || async {
        presented(addr, &first.ca_pem).await.ok().filter(|c| *c == der(&second))
    })
    .await;
    assert_eq!(served, der(&second));

    // --- past two thirds of the CA's life: a new CA, the previous one still in the bundle
    tokio::time::sleep_until(minted + Duration::from_millis(5600)).await;
    let third = ensure().await.unwrap();
    assert_ne!(third.ca_pem, first.ca_pem);
    assert!(third.ca_pem.ends_with(&first.ca_pem), "previous CA kept in the bundle");
    // A replica still presenting the old CA's certificate is trusted through the new bundle...
    assert_eq!(presented(addr, &third.ca_pem).await, Ok(der(&second)));
    publish.send_replace(third.clone());
    let served = wait_for("the new CA's certificate is served", Duration::from_secs(5), || async {
        presented(addr, &third.ca_pem).await.ok().filter(|c| *c == der(&third))
    })
    .await;
    assert_eq!(served, der(&third));
    // ...and the bundle matters: the old CA alone does not vouch for the new certificate.
    let refused = presented(addr, &first.ca_pem).await.unwrap_err();
    assert!(refused.contains("certificate"), "{refused}");
}

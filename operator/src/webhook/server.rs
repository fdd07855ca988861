//! HTTPS endpoint the API server calls: POST /mutate-pods with an AdmissionReview.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use axum::{extract::State, routing::post, Json, Router};
use axum_server::tls_rustls::RustlsConfig;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    api::ListParams,
    core::{
        admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation},
        DynamicObject,
    },
    Api, Client,
};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{
    certs::{self, TlsMaterial},
    inject::{decide, random_suffix, unreadable_claim, Decision, Injection},
};
use crate::{
    crd,
    error::{Error, Result},
    metrics::{Metrics, ADMITTED, DENIED, ERROR, INJECTED},
    scope::Scope,
};

pub const PATH: &str = "/mutate-pods";

#[derive(Clone)]
struct WebhookState {
    client: Client,
    config: Arc<Injection>,
    /// Pods of namespaces the operator does not serve are admitted as they are: it could
    /// neither read their clusters nor mint their identities.
    scope: Arc<Scope>,
    metrics: Arc<Metrics>,
}

pub fn server_config(tls: &TlsMaterial) -> Result<rustls::ServerConfig> {
    let bad = |e: &dyn std::fmt::Display| Error::Tls(e.to_string());
    let certs = CertificateDer::pem_slice_iter(tls.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes()).map_err(|e| bad(&e))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad(&e))
}

/// Serves the webhook over TLS until the process ends, switching to each certificate
/// `tls` publishes without dropping a connection.
pub async fn serve(
    addr: SocketAddr,
    mut tls: watch::Receiver<TlsMaterial>,
    client: Client,
    config: Injection,
    scope: Scope,
    metrics: Arc<Metrics>,
) -> Result<()> {
    // The expiry of the certificate presented, so it is set exactly when one is served.
    let presented = {
        let metrics = metrics.clone();
        move |material: &TlsMaterial| {
            if let Some(not_after) = certs::not_after(&material.cert_pem) {
                metrics.webhook_certificate_expiry.set(not_after);
            }
        }
    };
    let with_alpn = |material: &TlsMaterial| -> Result<Arc<rustls::ServerConfig>> {
        let mut server_config = server_config(material)?;
        server_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(server_config))
    };
    let rustls = RustlsConfig::from_config(with_alpn(&tls.borrow_and_update())?);
    presented(&tls.borrow());
    tokio::spawn({
        let rustls = rustls.clone();
        async move {
            while tls.changed().await.is_ok() {
                let material = tls.borrow_and_update().clone();
                match with_alpn(&material) {
                    Ok(config) => {
                        rustls.reload_from_config(config);
                        presented(&material);
                        info!("webhook now serves its renewed certificate");
                    }
                    Err(error) => warn!(%error, "renewed webhook certificate unusable; keeping the previous one"),
                }
            }
        }
    });
    let app = Router::new().route(PATH, post(mutate)).with_state(WebhookState {
        client,
        config: Arc::new(config),
        scope: Arc::new(scope),
        metrics: metrics.clone(),
    });
    info!(%addr, path = PATH, "serving the sidecar injection webhook");
    axum_server::bind_rustls(addr, rustls)
        .serve(app.into_make_service())
        .await
        .map_err(|e| Error::Tls(e.to_string()))
}

async fn mutate(
    State(state): State<WebhookState>,
    Json(review): Json<AdmissionReview<Pod>>,
) -> Json<AdmissionReview<DynamicObject>> {
    let started = Instant::now();
    let request: AdmissionRequest<Pod> = match review.try_into() {
        Ok(request) => request,
        Err(error) => {
            warn!(%error, "malformed AdmissionReview");
            state.metrics.webhook(ERROR, started.elapsed());
            return Json(AdmissionResponse::invalid(error.to_string()).into_review());
        }
    };
    let (response, result) = admit(&state, &request).await;
    state.metrics.webhook(result, started.elapsed());
    Json(response.into_review())
}

async fn admit(state: &WebhookState, request: &AdmissionRequest<Pod>) -> (AdmissionResponse, &'static str) {
    let response = AdmissionResponse::from(request);
    let (Operation::Create, Some(pod)) = (&request.operation, &request.object) else {
        return (response, ADMITTED);
    };
    let Some(namespace) = request.namespace.as_deref().filter(|ns| state.scope.serves(ns)) else {
        return (response, ADMITTED);
    };
    let api: Api<DynamicObject> = Api::namespaced_with(state.client.clone(), namespace, &crd::api_resource());
    // Refusing is safer than admitting a member pod without its sidecar, which would then
    // run without an identity until someone restarts it.
    let objects = match api.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(error) => {
            return (
                response.deny(format!("xlattice webhook cannot list XLatticeClusters: {error}")),
                ERROR,
            )
        }
    };
    // Untyped, then one by one: a cluster the types cannot hold refuses only its own pods.
    let (mut clusters, mut unreadable) = (Vec::new(), Vec::new());
    for object in objects {
        match crd::decode(&object) {
            Ok(cluster) => clusters.push(cluster),
            Err(why) => unreadable.push((object, why)),
        }
    }
    if let Some(reason) = unreadable_claim(pod, &unreadable) {
        info!(namespace, pod = ?pod.metadata.name, %reason, "refused pod");
        return (response.deny(reason), DENIED);
    }
    match decide(pod, &clusters, &state.config, random_suffix) {
        Decision::Skip => (response, ADMITTED),
        Decision::Deny(reason) => {
            info!(namespace, pod = ?pod.metadata.name, %reason, "refused pod");
            (response.deny(reason), DENIED)
        }
        Decision::Inject { cluster, patch } => {
            let patch: json_patch::Patch = match serde_json::from_value(serde_json::Value::Array(patch)) {
                Ok(p) => p,
                Err(error) => {
                    return (
                        response.deny(format!("xlattice webhook built a bad patch: {error}")),
                        ERROR,
                    )
                }
            };
            info!(namespace, %cluster, pod = ?pod.metadata.name.as_ref().or(pod.metadata.generate_name.as_ref()), "injecting the sidecar");
            match response.clone().with_patch(patch) {
                Ok(r) => (r, INJECTED),
                Err(error) => (response.deny(format!("xlattice webhook: {error}")), ERROR),
            }
        }
    }
}

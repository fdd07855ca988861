//! The webhook's own CA and serving certificate: generated once, kept in a Secret so
//! restarts and replicas share them, and the CA written into the webhook configuration.
//! No cert-manager needed.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{admissionregistration::v1::MutatingWebhookConfiguration, core::v1::Secret},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
    ByteString,
};
use kube::{
    api::{Patch, PatchParams, PostParams},
    Api, Client, ResourceExt,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use serde_json::json;
use tracing::info;

use crate::{
    error::{Error, Result},
    names::{MANAGED_BY, MANAGED_BY_LABEL},
};

pub const TLS_SECRET: &str = "xlattice-webhook-tls";
pub const WEBHOOK_CONFIGURATION: &str = "xlattice-sidecar-injector";
const SANS_ANNOTATION: &str = "xlattice.io/sans";
const CA_KEY: &str = "ca.crt";
const CERT_KEY: &str = "tls.crt";
const KEY_KEY: &str = "tls.key";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsMaterial {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A fresh CA and a serving certificate for `sans` (DNS names and IP addresses) signed by
/// it. The CA key is dropped: a new SAN set means a new CA, which the caBundle follows.
pub fn generate(sans: &[String]) -> Result<TlsMaterial> {
    let tls = |e: rcgen::Error| Error::Tls(e.to_string());
    let ca_key = KeyPair::generate().map_err(tls)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name.push(DnType::CommonName, "xlattice-webhook-ca");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).map_err(tls)?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate().map_err(tls)?;
    let mut leaf = CertificateParams::new(sans.to_vec()).map_err(tls)?;
    leaf.distinguished_name
        .push(DnType::CommonName, sans.first().cloned().unwrap_or_default());
    leaf.use_authority_key_identifier_extension = true;
    let cert = leaf.signed_by(&key, &issuer).map_err(tls)?;
    Ok(TlsMaterial {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn sans_text(sans: &[String]) -> String {
    let mut sorted = sans.to_vec();
    sorted.sort();
    sorted.join(",")
}

fn to_secret(namespace: &str, sans: &[String], tls: &TlsMaterial) -> Secret {
    let data = [
        (CA_KEY, &tls.ca_pem),
        (CERT_KEY, &tls.cert_pem),
        (KEY_KEY, &tls.key_pem),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
    .collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(TLS_SECRET.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string())])),
            annotations: Some(BTreeMap::from([(SANS_ANNOTATION.to_string(), sans_text(sans))])),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data),
        ..Default::default()
    }
}

fn from_secret(secret: &Secret) -> Option<TlsMaterial> {
    let data = secret.data.as_ref()?;
    let get = |k: &str| data.get(k).and_then(|b| String::from_utf8(b.0.clone()).ok());
    Some(TlsMaterial {
        ca_pem: get(CA_KEY)?,
        cert_pem: get(CERT_KEY)?,
        key_pem: get(KEY_KEY)?,
    })
}

/// The stored material when it covers `sans`, else new material written over it. Creation
/// is create-only: when two replicas race, the loser adopts the winner's.
pub async fn ensure_secret(client: Client, namespace: &str, sans: &[String]) -> Result<TlsMaterial> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let existing = api.get_opt(TLS_SECRET).await?;
    if let Some(secret) = &existing {
        if secret.annotations().get(SANS_ANNOTATION).map(String::as_str) == Some(sans_text(sans).as_str()) {
            if let Some(tls) = from_secret(secret) {
                return Ok(tls);
            }
        }
    }
    let tls = generate(sans)?;
    let mut secret = to_secret(namespace, sans, &tls);
    let written = match existing {
        Some(old) => {
            secret.metadata.resource_version = old.resource_version();
            api.replace(TLS_SECRET, &PostParams::default(), &secret).await
        }
        None => api.create(&PostParams::default(), &secret).await,
    };
    match written {
        Ok(_) => {
            info!(secret = TLS_SECRET, namespace, sans = %sans_text(sans), "generated webhook CA and certificate");
            Ok(tls)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let theirs = api.get(TLS_SECRET).await?;
            from_secret(&theirs).ok_or_else(|| Error::Tls(format!("{TLS_SECRET} lacks {CA_KEY}/{CERT_KEY}/{KEY_KEY}")))
        }
        Err(e) => Err(e.into()),
    }
}

/// JSON patch setting `ca` on every webhook of the configuration that lacks it; None when
/// all carry it already (no write).
pub fn ca_bundle_patch(config: &MutatingWebhookConfiguration, ca_pem: &str) -> Option<json_patch::Patch> {
    let ops: Vec<serde_json::Value> = config
        .webhooks
        .iter()
        .flatten()
        .enumerate()
        .filter(|(_, w)| w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()) != Some(ca_pem.as_bytes()))
        .map(|(i, _)| json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": ByteString(ca_pem.as_bytes().to_vec())}))
        .collect();
    (!ops.is_empty()).then(|| serde_json::from_value(serde_json::Value::Array(ops)).expect("valid patch"))
}

/// Writes the CA into the webhook configuration. Returns false when it does not exist (yet).
pub async fn patch_ca_bundle(client: Client, ca_pem: &str) -> Result<bool> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    let Some(config) = api.get_opt(WEBHOOK_CONFIGURATION).await? else {
        return Ok(false);
    };
    if let Some(patch) = ca_bundle_patch(&config, ca_pem) {
        api.patch(
            WEBHOOK_CONFIGURATION,
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await?;
        info!(configuration = WEBHOOK_CONFIGURATION, "wrote caBundle");
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, WebhookClientConfig};

    #[test]
    fn material_round_trips_and_ca_bundle_is_patched_once() {
        let sans = vec![
            "xlattice-operator.xlattice-system.svc".to_string(),
            "127.0.0.1".to_string(),
        ];
        let tls = generate(&sans).unwrap();
        assert!(tls.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let secret = to_secret("ns", &sans, &tls);
        assert_eq!(from_secret(&secret), Some(tls.clone()));

        let hook = |ca: Option<&str>| MutatingWebhook {
            name: "inject.xlattice.io".into(),
            client_config: WebhookClientConfig {
                ca_bundle: ca.map(|c| ByteString(c.as_bytes().to_vec())),
                ..Default::default()
            },
            ..Default::default()
        };
        let mut config = MutatingWebhookConfiguration {
            webhooks: Some(vec![hook(None)]),
            ..Default::default()
        };
        let patch = ca_bundle_patch(&config, &tls.ca_pem).expect("needs a patch");
        let mut doc = serde_json::to_value(&config).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
        config = serde_json::from_value(doc).unwrap();
        assert!(ca_bundle_patch(&config, &tls.ca_pem).is_none());
    }
}

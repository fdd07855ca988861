//! The webhook's own CA and serving certificate, kept in a Secret so restarts and
//! replicas share them, with the CA written into the webhook configuration. No
//! cert-manager needed.
//!
//! Both have a finite life and are renewed after two thirds of it by whichever replica
//! notices first (`ensure_secret`, called at start and then periodically). A new serving
//! certificate is signed by the stored CA, so the caBundle stays the same; a new CA keeps
//! the previous one in the bundle, so certificates of either are trusted while replicas
//! and the API server catch up.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{
    api::{admissionregistration::v1::MutatingWebhookConfiguration, core::v1::Secret},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
    jiff::{SignedDuration, Timestamp},
    ByteString,
};
use kube::{
    api::{Patch, PatchParams, PostParams},
    Api, Client, ResourceExt,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use serde_json::json;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::{
    error::{Error, Result},
    names::{MANAGED_BY, MANAGED_BY_LABEL},
};

pub const TLS_SECRET: &str = "xlattice-webhook-tls";
pub const WEBHOOK_CONFIGURATION: &str = "xlattice-sidecar-injector";
const SANS_ANNOTATION: &str = "xlattice.io/sans";
/// When the serving certificate is due for renewal (RFC 3339).
const RENEW_AFTER_ANNOTATION: &str = "xlattice.io/renew-after";
/// When the CA is due for renewal (RFC 3339).
const CA_RENEW_AFTER_ANNOTATION: &str = "xlattice.io/ca-renew-after";
/// The caBundle: the current CA first, then the previous one, if any.
const CA_KEY: &str = "ca.crt";
/// The current CA's private key: it signs renewed serving certificates.
const CA_KEY_KEY: &str = "ca.key";
/// The serving certificate; `kubectl xlattice check` reads its expiry here.
pub const CERT_KEY: &str = "tls.crt";
const KEY_KEY: &str = "tls.key";
const CA_NAME: &str = "xlattice-webhook-ca";
/// Allowance for clocks that lag ours.
const BACKDATE: Duration = Duration::from_secs(300);

/// How long certificates are valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetimes {
    pub serving: Duration,
    pub ca: Duration,
}

impl Lifetimes {
    /// A serving certificate of `days`, under a CA that lives ten times as long.
    pub fn days(days: u32) -> Self {
        let serving = Duration::from_secs(u64::from(days) * 86_400);
        Self {
            serving,
            ca: serving * 10,
        }
    }

    /// How often to look for a due renewal: often enough to renew well before expiry.
    pub fn check_interval(&self) -> Duration {
        (self.serving / 100).min(Duration::from_secs(600))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsMaterial {
    /// The caBundle: every CA whose certificates the webhook may present.
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// What `ensure_secret` has to do with what is stored.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    Keep,
    NewServingCert,
    NewCa,
}

fn tls_err(e: rcgen::Error) -> Error {
    Error::Tls(e.to_string())
}

fn to_offset(t: Timestamp) -> Result<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp(t.as_second()).map_err(|e| Error::Tls(e.to_string()))
}

/// The parameters the CA is issued with; rebuilt from the same values to sign renewals.
fn ca_params() -> Result<CertificateParams> {
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name.push(DnType::CommonName, CA_NAME);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(ca)
}

/// A new CA valid from `now` for `life`: (certificate PEM, key PEM).
fn new_ca(now: Timestamp, life: Duration) -> Result<(String, String)> {
    let key = KeyPair::generate().map_err(tls_err)?;
    let mut params = ca_params()?;
    params.not_before = to_offset(now - BACKDATE)?;
    params.not_after = to_offset(now + life)?;
    let cert = params.self_signed(&key).map_err(tls_err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A serving certificate for `sans` (DNS names and IP addresses), signed by the CA whose
/// key is `ca_key_pem`: (certificate PEM, key PEM).
fn new_serving_cert(sans: &[String], ca_key_pem: &str, now: Timestamp, life: Duration) -> Result<(String, String)> {
    let issuer = Issuer::new(ca_params()?, KeyPair::from_pem(ca_key_pem).map_err(tls_err)?);
    let key = KeyPair::generate().map_err(tls_err)?;
    let mut leaf = CertificateParams::new(sans.to_vec()).map_err(tls_err)?;
    leaf.distinguished_name
        .push(DnType::CommonName, sans.first().cloned().unwrap_or_default());
    leaf.use_authority_key_identifier_extension = true;
    leaf.not_before = to_offset(now - BACKDATE)?;
    leaf.not_after = to_offset(now + life)?;
    let cert = leaf.signed_by(&key, &issuer).map_err(tls_err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn renew_after(now: Timestamp, life: Duration) -> Timestamp {
    now + SignedDuration::try_from(life * 2 / 3).unwrap_or(SignedDuration::MAX)
}

/// The first certificate of a PEM bundle.
fn first_certificate(bundle: &str) -> Option<String> {
    const END: &str = "-----END CERTIFICATE-----";
    let end = bundle.find(END)? + END.len();
    Some(format!("{}\n", bundle[..end].trim_start()))
}

fn sans_text(sans: &[String]) -> String {
    let mut sorted = sans.to_vec();
    sorted.sort();
    sorted.join(",")
}

fn data_text(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

fn annotation_time(secret: &Secret, key: &str) -> Option<Timestamp> {
    secret.annotations().get(key)?.parse().ok()
}

fn from_secret(secret: &Secret) -> Option<TlsMaterial> {
    Some(TlsMaterial {
        ca_pem: data_text(secret, CA_KEY)?,
        cert_pem: data_text(secret, CERT_KEY)?,
        key_pem: data_text(secret, KEY_KEY)?,
    })
}

/// Pure: what the stored Secret needs at `now` to serve `sans`. A Secret written before
/// certificates were renewed (no CA key, no due dates) gets a new CA.
fn plan(stored: Option<&Secret>, sans: &[String], now: Timestamp) -> Plan {
    let Some(secret) = stored else {
        return Plan::NewCa;
    };
    let ca_due = annotation_time(secret, CA_RENEW_AFTER_ANNOTATION).is_none_or(|t| t <= now);
    if from_secret(secret).is_none() || data_text(secret, CA_KEY_KEY).is_none() || ca_due {
        return Plan::NewCa;
    }
    let sans_changed = secret.annotations().get(SANS_ANNOTATION) != Some(&sans_text(sans));
    let serving_due = annotation_time(secret, RENEW_AFTER_ANNOTATION).is_none_or(|t| t <= now);
    if sans_changed || serving_due {
        Plan::NewServingCert
    } else {
        Plan::Keep
    }
}

/// Pure: the Secret after carrying out `plan` on `stored` (which it requires unless the
/// plan is a new CA).
fn renewed(
    stored: Option<&Secret>,
    plan: &Plan,
    namespace: &str,
    sans: &[String],
    lifetimes: Lifetimes,
    now: Timestamp,
) -> Result<Secret> {
    let (bundle, ca_key, ca_renew_after) = match (plan, stored) {
        (Plan::NewServingCert, Some(old)) => (
            data_text(old, CA_KEY).unwrap_or_default(),
            data_text(old, CA_KEY_KEY).unwrap_or_default(),
            annotation_time(old, CA_RENEW_AFTER_ANNOTATION).unwrap_or(now),
        ),
        _ => {
            let (ca_cert, ca_key) = new_ca(now, lifetimes.ca)?;
            // The previous CA stays trusted: replicas may still present its certificates.
            let previous = stored
                .and_then(|s| data_text(s, CA_KEY))
                .and_then(|b| first_certificate(&b));
            let bundle = ca_cert + &previous.unwrap_or_default();
            (bundle, ca_key, renew_after(now, lifetimes.ca))
        }
    };
    let (cert, key) = new_serving_cert(sans, &ca_key, now, lifetimes.serving)?;
    let data = [(CA_KEY, bundle), (CA_KEY_KEY, ca_key), (CERT_KEY, cert), (KEY_KEY, key)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
        .collect();
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(TLS_SECRET.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string())])),
            annotations: Some(BTreeMap::from([
                (SANS_ANNOTATION.to_string(), sans_text(sans)),
                (
                    RENEW_AFTER_ANNOTATION.to_string(),
                    renew_after(now, lifetimes.serving).to_string(),
                ),
                (CA_RENEW_AFTER_ANNOTATION.to_string(), ca_renew_after.to_string()),
            ])),
            resource_version: stored.and_then(|s| s.resource_version()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data),
        ..Default::default()
    })
}

/// The stored material when it covers `sans` and nothing is due, else renewed material
/// written over it. Writes carry the resourceVersion read (or are create-only): when
/// two replicas race, the loser adopts the winner's.
pub async fn ensure_secret(
    client: Client,
    namespace: &str,
    sans: &[String],
    lifetimes: Lifetimes,
) -> Result<TlsMaterial> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let stored = api.get_opt(TLS_SECRET).await?;
    let now = Timestamp::now();
    let plan = plan(stored.as_ref(), sans, now);
    if let (Plan::Keep, Some(tls)) = (&plan, stored.as_ref().and_then(from_secret)) {
        return Ok(tls);
    }
    let secret = renewed(stored.as_ref(), &plan, namespace, sans, lifetimes, now)?;
    let written = match stored {
        Some(_) => api.replace(TLS_SECRET, &PostParams::default(), &secret).await,
        None => api.create(&PostParams::default(), &secret).await,
    };
    match written {
        Ok(_) => {
            info!(secret = TLS_SECRET, namespace, sans = %sans_text(sans), ?plan, "renewed the webhook certificate");
            from_secret(&secret).ok_or_else(|| Error::Tls("renewed Secret lacks its keys".into()))
        }
        Err(e) if crate::error::is_conflict(&e) => {
            let theirs = api.get(TLS_SECRET).await?;
            from_secret(&theirs).ok_or_else(|| Error::Tls(format!("{TLS_SECRET} lacks {CA_KEY}/{CERT_KEY}/{KEY_KEY}")))
        }
        Err(e) => Err(e.into()),
    }
}

/// Renews the material when due, for as long as the process runs, publishing each new
/// version (also one another replica renewed). A new CA goes into the webhook
/// configuration before it is published, so the API server trusts a certificate before
/// the webhook presents it.
pub async fn keep_renewed(
    client: Client,
    namespace: String,
    sans: Vec<String>,
    lifetimes: Lifetimes,
    publish: watch::Sender<TlsMaterial>,
) {
    loop {
        tokio::time::sleep(lifetimes.check_interval()).await;
        let tls = match ensure_secret(client.clone(), &namespace, &sans, lifetimes).await {
            Ok(tls) => tls,
            Err(error) => {
                warn!(%error, "checking the webhook certificate failed; will retry");
                continue;
            }
        };
        if tls == *publish.borrow() {
            continue;
        }
        if tls.ca_pem != publish.borrow().ca_pem {
            if let Err(error) = patch_ca_bundle(client.clone(), &tls.ca_pem).await {
                warn!(%error, "writing the new caBundle failed; the loop in main retries");
            }
        }
        publish.send_replace(tls);
    }
}

/// A certificate's validity, in seconds since the epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

/// The validity of every certificate of a PEM bundle, in order: what the expiry metric
/// reports and what `kubectl xlattice check` judges.
pub fn validities(bundle: &[u8]) -> std::result::Result<Vec<Validity>, String> {
    let blocks = pem::parse_many(bundle).map_err(|e| e.to_string())?;
    blocks
        .iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| {
            let (_, cert) = x509_parser::parse_x509_certificate(b.contents()).map_err(|e| e.to_string())?;
            Ok(Validity {
                not_before: cert.validity().not_before.timestamp(),
                not_after: cert.validity().not_after.timestamp(),
            })
        })
        .collect()
}

/// notAfter (Unix seconds) of the first certificate of `cert_pem`: what the serving
/// certificate's expiry metric reports. None when it cannot be read.
pub fn not_after(cert_pem: &str) -> Option<i64> {
    Some(validities(cert_pem.as_bytes()).ok()?.first()?.not_after)
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

    fn sans() -> Vec<String> {
        vec![
            "xlattice-operator.xlattice-system.svc".to_string(),
            "127.0.0.1".to_string(),
        ]
    }

    fn text(secret: &Secret, key: &str) -> String {
        data_text(secret, key).unwrap()
    }

    #[test]
    fn certificates_are_renewed_when_due_the_ca_kept_in_the_bundle_when_replaced() {
        let (sans, life) = (sans(), Lifetimes::days(30));
        let t0 = Timestamp::from_second(1_800_000_000).unwrap();
        let day = |d: i64| t0 + SignedDuration::from_hours(24 * d);
        assert_eq!(plan(None, &sans, t0), Plan::NewCa);

        let first = renewed(None, &Plan::NewCa, "ns", &sans, life, t0).unwrap();
        assert!(text(&first, CA_KEY).starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(text(&first, CA_KEY).matches("BEGIN CERTIFICATE").count(), 1);
        assert_eq!(plan(Some(&first), &sans, t0), Plan::Keep);
        assert_eq!(plan(Some(&first), &sans, day(19)), Plan::Keep);
        // Two thirds of 30 days: the serving certificate is due, the CA (300 days) is not.
        assert_eq!(plan(Some(&first), &sans, day(21)), Plan::NewServingCert);
        assert_eq!(plan(Some(&first), &sans[..1], t0), Plan::NewServingCert, "SANs changed");

        let second = renewed(Some(&first), &Plan::NewServingCert, "ns", &sans, life, day(21)).unwrap();
        assert_eq!(
            text(&second, CA_KEY),
            text(&first, CA_KEY),
            "same CA: the caBundle stays"
        );
        assert_eq!(text(&second, CA_KEY_KEY), text(&first, CA_KEY_KEY));
        assert_ne!(text(&second, CERT_KEY), text(&first, CERT_KEY));
        assert_eq!(plan(Some(&second), &sans, day(40)), Plan::Keep);
        assert_eq!(
            plan(Some(&second), &sans, day(201)),
            Plan::NewCa,
            "two thirds of the CA's life"
        );

        let third = renewed(Some(&second), &Plan::NewCa, "ns", &sans, life, day(201)).unwrap();
        let bundle = text(&third, CA_KEY);
        assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(bundle.ends_with(&text(&first, CA_KEY)), "the previous CA stays trusted");
        assert_ne!(text(&third, CA_KEY_KEY), text(&first, CA_KEY_KEY));

        // A Secret from before renewals existed (no CA key, no due dates) gets a new CA.
        let mut legacy = first.clone();
        legacy.data.as_mut().unwrap().remove(CA_KEY_KEY);
        legacy
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove(CA_RENEW_AFTER_ANNOTATION);
        assert_eq!(plan(Some(&legacy), &sans, t0), Plan::NewCa);
    }

    #[test]
    fn the_serving_certificate_expiry_is_read_from_its_pem() {
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let secret = renewed(None, &Plan::NewCa, "ns", &sans(), Lifetimes::days(30), now).unwrap();
        let tls = from_secret(&secret).unwrap();
        assert_eq!(not_after(&tls.cert_pem), Some(1_700_000_000 + 30 * 86_400));
        assert_eq!(not_after("not a certificate"), None);
    }

    #[test]
    fn the_ca_bundle_is_patched_once() {
        let secret = renewed(
            None,
            &Plan::NewCa,
            "ns",
            &sans(),
            Lifetimes::days(365),
            Timestamp::now(),
        )
        .unwrap();
        let tls = from_secret(&secret).unwrap();
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

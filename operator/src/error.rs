//! The typed errors of the reconciler and the webhook, each with a bounded metric label,
//! and the helpers that read the API server's answers (not found, conflict).

use std::time::Duration;

/// Everything a reconcile or the webhook can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),

    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),

    #[error("key generation for pod {pod}: {reason}")]
    KeyGeneration { pod: String, reason: String },

    #[error("Secret {secret} exists and is not this cluster's ({owner}): the pod's identity cannot be minted")]
    NameTaken { secret: String, owner: String },

    #[error("identity Secret {secret} is unreadable: {reason}")]
    CorruptIdentity { secret: String, reason: String },

    #[error("invalid spec: {0}")]
    InvalidSpec(String),

    #[error("member directory: {0}")]
    Directory(String),

    #[error("webhook TLS: {0}")]
    Tls(String),

    #[error("lost the leader Lease to {0}")]
    LostLease(String),

    #[error("the identities role is bound in namespace {0} but not in force after 10 s")]
    NotGranted(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

// === impl Error ===

impl Error {
    /// A bounded label for the failures metric (never an object name).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(e) if is_conflict(e) => "conflict",
            Self::Kube(kube::Error::Api(s)) if s.code == 403 => "forbidden",
            Self::Kube(_) => "kube",
            Self::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => {
                    e.metric_label()
                }
                _ => "finalizer",
            },
            Self::KeyGeneration { .. } => "keygen",
            Self::NameTaken { .. } => "name_taken",
            Self::CorruptIdentity { .. } => "corrupt_identity",
            Self::InvalidSpec(_) => "invalid_spec",
            Self::Directory(_) => "directory",
            Self::Tls(_) => "tls",
            Self::LostLease(_) => "lease",
            Self::NotGranted(_) => "not_granted",
        }
    }
}

/// The API server answered 404: the object is gone (for a delete, what was wanted).
pub fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(s) if s.code == 404)
}

/// What the API server said, without the status's debug dump: for a status or Event.
pub fn said(error: &Error) -> String {
    match error {
        Error::Kube(kube::Error::Api(status)) => status.message.clone(),
        other => other.to_string(),
    }
}

/// The API server answered 403: RBAC or an admission policy refused.
pub fn is_forbidden(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(s) if s.code == 403)
}

/// The API server answered 409: the object changed since it was read (retried, not reported).
pub fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(s) if s.code == 409)
}

/// A delete's outcome, where an object already gone counts as deleted.
pub fn deleted_or_gone<T>(result: std::result::Result<T, kube::Error>) -> Result<()> {
    match result {
        Err(e) if !is_not_found(&e) => Err(e.into()),
        _ => Ok(()),
    }
}

/// Exponential backoff for a failing object: 1s, 2s, 4s … capped at 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(8)).min(Duration::from_secs(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(30), Duration::from_secs(256));
        assert_eq!(Error::InvalidSpec("x".into()).metric_label(), "invalid_spec");
    }
}

//! Leader election on a coordination.k8s.io Lease, so two replicas can run: one reconciles,
//! both serve the webhook.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
use kube::{api::PostParams, Api, Client};
use tracing::{info, warn};

use crate::error::{Error, Result};

pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    holder: String,
    ttl: Duration,
}

/// What the Lease says about who leads.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Ours to (re)write.
    Take,
    /// Someone else holds a live lease.
    HeldBy(String),
}

/// Pure decision: may `holder` write the Lease at `now`?
pub fn judge(spec: Option<&LeaseSpec>, holder: &str, now: Timestamp) -> Verdict {
    let Some(spec) = spec else {
        return Verdict::Take;
    };
    match spec.holder_identity.as_deref() {
        None | Some("") => Verdict::Take,
        Some(h) if h == holder => Verdict::Take,
        Some(other) => {
            let ttl = SignedDuration::from_secs(spec.lease_duration_seconds.unwrap_or(15).into());
            let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()).map(|t| t.0);
            match renewed {
                Some(t) if t + ttl > now => Verdict::HeldBy(other.to_string()),
                _ => Verdict::Take,
            }
        }
    }
}

// === impl LeaseLock ===

impl LeaseLock {
    pub fn new(client: Client, namespace: &str, name: &str, holder: String, ttl: Duration) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            holder,
            ttl,
        }
    }

    /// One attempt to acquire or renew. Conflicts (another replica wrote first) lose.
    pub async fn try_acquire(&self) -> Result<bool> {
        let now = Timestamp::now();
        let existing = self.api.get_opt(&self.name).await?;
        if let Verdict::HeldBy(_) = judge(existing.as_ref().and_then(|l| l.spec.as_ref()), &self.holder, now) {
            return Ok(false);
        }
        let old = existing.as_ref().and_then(|l| l.spec.clone()).unwrap_or_default();
        let mine = old.holder_identity.as_deref() == Some(self.holder.as_str());
        let spec = LeaseSpec {
            holder_identity: Some(self.holder.clone()),
            lease_duration_seconds: Some(self.ttl.as_secs() as i32),
            acquire_time: if mine {
                old.acquire_time.clone()
            } else {
                Some(MicroTime(now))
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(old.lease_transitions.unwrap_or(0) + i32::from(!mine && existing.is_some())),
            ..Default::default()
        };
        let result = match existing {
            Some(mut lease) => {
                lease.spec = Some(spec);
                self.api.replace(&self.name, &PostParams::default(), &lease).await
            }
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..Default::default()
                    },
                    spec: Some(spec),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
        };
        match result {
            Ok(_) => Ok(true),
            Err(e) if crate::error::is_conflict(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits until this replica leads.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire().await {
                Ok(true) => {
                    info!(holder = %self.holder, lease = %self.name, "leading");
                    return;
                }
                Ok(false) => {}
                Err(error) => warn!(%error, "leader election"),
            }
            tokio::time::sleep(self.ttl / 3).await;
        }
    }

    /// Hands the Lease over at shutdown so the next replica need not wait for it to expire.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else { return };
        if spec.holder_identity.as_deref() != Some(self.holder.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => info!(holder = %self.holder, "released the lease"),
            Err(error) => warn!(%error, "releasing the lease failed"),
        }
    }

    /// Renews until the lease is lost; returns why. The caller stops reconciling then: two
    /// leaders minting at once is what the Lease prevents.
    pub async fn hold(&self) -> Error {
        let mut failures_since_renewal = 0u32;
        loop {
            tokio::time::sleep(self.ttl / 3).await;
            match self.try_acquire().await {
                Ok(true) => failures_since_renewal = 0,
                Ok(false) => return Error::LostLease("another replica".into()),
                Err(error) => {
                    failures_since_renewal += 1;
                    warn!(%error, "renewing the lease failed");
                    // Two missed renewals leave a third of the TTL: step down before it expires.
                    if failures_since_renewal >= 2 {
                        return error;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_leases_of_others_are_respected_expired_ones_taken() {
        let now = Timestamp::from_second(1_000).unwrap();
        let spec = |holder: &str, renewed: i64| LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
            ..Default::default()
        };
        assert_eq!(judge(None, "me", now), Verdict::Take);
        assert_eq!(judge(Some(&spec("me", 999)), "me", now), Verdict::Take);
        assert_eq!(
            judge(Some(&spec("other", 990)), "me", now),
            Verdict::HeldBy("other".into())
        );
        assert_eq!(judge(Some(&spec("other", 980)), "me", now), Verdict::Take);
    }
}

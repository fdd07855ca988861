//! The phases that write identity Secrets: mint what is missing, rotate what is due, delete
//! what outlived its pod. Each returns an `Outcome` and keeps `Observed::secrets` current.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use k8s_openapi::{api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    api::{DeleteParams, Preconditions},
    runtime::events::EventType,
    ResourceExt,
};
use tracing::{info, warn};
use xlattice_protocol::{NodeIdBits, RsaBits};

use super::{context::key, Context, Observed, Outcome};
use crate::{
    desired,
    error::{deleted_or_gone, is_conflict, Error, Result},
    membership::Orphan,
    mint::{self, Minted},
    names::announced_node_id,
    rotation::{self, Due},
    status::{Degraded, DegradedReason},
};

/// Mints an identity for every member without one. A failure does not stop the reconcile:
/// the members that have identities still get a directory.
pub(super) async fn mint(ctx: &Context, obs: &mut Observed<'_>, sizes: (NodeIdBits, RsaBits)) -> Outcome {
    let need = crate::membership::need_identity(&obs.members, &obs.secrets);
    if need.is_empty() {
        return Outcome::default();
    }
    let cluster = obs.cluster;
    info!(cluster = %key(cluster), pods = need.len(), "minting identities");
    let taken = mint::taken_node_ids(&obs.secrets);
    let need = need.into_iter().map(|pod| (pod.clone(), obs.tokens(&pod))).collect();
    let results = mint::mint_all(&obs.secrets_api, cluster, need, taken, sizes, ctx.keygen.clone()).await;
    let mut outcome = Outcome::default();
    let mut created = Vec::new();
    for (pod, result) in results {
        match result {
            Ok(Minted::Created(secret)) => {
                ctx.metrics.minted.inc();
                ctx.metrics.write("Secret");
                let node_id = announced_node_id(&secret);
                info!(cluster = %key(cluster), %pod, %node_id, "minted identity");
                created.push((pod, node_id));
                obs.secrets.push(secret);
            }
            Ok(Minted::Found(secret)) => obs.secrets.push(secret),
            Err(error) => {
                warn!(cluster = %key(cluster), %pod, %error, "minting failed");
                outcome.fail(Degraded::new(DegradedReason::MintingFailed, error.to_string()), error);
            }
        }
    }
    let notes = created
        .iter()
        .map(|(pod, node_id)| format!("minted identity {node_id} for pod {pod}"));
    let summary = format!("minted {} identities", created.len());
    ctx.member_events(cluster, "MintedIdentity", notes.collect(), summary)
        .await;
    outcome
}

/// A member whose keys are due: its pod, observed Secret, tokens now, and why.
type DueRotation = (String, Secret, rotation::Tokens, rotation::Reason);

/// Rotates the keys of members whose token changed or whose keys outlived the period.
/// Returns when keys were rotated, if any were.
pub(super) async fn rotate(
    ctx: &Context,
    obs: &mut Observed<'_>,
    rsa: RsaBits,
    period: Option<Duration>,
) -> (Outcome, Option<Time>) {
    let cluster = obs.cluster;
    let now = Timestamp::now();
    let (due, mut outcome) = due_rotations(obs, period, now);
    if due.is_empty() {
        return (outcome, None);
    }
    info!(cluster = %key(cluster), pods = due.len(), "rotating keys");
    let mut reasons: HashMap<String, rotation::Reason> = HashMap::new();
    let due = due
        .into_iter()
        .map(|(pod, secret, tokens, reason)| {
            reasons.insert(pod.clone(), reason);
            (pod, secret, tokens)
        })
        .collect();
    let results = mint::rotate_all(&obs.secrets_api, due, rsa, ctx.keygen.clone()).await;
    let mut notes = Vec::new();
    for (pod, result) in results {
        match result {
            Ok(secret) => {
                ctx.metrics.rotated.inc();
                ctx.metrics.write("Secret");
                let (node_id, reason) = (announced_node_id(&secret), &reasons[&pod]);
                info!(cluster = %key(cluster), %pod, %node_id, %reason, "rotated keys");
                notes.push(format!(
                    "rotated the keys of pod {pod} (NodeID {node_id} kept): {reason}"
                ));
                if let Some(slot) = obs.secrets.iter_mut().find(|s| s.name_any() == secret.name_any()) {
                    *slot = secret;
                }
            }
            Err(error) => {
                warn!(cluster = %key(cluster), %pod, %error, "rotation failed");
                // A conflict (the Secret changed since it was read) is transient: retried
                // with backoff, not worth a Degraded.
                if !matches!(&error, Error::Kube(e) if is_conflict(e)) {
                    outcome.degraded(Degraded::new(DegradedReason::RotationFailed, error.to_string()));
                }
                outcome.error.get_or_insert(error);
            }
        }
    }
    let when = (!notes.is_empty()).then_some(Time(now));
    let summary = format!("rotated the keys of {} members (NodeIDs kept)", notes.len());
    ctx.member_events(cluster, "RotatedKeys", notes, summary).await;
    (outcome, when)
}

/// The members whose keys are due now; the outcome asks to look again when the next
/// period elapses.
fn due_rotations(obs: &Observed<'_>, period: Option<Duration>, now: Timestamp) -> (Vec<DueRotation>, Outcome) {
    let mut outcome = Outcome::default();
    let mut due = Vec::new();
    for secret in &obs.secrets {
        let Some(member) = desired::secret_member(secret).filter(|m| obs.is_member(m)) else {
            continue;
        };
        let tokens = obs.tokens(member);
        match rotation::due(secret, &tokens, period, now) {
            Due::Now(reason) => due.push((member.to_string(), secret.clone(), tokens, reason)),
            Due::Later(left) => outcome.requeue_within(left + Duration::from_millis(100)),
            Due::Never => {}
        }
    }
    (due, outcome)
}

/// Deletes identities whose pod is gone, after the grace period and never before.
pub(super) async fn reap(ctx: &Context, obs: &mut Observed<'_>) -> Result<Outcome> {
    let cluster = obs.cluster;
    let grace = Duration::from_secs(cluster.spec.member_grace_period_seconds.max(0) as u64);
    let verdicts = {
        let mut clocks = ctx.orphans.lock().expect("lock poisoned");
        clocks
            .entry(key(cluster))
            .or_default()
            .judge(&obs.members, &obs.secrets, grace, Instant::now())
    };
    let mut outcome = Outcome::default();
    for (secret_name, verdict) in verdicts {
        match verdict {
            Orphan::Wait(left) => outcome.requeue_within(left + Duration::from_millis(100)),
            Orphan::Delete => {
                let uid = find(&obs.secrets, &secret_name).and_then(|s| s.uid());
                let params = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid,
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                deleted_or_gone(obs.secrets_api.delete(&secret_name, &params).await)?;
                ctx.metrics.deleted.inc();
                ctx.metrics.write("Secret");
                obs.secrets.retain(|s| s.name_any() != secret_name);
                info!(cluster = %key(cluster), secret = %secret_name, "deleted identity of a departed member");
                let note = format!("deleted {secret_name}: its pod left more than {}s ago", grace.as_secs());
                ctx.event(cluster, EventType::Normal, "DeletedIdentity", note).await;
            }
        }
    }
    Ok(outcome)
}

fn find<'s>(secrets: &'s [Secret], name: &str) -> Option<&'s Secret> {
    secrets.iter().find(|s| s.name_any() == name)
}

//! The phases that write identity Secrets: mint what is missing, rotate what is due, delete
//! what outlived its pod. Each returns an `Outcome` and keeps `Observed::secrets` current.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::{api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    api::{DeleteParams, Preconditions},
    runtime::events::EventType,
    Resource, ResourceExt,
};
use tracing::{info, warn};
use xlattice_protocol::{NodeId, NodeIdBits, RsaBits};

use super::{
    context::{key, MemberNote},
    Context, Observed, Outcome,
};
use crate::{
    desired,
    error::{deleted_or_gone, is_conflict, Error, Result},
    membership::Orphan,
    mint::{self, Minted},
    names::announced_node_id,
    rotation::{self, Due},
    status::{Degraded, DegradedReason},
};

/// How often a long mint reports progress on status and checks that the cluster still
/// wants it.
const PROGRESS: Duration = Duration::from_secs(2);

/// Mints an identity for every member without one. A failure does not stop the reconcile:
/// the members that have identities still get a directory. While minting, the status says
/// how far it got (Ready=False), and a deletion of the cluster stops it.
pub(super) async fn mint(ctx: &Context, obs: &mut Observed<'_>, sizes: (NodeIdBits, RsaBits)) -> Result<Outcome> {
    let need = crate::membership::need_identity(&obs.members, &obs.secrets);
    if need.is_empty() {
        return Ok(Outcome::default());
    }
    let cluster = obs.cluster;
    info!(cluster = %key(cluster), pods = need.len(), "minting identities");
    // A member the published directory lists already had an identity: its Secret vanished.
    let published = match crate::directory::fetch(&ctx.client, &obs.ns, &cluster.name_any()).await {
        Ok(dir) => dir.members,
        Err(error) => {
            warn!(cluster = %key(cluster), %error, "cannot read the published directory: replaced identities will not be told apart");
            Vec::new()
        }
    };
    let before: HashMap<String, NodeId> = published
        .into_iter()
        .filter(|m| need.contains(&m.name))
        .map(|m| (m.name, m.node_id))
        .collect();
    let mut taken = mint::taken_node_ids(&obs.secrets);
    // A NodeID is never handed out twice in a cluster, not even after its member left.
    taken.extend(before.values().copied());
    let need = need.into_iter().map(|pod| (pod.clone(), obs.tokens(&pod))).collect();
    let api = obs.secrets_api.clone();
    let mut results = std::pin::pin!(mint::mint_all(&api, cluster, need, taken, sizes, ctx.keygen.clone()));
    let mut progress = tokio::time::interval(PROGRESS);
    let mut outcome = Outcome::default();
    let mut notes = Vec::new();
    loop {
        tokio::select! {
            next = results.next() => match next {
                Some((pod, result)) => {
                    let replaced = before.get(&pod).filter(|_| matches!(result, Ok(Minted::Created(_))));
                    if let (Some(old), Ok(Minted::Created(secret))) = (replaced, &result) {
                        replaced_identity(ctx, obs, &pod, &old.to_string(), &announced_node_id(secret)).await;
                    }
                    minted(ctx, obs, &mut outcome, &mut notes, pod, result);
                }
                None => break,
            },
            // The first tick is at once: Ready turns False before the first key is made.
            _ = progress.tick() => {
                if super::report_progress(ctx, obs).await? {
                    info!(cluster = %key(cluster), "the cluster is being deleted: minting stopped");
                    break;
                }
            }
        }
    }
    let summary = format!("minted {} identities", notes.len());
    ctx.member_events(cluster, "MintedIdentity", notes, summary).await;
    Ok(outcome)
}

/// The loud trace of an identity replaced: a published member's Secret vanished (deleted
/// by hand?), so it got a new identity. Re-minting restores the member at once (a member
/// without an identity is refused by every peer); its peers see a new NodeID, a new member.
async fn replaced_identity(ctx: &Context, obs: &Observed<'_>, pod: &str, old: &str, new: &str) {
    ctx.metrics.replaced.inc();
    warn!(cluster = %key(obs.cluster), %pod, old_node_id = %old, new_node_id = %new, "identity Secret vanished: minted a new identity");
    let note = format!(
        "the identity Secret of pod {pod} vanished (deleted by hand?): minted a new identity, NodeID {new} replaces {old}; peers see a new member"
    );
    let regarding = obs
        .note(pod, String::new())
        .pod
        .unwrap_or_else(|| obs.cluster.object_ref(&()));
    ctx.event_on(&regarding, EventType::Warning, "ReplacedIdentity", note)
        .await;
}

/// Logs and counts one mint as it happens, and keeps `obs.secrets` current.
fn minted(
    ctx: &Context,
    obs: &mut Observed<'_>,
    outcome: &mut Outcome,
    notes: &mut Vec<MemberNote>,
    pod: String,
    result: Result<Minted>,
) {
    let cluster = key(obs.cluster);
    match result {
        Ok(Minted::Created(secret)) => {
            ctx.metrics.minted.inc();
            ctx.metrics.write("Secret");
            let node_id = announced_node_id(&secret);
            info!(%cluster, %pod, %node_id, "minted identity");
            notes.push(obs.note(&pod, format!("minted identity {node_id} for pod {pod}")));
            obs.secrets.push(secret);
        }
        Ok(Minted::Found(secret)) => obs.secrets.push(secret),
        Err(error) => {
            warn!(%cluster, %pod, %error, "minting failed");
            outcome.fail(Degraded::new(DegradedReason::MintingFailed, error.to_string()), error);
        }
    }
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
                let note = format!("rotated the keys of pod {pod} (NodeID {node_id} kept): {reason}");
                notes.push(obs.note(&pod, note));
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
    let mut deleted = Vec::new();
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
                deleted.push(secret_name);
            }
        }
    }
    if !deleted.is_empty() {
        // One Event naming them all: Events on the cluster with one reason fold into a
        // series that keeps only the first note.
        let summary = format!(
            "deleted {} identities whose pod left more than {}s ago",
            deleted.len(),
            grace.as_secs()
        );
        let names: Vec<&str> = deleted.iter().map(String::as_str).collect();
        let note = super::context::naming(&summary, &names, 1024);
        ctx.event(cluster, EventType::Normal, "DeletedIdentity", note).await;
    }
    Ok(outcome)
}

fn find<'s>(secrets: &'s [Secret], name: &str) -> Option<&'s Secret> {
    secrets.iter().find(|s| s.name_any() == name)
}

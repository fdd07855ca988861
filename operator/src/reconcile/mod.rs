//! The reconciler: one XLatticeCluster at a time, read everything, decide with the pure
//! functions of `desired`, `membership` and `status`, write only what differs.
//!
//! `apply` is a list of phases, each in the module named for what it writes:
//! `identities` (Secrets: mint, rotate, reap), `publication` (directory shards,
//! NetworkPolicy, Services), `refresh` (the directory version on member pods, which makes
//! the kubelet refresh their volumes at once), `workloads` (pod templates). Each returns an `Outcome`;
//! `Outcome::conclude` decides what the status says and whether to retry.

mod context;
mod identities;
mod publication;
mod refresh;
mod workloads;

use std::{sync::Arc, time::Duration, time::Instant};

use k8s_openapi::{
    api::{
        core::v1::{ConfigMap, Pod, Secret, Service},
        discovery::v1::EndpointSlice,
        networking::v1::NetworkPolicy,
    },
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{
    api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams},
    core::Selector,
    runtime::{
        controller::Action,
        events::EventType,
        finalizer::{finalizer, Event as Finalizer},
    },
    Api, Resource, ResourceExt,
};
use serde::de::DeserializeOwned;
use tracing::{info, warn};
use xlattice_protocol::{NodeIdBits, RsaBits};

pub use context::Context;
use context::{key, Subject};

use crate::{
    crd::{self, Undecodable, XLatticeCluster, XLatticeClusterStatus},
    error::{backoff, deleted_or_gone, is_forbidden, is_not_found, said, Error, Result},
    membership,
    metrics::ClusterGauges,
    names::*,
    rotation::{self, Tokens},
    status::{self, Degraded, DegradedReason, Facts},
};

/// How often a settled cluster is looked at again without any event.
const RESYNC: Duration = Duration::from_secs(300);

/// What one reconcile read, kept current by the phases as they write.
struct Observed<'a> {
    cluster: &'a XLatticeCluster,
    ns: String,
    /// Pods the selector matches.
    members: Vec<&'a Pod>,
    /// The cluster's identity Secrets.
    secrets: Vec<Secret>,
    secrets_api: Api<Secret>,
    /// The status as last written by this reconcile (progress), else as read.
    status: Option<XLatticeClusterStatus>,
}

/// What a phase leaves for the end of the reconcile.
#[derive(Debug, Default)]
struct Outcome {
    /// Look again no later than this.
    requeue: Option<Duration>,
    /// What the status must report.
    degraded: Option<Degraded>,
    /// Retried with backoff, after the rest of the reconcile has written what it could.
    error: Option<Error>,
}

/// Entry point for the controller: wraps apply/cleanup in the finalizer. Clusters arrive
/// untyped: one that cannot be decoded is reported on its own status, and cleans up when
/// deleted like any other.
pub async fn reconcile(cluster: Arc<DynamicObject>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let ns = cluster
        .namespace()
        .ok_or_else(|| Error::InvalidSpec("XLatticeCluster is namespaced".into()))?;
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &crd::api_resource());
    let result = finalizer(&api, FINALIZER, cluster.clone(), |event| async {
        match event {
            Finalizer::Apply(object) => match crd::decode(&object) {
                Ok(cluster) => apply(&object, &cluster, &ctx).await,
                Err(undecodable) => report_undecodable(&object, undecodable, &ctx).await,
            },
            Finalizer::Cleanup(object) => cleanup(&object, &ctx).await,
        }
    })
    .await;
    let result = match result {
        // Two cleanups raced (the deletion and a child's event); the first one finished.
        Err(kube::runtime::finalizer::Error::RemoveFinalizer(e)) if is_not_found(&e) => Ok(Action::await_change()),
        other => other.map_err(|e| Error::Finalizer(Box::new(e))),
    };
    ctx.metrics.observe(started.elapsed());
    if result.is_ok() {
        ctx.failures
            .lock()
            .expect("lock poisoned")
            .remove(&key(cluster.as_ref()));
    }
    result
}

/// Requeue with a per-cluster exponential backoff.
pub fn error_policy(cluster: Arc<DynamicObject>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failure(error.metric_label());
    let mut failures = ctx.failures.lock().expect("lock poisoned");
    let n = failures.entry(key(cluster.as_ref())).or_default();
    let wait = backoff(*n);
    *n = n.saturating_add(1);
    warn!(cluster = %key(cluster.as_ref()), %error, reason = error.metric_label(), retry_in = ?wait, "reconcile failed");
    Action::requeue(wait)
}

async fn apply(object: &DynamicObject, cluster: &XLatticeCluster, ctx: &Context) -> Result<Action> {
    let mut facts = Facts {
        generation: cluster.metadata.generation,
        ..Default::default()
    };
    let usable = match usable_spec(cluster) {
        Ok(usable) => usable,
        Err(degraded) => {
            // The user must change the spec: no point retrying before that.
            facts.degraded = Some(degraded);
            write_status(&Subject::of(cluster), ctx, &facts).await?;
            return Ok(Action::await_change());
        }
    };
    let ns = cluster.namespace().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pods = pods_api
        .list(&ListParams::default().labels(&usable.selector.to_string()))
        .await?
        .items;
    if let Err(error) = ctx.access.ensure(&ctx.client, object).await {
        // Nothing can be minted or published without it: said on the status, retried.
        let message = format!("cannot bind the identities role in namespace {ns}: {}", said(&error));
        let facts = Facts {
            generation: cluster.metadata.generation,
            degraded: Some(Degraded::new(DegradedReason::MintingFailed, message)),
            ..Facts::observed(cluster.status.as_ref())
        };
        write_status(&Subject::of(cluster), ctx, &facts).await?;
        return Err(error);
    }
    let secrets_api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let secrets = secrets_api
        .list(&ListParams::default().labels(&owned_by(&cluster.name_any())))
        .await?
        .items;
    let (members, claims) = claim(ctx, cluster, membership::members(&usable.selector, &pods)).await?;
    let mut obs = Observed {
        cluster,
        ns,
        members,
        secrets,
        secrets_api,
        status: cluster.status.clone(),
    };

    let mut outcomes = vec![claims, identities::mint(ctx, &mut obs, usable.sizes).await?];
    let (rotated, rotated_at) = identities::rotate(ctx, &mut obs, usable.sizes.1, usable.period).await;
    outcomes.push(rotated);
    facts.last_rotation = rotated_at;
    outcomes.push(identities::reap(ctx, &mut obs).await?);
    let (published, version) = publication::directory(ctx, &obs, &mut facts).await?;
    outcomes.push(published);
    outcomes.push(refresh::members(ctx, &obs, &version).await?);
    outcomes.push(publication::network(ctx, &obs, &mut facts).await?);
    facts.pods_without_sidecar = membership::without_sidecar(&obs.members);
    let expected = crate::webhook::inject::sidecar_args(cluster);
    facts.pods_with_outdated_sidecar = membership::outdated_sidecar(&cluster.name_any(), &obs.members, &expected);
    let stale = [
        facts.pods_without_sidecar.clone(),
        facts.pods_with_outdated_sidecar.clone(),
    ]
    .concat();
    outcomes.push(workloads::restart(ctx, &obs, &stale).await?);

    let (degraded, error, requeue) = Outcome::conclude(outcomes);
    facts.degraded = degraded;
    write_status(&obs.subject(), ctx, &facts).await?;
    match error {
        Some(error) => Err(error),
        None => Ok(Action::requeue(requeue)),
    }
}

/// A cluster this operator cannot read: said on its status and in a Warning Event (once,
/// when it becomes the reason), and not retried until it changes. Nothing else waits on it.
async fn report_undecodable(object: &DynamicObject, undecodable: Undecodable, ctx: &Context) -> Result<Action> {
    let subject = Subject::of_object(object);
    warn!(cluster = %key(object), field = %undecodable.field, reason = %undecodable.reason, "cannot read this XLatticeCluster");
    ctx.metrics.failure(Error::InvalidSpec(String::new()).metric_label());
    // What the last readable version published stays as it was, and the status says so.
    let facts = Facts {
        generation: subject.generation,
        degraded: Some(Degraded::new(DegradedReason::InvalidSpec, undecodable.to_string())),
        ..Facts::observed(subject.status.as_ref())
    };
    write_status(&subject, ctx, &facts).await?;
    Ok(Action::await_change())
}

/// What of the spec the phases need, parsed once; or why the spec cannot be served.
struct Usable {
    selector: Selector,
    sizes: (NodeIdBits, RsaBits),
    /// Periodic rotation, if any.
    period: Option<Duration>,
}

fn usable_spec(cluster: &XLatticeCluster) -> Result<Usable, Degraded> {
    let invalid = |message: String| Degraded::new(DegradedReason::InvalidSpec, message);
    let spec = &cluster.spec;
    membership::check_selector(&spec.selector).map_err(invalid)?;
    Ok(Usable {
        selector: Selector::try_from(spec.selector.clone()).map_err(|e| invalid(format!("spec.selector: {e}")))?,
        sizes: spec.key_sizes().map_err(invalid)?,
        period: rotation::period(spec).map_err(invalid)?,
    })
}

/// The matched pods this cluster may call its members: not those another cluster of the
/// namespace claims (`membership::claimed_by`), which are reported instead.
async fn claim<'p>(ctx: &Context, cluster: &XLatticeCluster, matched: Vec<&'p Pod>) -> Result<(Vec<&'p Pod>, Outcome)> {
    let ns = cluster.namespace().unwrap_or_default();
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &crd::api_resource());
    let claimants: Vec<membership::Claimant> = api
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|c| c.metadata.deletion_timestamp.is_none() || c.name_any() == cluster.name_any())
        .map(|c| membership::Claimant {
            name: c.name_any(),
            created: c.metadata.creation_timestamp.as_ref().map(|t| t.0),
            selector: crd::decode_selector(c).and_then(|s| Selector::try_from(s).ok()),
        })
        .collect();
    let others = membership::claimed_by_others(&cluster.name_any(), &matched, &claimants);
    let mut outcome = Outcome::default();
    if let Some((_, owner)) = others.first() {
        let names: Vec<String> = others.iter().map(|(p, o)| format!("{} ({o})", p.name_any())).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let summary = format!(
            "spec.selector also matches {} pods of other XLatticeClusters, which keep them (first: {owner}); \
             narrow the selector so that no pod matches two clusters",
            others.len()
        );
        let message = context::naming(&summary, &names, 1024);
        outcome.degraded(Degraded::new(DegradedReason::SelectorConflict, message));
    }
    let members = matched
        .into_iter()
        .filter(|p| !others.iter().any(|(o, _)| o.name_any() == p.name_any()))
        .collect();
    Ok((members, outcome))
}

/// Says on status how far minting got (Ready=False until every member has an identity);
/// true when the cluster is being deleted, so the caller stops.
async fn report_progress(ctx: &Context, obs: &mut Observed<'_>) -> Result<bool> {
    let subject = obs.subject();
    let missing = membership::need_identity(&obs.members, &obs.secrets).len();
    let facts = Facts {
        generation: subject.generation,
        members: obs.members.len(),
        minted: obs.members.len() - missing,
        ..Facts::observed(subject.status.as_ref())
    };
    let written = write_status(&subject, ctx, &facts).await?;
    let deleting = written
        .as_ref()
        .map(|object| object.metadata.deletion_timestamp.is_some());
    if let Some(object) = written {
        obs.status = crd::decode_status(&object);
    }
    Ok(deleting.unwrap_or(false))
}

// === impl Observed ===

impl Observed<'_> {
    /// The cluster as status is written to it: with the status this reconcile last wrote.
    fn subject(&self) -> Subject {
        Subject {
            status: self.status.clone(),
            ..Subject::of(self.cluster)
        }
    }
    /// An Event note about member `pod`, regarding its pod.
    fn note(&self, pod: &str, note: String) -> context::MemberNote {
        let found = self.members.iter().find(|p| p.name_any() == pod);
        context::MemberNote {
            member: pod.to_string(),
            pod: found.map(|p| p.object_ref(&())),
            note,
        }
    }

    fn is_member(&self, pod: &str) -> bool {
        self.members.iter().any(|p| p.name_any() == pod)
    }

    /// The rotation tokens that apply to member `pod` now.
    fn tokens(&self, pod: &str) -> Tokens {
        let token =
            |annotations: &std::collections::BTreeMap<String, String>| annotations.get(ROTATE_ANNOTATION).cloned();
        Tokens {
            cluster: token(self.cluster.annotations()),
            pod: self
                .members
                .iter()
                .find(|p| p.name_any() == pod)
                .and_then(|p| token(p.annotations())),
        }
    }
}

// === impl Outcome ===

impl Outcome {
    fn requeue_within(&mut self, wait: Duration) {
        self.requeue = Some(self.requeue.map_or(wait, |r| r.min(wait)));
    }

    fn degraded(&mut self, degraded: Degraded) {
        self.degraded = Degraded::worst(self.degraded.take().into_iter().chain([degraded]));
    }

    /// A failure that degrades the cluster and is retried (the first one is kept).
    fn fail(&mut self, degraded: Degraded, error: Error) {
        self.degraded(degraded);
        self.error.get_or_insert(error);
    }

    /// The precedence rule, in one place: the status reports the most urgent Degraded reason
    /// of all phases; the reconcile retries with the first error in phase order; otherwise
    /// it looks again at the earliest time a phase asked for (or after `RESYNC`).
    fn conclude(outcomes: Vec<Outcome>) -> (Option<Degraded>, Option<Error>, Duration) {
        let mut requeue = RESYNC;
        let mut degraded = Vec::new();
        let mut error = None;
        for outcome in outcomes {
            requeue = requeue.min(outcome.requeue.unwrap_or(RESYNC));
            degraded.extend(outcome.degraded);
            if error.is_none() {
                error = outcome.error;
            }
        }
        (Degraded::worst(degraded), error, requeue)
    }
}

/// Writes the status `facts` call for, unless it is what `subject` holds already; returns
/// the object as written.
async fn write_status(subject: &Subject, ctx: &Context, facts: &Facts) -> Result<Option<DynamicObject>> {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let desired = status::desired(subject.status.as_ref(), facts, now);
    // Set whether or not the status changes: a restarted operator reports settled clusters too.
    ctx.metrics.cluster(&subject.ns, &subject.name, gauges(&desired));
    if subject.status.as_ref() == Some(&desired) {
        return Ok(None);
    }
    let was_degraded = degraded_reason(subject.status.as_ref());
    // Untyped: the answer is the whole object, which may be one the types cannot hold.
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &subject.ns, &crd::api_resource());
    let patch = serde_json::json!({
        "apiVersion": XLatticeCluster::api_version(&()),
        "kind": XLatticeCluster::kind(&()),
        "status": desired,
    });
    let written = api
        .patch_status(
            &subject.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    ctx.metrics.write("XLatticeClusterStatus");
    if let Some(degraded) = &facts.degraded {
        if was_degraded.as_deref() != Some(degraded.reason.as_str()) {
            // The reason, not "Degraded", names the Event: the recorder folds Events with one
            // reason into a series that keeps the first note.
            let note = degraded.to_string();
            ctx.event_on(&subject.reference, EventType::Warning, degraded.reason.as_str(), note)
                .await;
        }
    }
    Ok(Some(written))
}

/// The cluster gauges: what `status` says.
fn gauges(status: &XLatticeClusterStatus) -> ClusterGauges {
    let ready = status
        .conditions
        .iter()
        .any(|c| c.type_ == status::READY && c.status == "True");
    ClusterGauges {
        members: status.members.max(0) as usize,
        minted: status.minted.max(0) as usize,
        without_sidecar: status.pods_without_sidecar.len(),
        outdated_sidecar: status.pods_with_outdated_sidecar.len(),
        ready,
        degraded: degraded_reason(Some(status)).as_deref().and_then(DegradedReason::parse),
    }
}

fn degraded_reason(status: Option<&XLatticeClusterStatus>) -> Option<String> {
    status?
        .conditions
        .iter()
        .find(|c| c.type_ == status::DEGRADED && c.status == "True")
        .map(|c| c.reason.clone())
}

/// The bare API server has no garbage collector: owner references alone would leave the
/// Secrets behind, so everything the cluster owns is deleted explicitly.
async fn cleanup(cluster: &DynamicObject, ctx: &Context) -> Result<Action> {
    let (ns, name) = (cluster.namespace().unwrap_or_default(), cluster.name_any());
    let client = &ctx.client;
    let owned = ListParams::default().labels(&owned_by(&name));
    identities_cleanup(cluster, ctx, &owned).await?;
    delete_owned(&Api::<ConfigMap>::namespaced(client.clone(), &ns), &owned, ctx).await?;
    delete_owned(&Api::<NetworkPolicy>::namespaced(client.clone(), &ns), &owned, ctx).await?;
    delete_owned(&Api::<Service>::namespaced(client.clone(), &ns), &owned, ctx).await?;
    delete_owned(&Api::<EndpointSlice>::namespaced(client.clone(), &ns), &owned, ctx).await?;
    ctx.orphans.lock().expect("lock poisoned").remove(&key(cluster));
    let clusters = Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &crd::api_resource());
    let others_left = clusters
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .any(|c| c.uid() != cluster.uid());
    ctx.access.release(cluster, others_left);
    ctx.metrics.forget_cluster(&ns, &name);
    info!(cluster = %key(cluster), "cleaned up");
    let note = "deleted identities, directory, NetworkPolicy and Services".to_string();
    let reference = Subject::of_object(cluster).reference;
    ctx.event_on(&reference, EventType::Normal, "CleanedUp", note).await;
    Ok(Action::await_change())
}

/// Deletes the cluster's identity Secrets. Without the right to (the binding could not be
/// made, as in a namespace being deleted), they are left to the garbage collector (they are
/// owned by the cluster) rather than keeping the cluster, and its namespace, from going.
async fn identities_cleanup(cluster: &DynamicObject, ctx: &Context, owned: &ListParams) -> Result<()> {
    let api = Api::<Secret>::namespaced(ctx.client.clone(), &cluster.namespace().unwrap_or_default());
    let deleted = match ctx.access.ensure(&ctx.client, cluster).await {
        Ok(()) => delete_owned(&api, owned, ctx).await,
        Err(error) => Err(error),
    };
    match deleted {
        Err(Error::Kube(e)) if is_forbidden(&e) => {
            warn!(cluster = %key(cluster), error = %e, "cannot delete the identity Secrets: left to the garbage collector");
            Ok(())
        }
        other => other,
    }
}

/// Deletes what carries our labels, so a same-named object of someone else's survives.
async fn delete_owned<K>(api: &Api<K>, owned: &ListParams, ctx: &Context) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    for object in api.list(owned).await?.items {
        let deleted = api.delete(&object.name_any(), &DeleteParams::default()).await;
        if deleted.is_ok() {
            ctx.metrics.write(&K::kind(&()));
        }
        deleted_or_gone(deleted)?;
    }
    Ok(())
}

//! The phases that publish a cluster: the member directory (from the identity Secrets of
//! current members), the NetworkPolicy and the Services.

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::{
    api::{DeleteParams, ListParams, Patch, PatchParams},
    Api, Resource, ResourceExt,
};
use serde::{de::DeserializeOwned, Serialize};
use tracing::{info, warn};
use xlattice_protocol::MemberRecord;

use super::{context::key, Context, Observed, Outcome};
use crate::{
    desired, directory,
    error::{deleted_or_gone, Error, Result},
    names::{owned_by, FIELD_MANAGER},
    status::{Degraded, DegradedReason, Facts},
};

/// Publishes the directory of current members that have a readable identity; records in
/// `facts` what exists. Returns the directory's version (`MemberDirectory::version`) too.
pub(super) async fn directory(ctx: &Context, obs: &Observed<'_>, facts: &mut Facts) -> Result<(Outcome, String)> {
    let cluster = obs.cluster;
    let mut outcome = Outcome::default();
    let mut records: Vec<MemberRecord> = Vec::new();
    // Oldest first: when a hand edit makes two members share a NodeID, the one that had it
    // first keeps it and the other is left out (clients refuse a directory with duplicates).
    let mut secrets: Vec<&Secret> = obs.secrets.iter().collect();
    secrets.sort_by_key(|s| (s.creation_timestamp().map(|t| t.0), s.name_any()));
    for secret in secrets {
        let Some(member) = desired::secret_member(secret).filter(|m| obs.is_member(m)) else {
            continue;
        };
        match ctx.record(secret, member) {
            Ok(record) => match records.iter().find(|r| r.node_id == record.node_id) {
                Some(first) => {
                    let message = format!(
                        "members {} and {member} both hold NodeID {} (a hand edit of {}?): {member} is left out of the directory until its Secret is fixed or deleted",
                        first.name,
                        record.node_id,
                        secret.name_any()
                    );
                    warn!(cluster = %key(cluster), %member, node_id = %record.node_id, "duplicate NodeID: member left out of the directory");
                    outcome.degraded(Degraded::new(DegradedReason::DuplicateNodeId, message));
                }
                None => records.push(record),
            },
            Err(error) => {
                warn!(cluster = %key(cluster), %member, %error, "unreadable identity: member left out of the directory");
                let message = format!("member {member} is left out of the directory: {error}");
                outcome.degraded(Degraded::new(DegradedReason::CorruptIdentity, message));
            }
        }
    }
    facts.members = obs.members.len();
    facts.minted = records.len().min(obs.members.len());
    let dir = desired::directory(cluster, records, &obs.members);
    let published = directory::publish(&ctx.client, &ctx.metrics, cluster, &dir).await?;
    if let Some(message) = published.too_large {
        // Retrying would not help: the status says so (and an Event, when it becomes the
        // reason the cluster is degraded).
        outcome.degraded(Degraded::new(DegradedReason::DirectoryTooLarge, message));
    }
    facts.directory = published.config_maps;
    Ok((outcome, dir.version()))
}

/// Applies the NetworkPolicy and the two Services where they differ from the spec. One the
/// API server refuses as invalid is a spec the schema let through (an object stored before
/// a rule, a label name in `clientAccess`): reported, not retried until the spec changes.
pub(super) async fn network(ctx: &Context, obs: &Observed<'_>, facts: &mut Facts) -> Result<Outcome> {
    let cluster = obs.cluster;
    let mut outcome = Outcome::default();
    let policy = desired::network_policy(cluster);
    match refused(ensure(ctx, &obs.ns, &policy, desired::network_policy_matches).await)? {
        Some(message) => outcome.degraded(Degraded::new(
            DegradedReason::InvalidSpec,
            format!(
                "spec.selector or spec.clientAccess: the API server refused NetworkPolicy {}: {message}",
                policy.name_any()
            ),
        )),
        None => facts.network_policy_ready = true,
    }
    for service in desired::services(cluster) {
        if let Some(message) = refused(ensure(ctx, &obs.ns, &service, desired::service_matches).await)? {
            let message = format!("spec: the API server refused Service {}: {message}", service.name_any());
            outcome.degraded(Degraded::new(DegradedReason::InvalidSpec, message));
        }
    }
    endpoint_slices(ctx, obs).await?;
    Ok(outcome)
}

/// The Services' EndpointSlices when their selector cannot say who the members are
/// (`desired::writes_endpoint_slices`); slices no longer wanted are deleted.
async fn endpoint_slices(ctx: &Context, obs: &Observed<'_>) -> Result<()> {
    let wanted = desired::endpoint_slices(obs.cluster, &obs.members);
    for slice in &wanted {
        ensure(ctx, &obs.ns, slice, desired::endpoint_slice_matches).await?;
    }
    let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &obs.ns);
    let owned = ListParams::default().labels(&owned_by(&obs.cluster.name_any()));
    for stale in api.list(&owned).await?.items {
        if wanted.iter().all(|w| w.name_any() != stale.name_any()) {
            deleted_or_gone(api.delete(&stale.name_any(), &DeleteParams::default()).await)?;
            ctx.metrics.write("EndpointSlice");
        }
    }
    Ok(())
}

/// The API server's message when it refused a write as invalid (422); other errors stay errors.
fn refused(result: Result<()>) -> Result<Option<String>> {
    match result {
        Ok(()) => Ok(None),
        Err(Error::Kube(kube::Error::Api(status))) if status.code == 422 => Ok(Some(status.message)),
        Err(error) => Err(error),
    }
}

/// Server-side applies `desired` when the observed object differs in what we set.
async fn ensure<K>(ctx: &Context, ns: &str, desired: &K, matches: fn(&K, &K) -> bool) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let name = desired.name_any();
    if let Some(observed) = api.get_opt(&name).await? {
        if matches(desired, &observed) {
            return Ok(());
        }
    }
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(desired),
    )
    .await?;
    ctx.metrics.write(&K::kind(&()));
    info!(kind = %K::kind(&()), %name, namespace = ns, "applied");
    Ok(())
}

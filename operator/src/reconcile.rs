//! The reconciler: one XLatticeCluster at a time, read everything, decide with the pure
//! functions of `desired`, `membership` and `status`, write only what differs.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{
        core::v1::{ConfigMap, Pod, Secret, Service},
        networking::v1::NetworkPolicy,
    },
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{
    api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions},
    core::Selector,
    runtime::{
        controller::Action,
        events::{Event, EventType, Recorder},
        finalizer::{finalizer, Event as Finalizer},
    },
    Api, Client, Resource, ResourceExt,
};
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::Semaphore;
use tracing::{info, warn};
use xlattice_protocol::{Identity, MemberRecord};

use crate::{
    crd::{XLatticeCluster, XLatticeClusterStatus},
    desired, directory,
    error::{backoff, Error, Result},
    membership::{self, Orphan, OrphanClock},
    metrics::Metrics,
    mint::{self, Minted},
    names::*,
    restart,
    rotation::{self, Due, Tokens},
    status::{self, Facts},
};

/// How often a settled cluster is looked at again without any event.
const RESYNC: Duration = Duration::from_secs(300);

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Bounds RSA key generation across all clusters (about one permit per core).
    pub keygen: Arc<Semaphore>,
    orphans: Mutex<HashMap<String, OrphanClock>>,
    /// Public halves parsed from identity Secrets, by Secret uid, with the resourceVersion
    /// they were parsed at (a rotation updates a Secret in place).
    publics: Mutex<HashMap<String, (String, MemberRecord)>>,
    failures: Mutex<HashMap<String, u32>>,
}

// === impl Context ===

impl Context {
    pub fn new(client: Client, recorder: Recorder, metrics: Arc<Metrics>, keygen_permits: usize) -> Self {
        Self {
            client,
            recorder,
            metrics,
            keygen: Arc::new(Semaphore::new(keygen_permits.max(1))),
            orphans: Default::default(),
            publics: Default::default(),
            failures: Default::default(),
        }
    }

    async fn event(&self, cluster: &XLatticeCluster, type_: EventType, reason: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &cluster.object_ref(&())).await {
            warn!(%error, reason, "publishing an event failed");
        }
    }

    /// One Normal event per member reads well for a handful; a large batch gets one
    /// summary instead.
    async fn member_events(&self, cluster: &XLatticeCluster, reason: &str, per_member: Vec<String>, summary: String) {
        if per_member.len() <= 10 {
            for note in per_member {
                self.event(cluster, EventType::Normal, reason, note).await;
            }
        } else {
            self.event(cluster, EventType::Normal, reason, summary).await;
        }
    }

    /// The public record of an identity Secret, parsed once per Secret.
    fn record(&self, secret: &Secret, member: &str) -> Result<MemberRecord> {
        let uid = secret.uid().unwrap_or_default();
        let version = secret.resource_version().unwrap_or_default();
        if let Some((seen, record)) = self.publics.lock().expect("lock poisoned").get(&uid) {
            if *seen == version {
                return Ok(record.clone());
            }
        }
        let data = secret.data.clone().unwrap_or_default();
        let identity = Identity::from_files(|name| data.get(name).map(|b| b.0.as_slice())).map_err(|e| {
            Error::CorruptIdentity {
                secret: secret.name_any(),
                reason: e.to_string(),
            }
        })?;
        let record = MemberRecord::for_identity(member, &identity);
        self.publics
            .lock()
            .expect("lock poisoned")
            .insert(uid, (version, record.clone()));
        Ok(record)
    }
}

fn key(cluster: &XLatticeCluster) -> String {
    format!("{}/{}", cluster.namespace().unwrap_or_default(), cluster.name_any())
}

/// Entry point for the controller: wraps apply/cleanup in the finalizer.
pub async fn reconcile(cluster: Arc<XLatticeCluster>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let ns = cluster
        .namespace()
        .ok_or_else(|| Error::InvalidSpec("XLatticeCluster is namespaced".into()))?;
    let api: Api<XLatticeCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, cluster.clone(), |event| async {
        match event {
            Finalizer::Apply(cluster) => apply(&cluster, &ctx).await,
            Finalizer::Cleanup(cluster) => cleanup(&cluster, &ctx).await,
        }
    })
    .await;
    let result = match result {
        // Two cleanups raced (the deletion and a child's event); the first one finished.
        Err(kube::runtime::finalizer::Error::RemoveFinalizer(kube::Error::Api(s))) if s.code == 404 => {
            Ok(Action::await_change())
        }
        other => other.map_err(|e| Error::Finalizer(Box::new(e))),
    };
    ctx.metrics.observe(started.elapsed());
    if result.is_ok() {
        ctx.failures.lock().expect("lock poisoned").remove(&key(&cluster));
    }
    result
}

/// Requeue with a per-cluster exponential backoff.
pub fn error_policy(cluster: Arc<XLatticeCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failure(error.metric_label());
    let mut failures = ctx.failures.lock().expect("lock poisoned");
    let n = failures.entry(key(&cluster)).or_default();
    let wait = backoff(*n);
    *n = n.saturating_add(1);
    warn!(cluster = %key(&cluster), %error, reason = error.metric_label(), retry_in = ?wait, "reconcile failed");
    Action::requeue(wait)
}

async fn apply(cluster: &XLatticeCluster, ctx: &Context) -> Result<Action> {
    let (ns, name) = (cluster.namespace().unwrap_or_default(), cluster.name_any());
    let mut facts = Facts {
        generation: cluster.metadata.generation,
        ..Default::default()
    };
    let selector = Selector::try_from(cluster.spec.selector.clone())
        .map_err(|e| format!("spec.selector: {e}"))
        .and_then(|s| cluster.spec.key_sizes().map(|sizes| (s, sizes)));
    let (selector, sizes) = match selector {
        Ok(ok) => ok,
        Err(message) => {
            // The user must change the spec: no point retrying before that.
            facts.degraded = Some(("InvalidSpec".into(), message.clone()));
            write_status(cluster, ctx, &facts).await?;
            ctx.event(cluster, EventType::Warning, "Degraded", message).await;
            return Ok(Action::await_change());
        }
    };

    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let secrets_api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let pods = pods_api
        .list(&ListParams::default().labels(&selector.to_string()))
        .await?
        .items;
    let members = membership::members(&selector, &pods);
    let owned = owned_by(&name);
    let mut secrets = secrets_api.list(&ListParams::default().labels(&owned)).await?.items;

    // Mint what is missing. Failures do not stop the rest of the reconcile: the members
    // that have identities still get a directory.
    let mut first_error = None;
    let cluster_token = cluster.annotations().get(ROTATE_ANNOTATION).cloned();
    let tokens = |pod: &str| Tokens {
        cluster: cluster_token.clone(),
        pod: members
            .iter()
            .find(|p| p.name_any() == pod)
            .and_then(|p| p.annotations().get(ROTATE_ANNOTATION).cloned()),
    };
    let need = membership::need_identity(&members, &secrets);
    if !need.is_empty() {
        info!(cluster = %key(cluster), pods = need.len(), "minting identities");
        let taken = mint::taken_node_ids(&secrets);
        let need = need.into_iter().map(|pod| (pod.clone(), tokens(&pod))).collect();
        let results = mint::mint_all(&secrets_api, cluster, need, taken, sizes, ctx.keygen.clone()).await;
        let mut created = Vec::new();
        for (pod, result) in results {
            match result {
                Ok(Minted::Created(secret)) => {
                    ctx.metrics.minted.inc();
                    ctx.metrics.write("Secret");
                    let node_id = announced_node_id(&secret);
                    info!(cluster = %key(cluster), %pod, %node_id, "minted identity");
                    created.push((pod, node_id));
                    secrets.push(secret);
                }
                Ok(Minted::Found(secret)) => secrets.push(secret),
                Err(error) => {
                    warn!(cluster = %key(cluster), %pod, %error, "minting failed");
                    first_error.get_or_insert(error);
                }
            }
        }
        let notes = created
            .iter()
            .map(|(pod, node_id)| format!("minted identity {node_id} for pod {pod}"));
        let summary = format!("minted {} identities", created.len());
        ctx.member_events(cluster, "MintedIdentity", notes.collect(), summary)
            .await;
    }

    // Key rotation of members whose token changed or whose keys outlived the period.
    let mut requeue = RESYNC;
    let period = rotation::period(&cluster.spec);
    let now = k8s_openapi::jiff::Timestamp::now();
    let mut due = Vec::new();
    let mut rotation_error = None;
    for secret in &secrets {
        let Some(member) = desired::secret_member(secret) else {
            continue;
        };
        if !members.iter().any(|p| p.name_any() == member) {
            continue;
        }
        let tokens = tokens(member);
        match rotation::due(secret, &tokens, period, now) {
            Due::Now(reason) => due.push((member.to_string(), secret.clone(), tokens, reason)),
            Due::Later(left) => requeue = requeue.min(left + Duration::from_millis(100)),
            Due::Never => {}
        }
    }
    if !due.is_empty() {
        info!(cluster = %key(cluster), pods = due.len(), "rotating keys");
        let reasons: HashMap<String, rotation::Reason> = due
            .iter()
            .map(|(pod, _, _, reason)| (pod.clone(), reason.clone()))
            .collect();
        let due = due
            .into_iter()
            .map(|(pod, secret, tokens, _)| (pod, secret, tokens))
            .collect();
        let results = mint::rotate_all(&secrets_api, due, sizes.1, ctx.keygen.clone()).await;
        let mut rotated = Vec::new();
        for (pod, result) in results {
            match result {
                Ok(secret) => {
                    ctx.metrics.rotated.inc();
                    ctx.metrics.write("Secret");
                    let node_id = announced_node_id(&secret);
                    let reason = &reasons[&pod];
                    info!(cluster = %key(cluster), %pod, %node_id, %reason, "rotated keys");
                    rotated.push((pod, node_id, reason.clone()));
                    if let Some(slot) = secrets.iter_mut().find(|s| s.name_any() == secret.name_any()) {
                        *slot = secret;
                    }
                }
                Err(error) => {
                    // A conflict (the Secret changed since it was read) retries with backoff.
                    warn!(cluster = %key(cluster), %pod, %error, "rotation failed");
                    rotation_error.get_or_insert(error);
                }
            }
        }
        if !rotated.is_empty() {
            facts.last_rotation = Some(Time(now));
        }
        let notes = rotated
            .iter()
            .map(|(pod, node_id, reason)| format!("rotated the keys of pod {pod} (NodeID {node_id} kept): {reason}"));
        let summary = format!("rotated the keys of {} members (NodeIDs kept)", rotated.len());
        ctx.member_events(cluster, "RotatedKeys", notes.collect(), summary)
            .await;
    }

    // Identities whose pod is gone: deleted after the grace period, never before.
    let grace = Duration::from_secs(cluster.spec.member_grace_period_seconds.max(0) as u64);
    let verdicts = {
        let mut clocks = ctx.orphans.lock().expect("lock poisoned");
        clocks
            .entry(key(cluster))
            .or_default()
            .judge(&members, &secrets, grace, Instant::now())
    };
    for (secret_name, verdict) in verdicts {
        match verdict {
            Orphan::Wait(left) => requeue = requeue.min(left + Duration::from_millis(100)),
            Orphan::Delete => {
                let uid = secrets
                    .iter()
                    .find(|s| s.name_any() == secret_name)
                    .and_then(|s| s.uid());
                let params = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid,
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                match secrets_api.delete(&secret_name, &params).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
                ctx.metrics.deleted.inc();
                ctx.metrics.write("Secret");
                secrets.retain(|s| s.name_any() != secret_name);
                info!(cluster = %key(cluster), secret = %secret_name, "deleted identity of a departed member");
                ctx.event(
                    cluster,
                    EventType::Normal,
                    "DeletedIdentity",
                    format!("deleted {secret_name}: its pod left more than {}s ago", grace.as_secs()),
                )
                .await;
            }
        }
    }

    // The directory lists current members that have an identity.
    let mut records = Vec::new();
    for secret in &secrets {
        let Some(member) = desired::secret_member(secret) else {
            continue;
        };
        if members.iter().any(|p| p.name_any() == member) {
            match ctx.record(secret, member) {
                Ok(record) => records.push(record),
                Err(error) => {
                    facts.degraded = Some(("CorruptIdentity".into(), error.to_string()));
                }
            }
        }
    }
    facts.members = members.len();
    facts.minted = records.len().min(members.len());
    let dir = desired::directory(cluster, records, &members);
    let published = directory::publish(&ctx.client, &ctx.metrics, cluster, &dir).await?;
    if let Some(message) = published.too_large {
        // Retrying would not help: say so in status, and in an Event once, when the
        // cluster becomes degraded for this reason.
        let already = cluster
            .status
            .iter()
            .flat_map(|s| &s.conditions)
            .any(|c| c.type_ == crate::status::DEGRADED && c.status == "True" && c.reason == "DirectoryTooLarge");
        if !already {
            ctx.event(cluster, EventType::Warning, "Degraded", message.clone())
                .await;
        }
        facts.degraded = Some(("DirectoryTooLarge".into(), message));
    }
    facts.directory = published.config_maps;
    ensure(
        &ctx.client,
        &ns,
        &desired::network_policy(cluster),
        desired::network_policy_matches,
        ctx,
    )
    .await?;
    facts.network_policy_ready = true;
    for service in desired::services(cluster) {
        ensure(&ctx.client, &ns, &service, desired::service_matches, ctx).await?;
    }
    facts.pods_without_sidecar = membership::without_sidecar(&members);
    if cluster.spec.restart_workloads && !facts.pods_without_sidecar.is_empty() {
        let stale: Vec<&Pod> = members
            .iter()
            .copied()
            .filter(|p| facts.pods_without_sidecar.contains(&p.name_any()))
            .collect();
        let uid = cluster.uid().unwrap_or_default();
        if let Some(workload) = restart::restart_one(&ctx.client, &ns, &uid, &stale, FIELD_MANAGER).await? {
            ctx.metrics.write("WorkloadRestart");
            info!(cluster = %key(cluster), ?workload, "restarted a workload so its pods gain the sidecar");
            ctx.event(
                cluster,
                EventType::Normal,
                "RestartedWorkload",
                format!("restarted {workload:?}: its pods lack the sidecar"),
            )
            .await;
        }
        // Look again soon: the next workload waits for this one to finish rolling.
        requeue = requeue.min(Duration::from_secs(5));
    }

    if let Some(error) = &first_error {
        facts.degraded = Some(("MintingFailed".into(), error.to_string()));
    } else if let Some(error) = &rotation_error {
        // A conflict is transient (retried at once with backoff): not worth a Degraded.
        if !matches!(error, Error::Kube(kube::Error::Api(s)) if s.code == 409) {
            facts.degraded = Some(("RotationFailed".into(), error.to_string()));
        }
    }
    write_status(cluster, ctx, &facts).await?;
    match first_error.or(rotation_error) {
        Some(error) => Err(error),
        None => Ok(Action::requeue(requeue)),
    }
}

/// Server-side applies `desired` when the observed object differs in what we set.
async fn ensure<K>(client: &Client, ns: &str, desired: &K, matches: fn(&K, &K) -> bool, ctx: &Context) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
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

async fn write_status(cluster: &XLatticeCluster, ctx: &Context, facts: &Facts) -> Result<()> {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let desired = status::desired(cluster.status.as_ref(), facts, now);
    if cluster.status.as_ref() == Some(&desired) {
        return Ok(());
    }
    let was_degraded = degraded_reason(cluster.status.as_ref());
    let api: Api<XLatticeCluster> = Api::namespaced(ctx.client.clone(), &cluster.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": XLatticeCluster::api_version(&()),
        "kind": XLatticeCluster::kind(&()),
        "status": desired,
    });
    api.patch_status(
        &cluster.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    ctx.metrics.write("XLatticeClusterStatus");
    if let Some((reason, message)) = &facts.degraded {
        if was_degraded.as_deref() != Some(reason.as_str()) {
            ctx.event(cluster, EventType::Warning, "Degraded", format!("{reason}: {message}"))
                .await;
        }
    }
    Ok(())
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
async fn cleanup(cluster: &XLatticeCluster, ctx: &Context) -> Result<Action> {
    let (ns, name) = (cluster.namespace().unwrap_or_default(), cluster.name_any());
    let client = &ctx.client;
    let owned = ListParams::default().labels(&owned_by(&name));
    delete_owned(&Api::<Secret>::namespaced(client.clone(), &ns), &owned, ctx).await?;
    delete_owned(&Api::<ConfigMap>::namespaced(client.clone(), &ns), &owned, ctx).await?;
    delete_owned(&Api::<NetworkPolicy>::namespaced(client.clone(), &ns), &owned, ctx).await?;
    delete_owned(&Api::<Service>::namespaced(client.clone(), &ns), &owned, ctx).await?;
    ctx.orphans.lock().expect("lock poisoned").remove(&key(cluster));
    info!(cluster = %key(cluster), "cleaned up");
    ctx.event(
        cluster,
        EventType::Normal,
        "CleanedUp",
        "deleted identities, directory, NetworkPolicy and Services".into(),
    )
    .await;
    Ok(Action::await_change())
}

/// Deletes what carries our labels, so a same-named object of someone else's survives.
async fn delete_owned<K>(api: &Api<K>, owned: &ListParams, ctx: &Context) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    for object in api.list(owned).await?.items {
        match api.delete(&object.name_any(), &DeleteParams::default()).await {
            Ok(_) => ctx.metrics.write(&K::kind(&())),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

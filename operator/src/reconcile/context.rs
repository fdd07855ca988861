//! What every reconcile shares: the client, the event recorder, the metrics, the key
//! generation permits, and the memory a controller keeps between reconciles (departure
//! clocks, parsed public halves, failure counts).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use kube::{
    api::DynamicObject,
    runtime::events::{Event, EventType, Recorder},
    Client, Resource, ResourceExt,
};
use tokio::sync::Semaphore;
use tracing::warn;
use xlattice_protocol::{Identity, MemberRecord};

use crate::{
    access::IdentityAccess,
    crd::{self, XLatticeCluster, XLatticeClusterStatus},
    error::{Error, Result},
    membership::OrphanClock,
    metrics::Metrics,
};

/// Up to this many members, each gets an Event of its own.
const MEMBER_EVENTS: usize = 10;
/// The API server refuses an Event note longer than 1 KiB.
const NOTE_BYTES: usize = 1024;

/// An Event note about one member.
pub struct MemberNote {
    pub member: String,
    /// The member's pod, when it exists (a departed member has none).
    pub pod: Option<ObjectReference>,
    pub note: String,
}

/// `text` cut to at most `limit` bytes, at a character boundary, with "…" when cut.
pub fn truncated(mut text: String, limit: usize) -> String {
    if text.len() <= limit {
        return text;
    }
    let mut end = limit - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push('…');
    text
}

/// `summary: a, b, c` with as many names as fit in `limit` bytes, then `and N more`.
pub fn naming(summary: &str, names: &[&str], limit: usize) -> String {
    let mut out = format!("{summary}: ");
    for (i, name) in names.iter().enumerate() {
        let more = format!(" and {} more", names.len() - i);
        let sep = if i == 0 { "" } else { ", " };
        if out.len() + sep.len() + name.len() + more.len() > limit {
            return out.trim_end().to_string() + &more;
        }
        out.push_str(sep);
        out.push_str(name);
    }
    out
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Bounds RSA key generation across all clusters (about one permit per core).
    pub keygen: Arc<Semaphore>,
    pub(super) orphans: Mutex<HashMap<String, OrphanClock>>,
    /// Public halves parsed from identity Secrets, by Secret uid, with the resourceVersion
    /// they were parsed at (a rotation updates a Secret in place).
    publics: Mutex<HashMap<String, (String, MemberRecord)>>,
    pub(super) failures: Mutex<HashMap<String, u32>>,
    /// Stamp the directory version on member pods (reconcile/refresh.rs); off only to
    /// measure what the kubelet's own sync period gives (hack/node-bench.sh).
    pub refresh_member_pods: bool,
    /// Honour spec.restartWorkloads; off when the installation does not grant the operator
    /// the workload permissions (chart value restartWorkloads.enabled=false).
    pub restart_workloads: bool,
    /// Where identity Secrets may be touched (the operator binds that role itself when it
    /// serves every namespace).
    pub access: IdentityAccess,
}

/// `namespace/name`: how logs, clocks and failure counts name a cluster.
pub fn key(cluster: &impl ResourceExt) -> String {
    format!("{}/{}", cluster.namespace().unwrap_or_default(), cluster.name_any())
}

/// A cluster as its status and Events address it, whether or not its spec could be read.
pub struct Subject {
    pub ns: String,
    pub name: String,
    pub generation: Option<i64>,
    pub reference: ObjectReference,
    /// The status as stored.
    pub status: Option<XLatticeClusterStatus>,
}

// === impl Subject ===

impl Subject {
    pub fn of(cluster: &XLatticeCluster) -> Self {
        Self {
            ns: cluster.namespace().unwrap_or_default(),
            name: cluster.name_any(),
            generation: cluster.metadata.generation,
            reference: cluster.object_ref(&()),
            status: cluster.status.clone(),
        }
    }

    pub fn of_object(object: &DynamicObject) -> Self {
        Self {
            ns: object.namespace().unwrap_or_default(),
            name: object.name_any(),
            generation: object.metadata.generation,
            reference: object.object_ref(&crd::api_resource()),
            status: crd::decode_status(object),
        }
    }
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
            refresh_member_pods: true,
            restart_workloads: true,
            access: IdentityAccess::granted(),
        }
    }

    pub(super) async fn event(&self, cluster: &XLatticeCluster, type_: EventType, reason: &str, note: String) {
        self.publish(&cluster.object_ref(&()), None, type_, reason, note).await
    }

    pub(super) async fn event_on(&self, regarding: &ObjectReference, type_: EventType, reason: &str, note: String) {
        self.publish(regarding, None, type_, reason, note).await
    }

    async fn publish(
        &self,
        regarding: &ObjectReference,
        related: Option<ObjectReference>,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            // The API server refuses the whole Event for a longer note.
            note: Some(truncated(note, NOTE_BYTES)),
            action: reason.into(),
            secondary: related,
        };
        if let Err(error) = self.recorder.publish(&event, regarding).await {
            warn!(%error, reason, "publishing an event failed");
        }
    }

    /// Normal Events about members. A handful get one Event each, regarding the member's
    /// pod and related to the cluster: the recorder folds Events with the same regarding
    /// object and reason into one series that keeps only the first note, so per-member notes
    /// on the cluster would be lost. A large batch gets one summary on the cluster that
    /// names its members (as many as an Event's note holds).
    pub(super) async fn member_events(
        &self,
        cluster: &XLatticeCluster,
        reason: &str,
        notes: Vec<MemberNote>,
        summary: String,
    ) {
        let cluster_ref = cluster.object_ref(&());
        if notes.len() <= MEMBER_EVENTS {
            for note in notes {
                let regarding = note.pod.unwrap_or_else(|| cluster_ref.clone());
                self.publish(
                    &regarding,
                    Some(cluster_ref.clone()),
                    EventType::Normal,
                    reason,
                    note.note,
                )
                .await;
            }
            return;
        }
        let names: Vec<&str> = notes.iter().map(|n| n.member.as_str()).collect();
        let note = naming(&summary, &names, NOTE_BYTES);
        self.publish(&cluster_ref, None, EventType::Normal, reason, note).await;
    }

    /// The public record of an identity Secret, parsed once per Secret.
    pub(super) fn record(&self, secret: &Secret, member: &str) -> Result<MemberRecord> {
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

#[cfg(test)]
mod tests {
    use super::{naming, truncated};

    #[test]
    fn a_note_is_cut_to_what_the_api_server_takes() {
        assert_eq!(truncated("short".into(), 1024), "short");
        let long = "é".repeat(600); // 1200 bytes, two per character
        let cut = truncated(long, 1024);
        assert!(cut.len() <= 1024 && cut.ends_with('…'), "{}", cut.len());
        assert!(cut.starts_with("éé"));
    }

    #[test]
    fn a_summary_names_what_fits() {
        assert_eq!(
            naming("minted 3 identities", &["a", "b", "c"], 1024),
            "minted 3 identities: a, b, c"
        );
        let names: Vec<String> = (0..500).map(|i| format!("store-{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let note = naming("minted 500 identities", &names, 1024);
        assert!(note.len() <= 1024, "{}", note.len());
        assert!(note.starts_with("minted 500 identities: store-0, store-1,"), "{note}");
        let shown = note.matches("store-").count();
        assert!(note.ends_with(&format!(" and {} more", 500 - shown)), "{note}");
    }
}

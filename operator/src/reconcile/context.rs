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
    crd::{self, XLatticeCluster, XLatticeClusterStatus},
    error::{Error, Result},
    membership::OrphanClock,
    metrics::Metrics,
};

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
        }
    }

    pub(super) async fn event(&self, cluster: &XLatticeCluster, type_: EventType, reason: &str, note: String) {
        self.event_on(&cluster.object_ref(&()), type_, reason, note).await
    }

    pub(super) async fn event_on(&self, regarding: &ObjectReference, type_: EventType, reason: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, regarding).await {
            warn!(%error, reason, "publishing an event failed");
        }
    }

    /// One Normal event per member reads well for a handful; a large batch gets one
    /// summary instead.
    pub(super) async fn member_events(
        &self,
        cluster: &XLatticeCluster,
        reason: &str,
        per_member: Vec<String>,
        summary: String,
    ) {
        if per_member.len() <= 10 {
            for note in per_member {
                self.event(cluster, EventType::Normal, reason, note).await;
            }
        } else {
            self.event(cluster, EventType::Normal, reason, summary).await;
        }
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

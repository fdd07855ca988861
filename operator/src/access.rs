//! Where the operator may read and write identity Secrets. Serving every namespace, its
//! ClusterRole grants no Secret at all: it binds the `xlattice-operator-identities` role
//! in each namespace that holds an XLatticeCluster, by a RoleBinding owned by those
//! clusters (the garbage collector removes it with the last of them). The chart's admission
//! policy allows that binding only where a cluster exists, only of that role and only to
//! the operator itself, so its token cannot read kube-system's Secrets or any namespace's
//! without a cluster. With watchNamespaces the chart binds the role in those namespaces.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
    time::{Duration, Instant},
};

use futures::{channel::mpsc, StreamExt};
use k8s_openapi::api::{
    authentication::v1::SelfSubjectReview,
    authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec},
    core::v1::Secret,
    rbac::v1::{RoleBinding, Subject},
};
use kube::{
    api::{DynamicObject, Patch, PatchParams, PostParams},
    runtime::{watcher, WatchStreamExt},
    Api, Client, ResourceExt,
};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::{
    desired,
    error::{Error, Result},
    names::{FIELD_MANAGER, MANAGED_BY, MANAGED_BY_LABEL},
};

/// What the identity Secrets of the namespaces the operator bound itself in send the
/// controller (cluster-wide only).
pub type SecretEvents = mpsc::UnboundedReceiver<SecretEvent>;

/// How long a new binding may take to reach the API server's authorizer.
const GRANT_DEADLINE: Duration = Duration::from_secs(10);

pub struct IdentityAccess {
    /// The operator's ServiceAccount, when it binds the role itself; None when the chart
    /// bound it (watchNamespaces) or the operator runs as a user (development).
    subject: Option<Subject>,
    /// Clusters (namespace, uid) whose ownership of the binding is written.
    owners: Mutex<HashSet<(String, String)>>,
    /// A watch of identity Secrets per namespace bound, feeding the controller.
    watches: Mutex<HashMap<String, JoinHandle<()>>>,
    events: Mutex<mpsc::UnboundedSender<SecretEvent>>,
}

type SecretEvent = std::result::Result<Secret, watcher::Error>;

// === impl IdentityAccess ===

impl IdentityAccess {
    /// The chart bound the role (or nothing needs binding): nothing to do per namespace.
    pub fn granted() -> Self {
        Self::with_subject(None)
    }

    /// Cluster-wide: the operator binds the role itself, as the ServiceAccount it runs as
    /// (asked of the API server). Running as anything else (a developer's kubeconfig), it
    /// binds nothing and relies on what that user may do.
    pub async fn discover(client: &Client) -> Result<Self> {
        let review = Api::<SelfSubjectReview>::all(client.clone())
            .create(&PostParams::default(), &SelfSubjectReview::default())
            .await?;
        let user = review
            .status
            .and_then(|s| s.user_info)
            .and_then(|u| u.username)
            .unwrap_or_default();
        let subject = service_account(&user);
        match &subject {
            Some(s) => {
                info!(service_account = %user, namespace = ?s.namespace, "binds the identities role in each namespace that holds a cluster")
            }
            None => info!(%user, "not a ServiceAccount: binds nothing, relies on this user's own permissions"),
        }
        Ok(Self::with_subject(subject))
    }

    fn with_subject(subject: Option<Subject>) -> Self {
        IdentityAccess {
            subject,
            owners: Mutex::default(),
            watches: Mutex::default(),
            events: Mutex::new(mpsc::unbounded().0),
        }
    }

    /// Whether the operator binds the role itself, so that identity Secrets can only be
    /// watched per namespace, through `subscribe`.
    pub fn binds_itself(&self) -> bool {
        self.subject.is_some()
    }

    /// The identity Secrets of every namespace bound from now on, for a controller that
    /// starts: the watches start again with the reconciles that follow.
    pub fn subscribe(&self) -> SecretEvents {
        let (sender, receiver) = mpsc::unbounded();
        *self.events.lock().expect("lock poisoned") = sender;
        for (_, watch) in self.watches.lock().expect("lock poisoned").drain() {
            watch.abort();
        }
        self.owners.lock().expect("lock poisoned").clear();
        receiver
    }

    /// Makes sure the operator may touch identity Secrets in `cluster`'s namespace: the
    /// binding owned by this cluster too, effective, and the namespace's Secrets watched.
    /// Works on clusters whose spec cannot be read (they clean up like any other).
    pub async fn ensure(&self, client: &Client, cluster: &DynamicObject) -> Result<()> {
        let Some(subject) = &self.subject else { return Ok(()) };
        let (ns, uid) = (
            cluster.namespace().unwrap_or_default(),
            cluster.uid().unwrap_or_default(),
        );
        if self
            .owners
            .lock()
            .expect("lock poisoned")
            .contains(&(ns.clone(), uid.clone()))
        {
            return Ok(());
        }
        let binding = desired::identities_binding(cluster, subject);
        let name = binding.name_any();
        // One field manager per cluster: each owns its ownerReference (a list keyed by uid).
        let params = PatchParams::apply(&format!("{FIELD_MANAGER}/{}", cluster.name_any())).force();
        Api::<RoleBinding>::namespaced(client.clone(), &ns)
            .patch(&name, &params, &Patch::Apply(&binding))
            .await?;
        wait_until_granted(client, &ns).await?;
        self.owners.lock().expect("lock poisoned").insert((ns.clone(), uid));
        self.watch(client, &ns);
        Ok(())
    }

    /// `cluster` is gone from its namespace; with `others_left` false the namespace holds
    /// no cluster any more: its watch stops (the binding goes with its last owner).
    pub fn release(&self, cluster: &DynamicObject, others_left: bool) {
        let ns = cluster.namespace().unwrap_or_default();
        let mut owners = self.owners.lock().expect("lock poisoned");
        owners.remove(&(ns.clone(), cluster.uid().unwrap_or_default()));
        if !others_left {
            owners.retain(|(n, _)| n != &ns);
            if let Some(watch) = self.watches.lock().expect("lock poisoned").remove(&ns) {
                watch.abort();
            }
        }
    }

    /// The namespace's identity Secrets (those the operator labels), into the controller.
    fn watch(&self, client: &Client, ns: &str) {
        let mut watches = self.watches.lock().expect("lock poisoned");
        if watches.contains_key(ns) {
            return;
        }
        let api = Api::<Secret>::namespaced(client.clone(), ns);
        let config = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
        let events = self.events.lock().expect("lock poisoned").clone();
        let task = tokio::spawn(async move {
            let mut secrets = std::pin::pin!(watcher(api, config).default_backoff().touched_objects());
            while let Some(event) = secrets.next().await {
                if events.unbounded_send(event).is_err() {
                    return;
                }
            }
        });
        watches.insert(ns.to_string(), task);
    }
}

/// `system:serviceaccount:<namespace>:<name>` as an RBAC subject.
fn service_account(user: &str) -> Option<Subject> {
    let rest = user.strip_prefix("system:serviceaccount:")?;
    let (namespace, name) = rest.split_once(':')?;
    Some(Subject {
        kind: "ServiceAccount".into(),
        name: name.into(),
        namespace: Some(namespace.into()),
        api_group: None,
    })
}

/// A new RoleBinding takes a moment to reach the authorizer: asks until listing Secrets
/// in `ns` is allowed.
async fn wait_until_granted(client: &Client, ns: &str) -> Result<()> {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(ns.into()),
                verb: Some("list".into()),
                resource: Some("secrets".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api = Api::<SelfSubjectAccessReview>::all(client.clone());
    let deadline = Instant::now() + GRANT_DEADLINE;
    loop {
        let answer = api.create(&PostParams::default(), &review).await?;
        if answer.status.is_some_and(|s| s.allowed) {
            return Ok(());
        }
        if Instant::now() > deadline {
            warn!(namespace = %ns, "the identities binding is written but not in force");
            return Err(Error::NotGranted(ns.to_string()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_service_account_binds_itself() {
        let s = service_account("system:serviceaccount:xlattice-system:xlattice-operator").unwrap();
        assert_eq!(
            (s.kind.as_str(), s.name.as_str()),
            ("ServiceAccount", "xlattice-operator")
        );
        assert_eq!(s.namespace.as_deref(), Some("xlattice-system"));
        for user in [
            "kubernetes-admin",
            "system:serviceaccount:only-namespace",
            "system:node:n1",
        ] {
            assert!(service_account(user).is_none(), "{user}");
        }
    }
}

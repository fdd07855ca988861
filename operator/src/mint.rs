//! Minting and rotating identities: RSA key generation off the async runtime, in parallel,
//! bounded. A Secret is created with create-only semantics, so an identity that exists is
//! never replaced; a rotation replaces its keys (same NodeID) with an update conditional on
//! the resourceVersion it read, so a concurrent change is a conflict, never a lost identity.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use futures::{stream, Stream, StreamExt};
use k8s_openapi::{api::core::v1::Secret, jiff::Timestamp};
use kube::{api::PostParams, Api, ResourceExt};
use tokio::sync::Semaphore;
use xlattice_protocol::{Identity, KeyError, NodeId, NodeIdBits, RsaBits};

use crate::{
    crd::XLatticeCluster,
    desired::{identity_secret, rotated_secret},
    error::{Error, Result},
    names::{identity_secret_name, label_value, CLUSTER_LABEL, MANAGED_BY, MANAGED_BY_LABEL, NODE_ID_ANNOTATION},
    rotation::{self, Tokens},
};

/// NodeIDs already taken in a cluster, from the Secrets' annotations.
pub fn taken_node_ids(secrets: &[Secret]) -> HashSet<NodeId> {
    secrets
        .iter()
        .filter_map(|s| s.annotations().get(NODE_ID_ANNOTATION)?.parse().ok())
        .collect()
}

/// How one pod's identity came to be.
pub enum Minted {
    /// We created it.
    Created(Secret),
    /// Someone else (another replica, a previous attempt whose answer was lost) got there
    /// first: theirs stands.
    Found(Secret),
}

/// Runs `generate` on the blocking pool once a permit of `cpu` is free.
async fn keygen<T: Send + 'static>(
    cpu: &Arc<Semaphore>,
    pod: &str,
    generate: impl FnOnce() -> Result<T, KeyError> + Send + 'static,
) -> Result<T> {
    let keygen_error = |reason: String| Error::KeyGeneration {
        pod: pod.to_string(),
        reason,
    };
    let _permit = cpu
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| keygen_error(e.to_string()))?;
    tokio::task::spawn_blocking(generate)
        .await
        .map_err(|e| keygen_error(e.to_string()))?
        .map_err(|e| keygen_error(e.to_string()))
}

/// Mints identities for `pods` (each with the rotation tokens present now, recorded on its
/// Secret so a new identity is not rotated for a token older than itself). Generation is
/// bounded by `cpu` (shared by all reconciles); creation starts as soon as a key pair is
/// ready, so the first Secrets appear early. Each result is yielded as it happens, so the
/// caller logs and counts every mint at once; dropping the stream cancels what is left.
pub fn mint_all<'a>(
    api: &'a Api<Secret>,
    cluster: &'a XLatticeCluster,
    pods: Vec<(String, Tokens)>,
    taken: HashSet<NodeId>,
    sizes: (NodeIdBits, RsaBits),
    cpu: Arc<Semaphore>,
) -> impl Stream<Item = (String, Result<Minted>)> + 'a {
    let taken = Arc::new(Mutex::new(taken));
    let parallel = cpu.available_permits().max(1) * 2;
    stream::iter(pods)
        .map(move |(pod, tokens)| {
            let (taken, cpu) = (taken.clone(), cpu.clone());
            async move {
                let result = mint_one(api, cluster, &pod, &tokens, taken, sizes, cpu).await;
                (pod, result)
            }
        })
        .buffer_unordered(parallel)
}

async fn mint_one(
    api: &Api<Secret>,
    cluster: &XLatticeCluster,
    pod: &str,
    tokens: &Tokens,
    taken: Arc<Mutex<HashSet<NodeId>>>,
    (node_id_bits, rsa_bits): (NodeIdBits, RsaBits),
    cpu: Arc<Semaphore>,
) -> Result<Minted> {
    let mut identity = keygen(&cpu, pod, move || Identity::generate(node_id_bits, rsa_bits)).await?;
    // A 160-bit collision will not happen in practice; checking costs nothing and the
    // uniqueness of a NodeID within a cluster is a promise.
    while !taken.lock().expect("lock poisoned").insert(identity.node_id) {
        identity.node_id = NodeId::random(node_id_bits);
    }
    let secret = identity_secret(cluster, pod, &identity, rotation::stamp(tokens, Timestamp::now()));
    match api.create(&PostParams::default(), &secret).await {
        Ok(created) => Ok(Minted::Created(created)),
        Err(e) if crate::error::is_conflict(&e) => {
            let theirs = api.get(&identity_secret_name(pod)).await?;
            // Only an identity of this very cluster stands; a Secret of that name made by
            // anyone else (another cluster, a user) is never published as this member's.
            let ours = theirs.labels().get(CLUSTER_LABEL) == Some(&label_value(&cluster.name_any()))
                && theirs.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY);
            if !ours {
                let owner = match theirs.labels().get(CLUSTER_LABEL) {
                    Some(other) => format!("it belongs to XLatticeCluster {other}"),
                    None => "it was not made by the operator".into(),
                };
                return Err(Error::NameTaken {
                    secret: theirs.name_any(),
                    owner,
                });
            }
            Ok(Minted::Found(theirs))
        }
        Err(e) => Err(e.into()),
    }
}

/// Rotates the keys of each (pod, observed Secret, tokens): same NodeID, new keys, the
/// Secret replaced only if unchanged since it was read (409 otherwise: the reconcile fails
/// and retries with what is then current). Returns the updated Secrets.
pub async fn rotate_all(
    api: &Api<Secret>,
    due: Vec<(String, Secret, Tokens)>,
    rsa_bits: RsaBits,
    cpu: Arc<Semaphore>,
) -> Vec<(String, Result<Secret>)> {
    let parallel = cpu.available_permits().max(1) * 2;
    stream::iter(due)
        .map(|(pod, secret, tokens)| {
            let cpu = cpu.clone();
            async move {
                let result = rotate_one(api, &pod, &secret, &tokens, rsa_bits, cpu).await;
                (pod, result)
            }
        })
        .buffer_unordered(parallel)
        .collect()
        .await
}

async fn rotate_one(
    api: &Api<Secret>,
    pod: &str,
    observed: &Secret,
    tokens: &Tokens,
    rsa_bits: RsaBits,
    cpu: Arc<Semaphore>,
) -> Result<Secret> {
    let corrupt = |reason: String| Error::CorruptIdentity {
        secret: observed.name_any(),
        reason,
    };
    let data = observed.data.clone().unwrap_or_default();
    let current =
        Identity::from_files(|name| data.get(name).map(|b| b.0.as_slice())).map_err(|e| corrupt(e.to_string()))?;
    let node_id = current.node_id;
    if observed.annotations().get(NODE_ID_ANNOTATION) != Some(&node_id.to_string()) {
        return Err(corrupt("the node-id annotation differs from the node-id key".into()));
    }
    let rotated = keygen(&cpu, pod, move || current.rotated(rsa_bits)).await?;
    // The promise of a rotation: the member keeps its NodeID.
    assert_eq!(rotated.node_id, node_id, "a rotation changed the NodeID");
    let secret = rotated_secret(observed, &rotated, rotation::stamp(tokens, Timestamp::now()));
    // PUT with the observed resourceVersion: optimistic concurrency.
    Ok(api
        .replace(&observed.name_any(), &PostParams::default(), &secret)
        .await?)
}

//! Minting identities: RSA key generation off the async runtime, in parallel, bounded; each
//! Secret created with create-only semantics, so an identity that exists is never replaced.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use futures::{stream, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::{api::PostParams, Api, ResourceExt};
use tokio::sync::Semaphore;
use xlattice_protocol::{Identity, NodeId, NodeIdBits, RsaBits};

use crate::{
    crd::XLatticeCluster,
    desired::identity_secret,
    error::{Error, Result},
    names::{identity_secret_name, NODE_ID_ANNOTATION},
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

/// Mints identities for `pods`. Generation is bounded by `cpu` (shared by all reconciles);
/// creation starts as soon as a key pair is ready, so the first Secrets appear early.
pub async fn mint_all(
    api: &Api<Secret>,
    cluster: &XLatticeCluster,
    pods: Vec<String>,
    taken: HashSet<NodeId>,
    sizes: (NodeIdBits, RsaBits),
    cpu: Arc<Semaphore>,
) -> Vec<(String, Result<Minted>)> {
    let taken = Arc::new(Mutex::new(taken));
    let parallel = cpu.available_permits().max(1) * 2;
    stream::iter(pods)
        .map(|pod| {
            let (taken, cpu) = (taken.clone(), cpu.clone());
            async move {
                let result = mint_one(api, cluster, &pod, taken, sizes, cpu).await;
                (pod, result)
            }
        })
        .buffer_unordered(parallel)
        .collect()
        .await
}

async fn mint_one(
    api: &Api<Secret>,
    cluster: &XLatticeCluster,
    pod: &str,
    taken: Arc<Mutex<HashSet<NodeId>>>,
    (node_id_bits, rsa_bits): (NodeIdBits, RsaBits),
    cpu: Arc<Semaphore>,
) -> Result<Minted> {
    let keygen_error = |reason: String| Error::KeyGeneration {
        pod: pod.to_string(),
        reason,
    };
    let mut identity = {
        let _permit = cpu.acquire_owned().await.map_err(|e| keygen_error(e.to_string()))?;
        tokio::task::spawn_blocking(move || Identity::generate(node_id_bits, rsa_bits))
            .await
            .map_err(|e| keygen_error(e.to_string()))?
            .map_err(|e| keygen_error(e.to_string()))?
    };
    // A 160-bit collision will not happen in practice; checking costs nothing and the
    // uniqueness of a NodeID within a cluster is a promise.
    while !taken.lock().expect("lock poisoned").insert(identity.node_id) {
        identity.node_id = NodeId::random(node_id_bits);
    }
    let secret = identity_secret(cluster, pod, &identity);
    match api.create(&PostParams::default(), &secret).await {
        Ok(created) => Ok(Minted::Created(created)),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let theirs = api.get(&identity_secret_name(pod)).await?;
            Ok(Minted::Found(theirs))
        }
        Err(e) => Err(e.into()),
    }
}

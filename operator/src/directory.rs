//! Publishing the member directory: its shards applied as ConfigMaps, a shard that lost
//! its last member deleted, a shard too large for one ConfigMap reported instead of sent.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    api::{DeleteParams, ListParams, Patch, PatchParams},
    Api, Client, ResourceExt,
};
use tracing::info;
use xlattice_protocol::MemberDirectory;

use crate::{
    crd::XLatticeCluster,
    desired,
    error::{deleted_or_gone, Result},
    metrics::Metrics,
    names::*,
};

#[derive(Debug, Default)]
pub struct Published {
    /// The shard ConfigMaps that exist now, in shard order.
    pub config_maps: Vec<String>,
    /// Why a shard could not be written, if one could not.
    pub too_large: Option<String>,
}

/// Writes only the shards that differ. New and changed shards are written before empty
/// ones are deleted; as members never change shards, no member is ever absent from all.
pub async fn publish(
    client: &Client,
    metrics: &Metrics,
    cluster: &XLatticeCluster,
    dir: &MemberDirectory,
) -> Result<Published> {
    let (ns, name) = (cluster.namespace().unwrap_or_default(), cluster.name_any());
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let owned = ListParams::default().labels(&owned_by(&name));
    let observed: HashMap<String, ConfigMap> = api
        .list(&owned)
        .await?
        .items
        .into_iter()
        .map(|cm| (cm.name_any(), cm))
        .collect();

    let mut published = Published::default();
    for shard in desired::directory_config_maps(cluster, dir) {
        let shard_name = shard.name_any();
        if let Some(reason) = desired::directory_too_large(&shard) {
            // The API server would refuse it: the last version written stays in force.
            if observed.contains_key(&shard_name) {
                published.config_maps.push(shard_name);
            }
            published.too_large.get_or_insert(reason);
            continue;
        }
        if !observed
            .get(&shard_name)
            .is_some_and(|o| desired::config_map_matches(&shard, o))
        {
            api.patch(
                &shard_name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&shard),
            )
            .await?;
            metrics.write("ConfigMap");
            info!(configmap = %shard_name, namespace = %ns, "directory shard applied");
        }
        published.config_maps.push(shard_name);
    }

    let prefix = format!("{name}-directory");
    for stale in observed.keys().filter(|n| n.starts_with(&prefix)) {
        if published.config_maps.contains(stale) {
            continue;
        }
        let deleted = api.delete(stale, &DeleteParams::default()).await;
        if deleted.is_ok() {
            metrics.write("ConfigMap");
            info!(configmap = %stale, namespace = %ns, "empty directory shard deleted");
        }
        deleted_or_gone(deleted)?;
    }
    Ok(published)
}

/// The directory of cluster `name` as published: every shard, merged. For clients
/// outside the cluster (`xlattice-operator directory`) and for tests.
/// The arguments of `xlattice-operator directory` and `kubectl xlattice directory`.
#[derive(clap::Args)]
pub struct PrintArgs {
    /// The XLatticeCluster.
    pub cluster: String,
    /// Its namespace; the kubeconfig's by default.
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// JSON instead of YAML.
    #[arg(long)]
    pub json: bool,
}

/// The published directory `args` names, as the text either command prints.
pub async fn printed(client: &Client, args: &PrintArgs) -> Result<String> {
    let namespace = args.namespace.as_deref().unwrap_or(client.default_namespace());
    let dir = fetch_published(client, namespace, &args.cluster).await?;
    Ok(if args.json { dir.to_json() + "\n" } else { dir.to_yaml() })
}

/// What `fetch` returns, refused when no member is published yet: for commands that print
/// the directory or dial a member (`xlattice-operator directory`, `kubectl xlattice`).
pub async fn fetch_published(client: &Client, namespace: &str, name: &str) -> Result<MemberDirectory> {
    let dir = fetch(client, namespace, name).await?;
    if dir.members.is_empty() {
        return Err(crate::Error::Directory(format!(
            "no directory published for XLatticeCluster {namespace}/{name} (yet)"
        )));
    }
    Ok(dir)
}

pub async fn fetch(client: &Client, namespace: &str, name: &str) -> Result<MemberDirectory> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let owned = ListParams::default().labels(&owned_by(name));
    let prefix = format!("{name}-directory-");
    let mut parts = Vec::new();
    for cm in api.list(&owned).await?.items {
        let Some(yaml) = cm.data.as_ref().and_then(|d| d.get(DIRECTORY_KEY)) else {
            continue;
        };
        if cm.name_any().starts_with(&prefix) {
            let part = MemberDirectory::from_slice(yaml.as_bytes())
                .map_err(|e| crate::Error::Directory(format!("ConfigMap {}: {e}", cm.name_any())))?;
            parts.push(part);
        }
    }
    MemberDirectory::merge(parts).map_err(|e| crate::Error::Directory(e.to_string()))
}

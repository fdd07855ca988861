//! Names, labels and annotations: the contract between the operator, the webhook, the
//! sidecar and the user. Changing any of these strands existing objects.

use aws_lc_rs::digest;

pub const GROUP: &str = "xlattice.io";
pub const FIELD_MANAGER: &str = "xlattice-operator";
pub const FINALIZER: &str = "xlattice.io/cleanup";

pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "xlattice-operator";
pub const CLUSTER_LABEL: &str = "xlattice.io/cluster";
/// Pod name, hashed when longer than a label value may be.
pub const MEMBER_LABEL: &str = "xlattice.io/member";
/// Pod name in full: the label may be hashed.
pub const MEMBER_ANNOTATION: &str = "xlattice.io/member";
pub const NODE_ID_ANNOTATION: &str = "xlattice.io/node-id";

/// The NodeID an identity Secret announces in its annotation ("" when absent).
pub fn announced_node_id(secret: &k8s_openapi::api::core::v1::Secret) -> String {
    use kube::ResourceExt;
    secret
        .annotations()
        .get(NODE_ID_ANNOTATION)
        .cloned()
        .unwrap_or_default()
}
/// Set by the webhook on pods it injected, value: the cluster name.
pub const INJECTED_ANNOTATION: &str = "xlattice.io/injected";
/// The version (`MemberDirectory::version`) of the directory a member pod should serve;
/// writing it makes the kubelet refresh the pod's volumes at once (reconcile/refresh.rs).
pub const DIRECTORY_VERSION_ANNOTATION: &str = "xlattice.io/directory-version";
/// On the cluster (every member) or a member pod (that member): a new value rotates keys.
pub const ROTATE_ANNOTATION: &str = "xlattice.io/rotate";
/// On an identity Secret: the cluster's rotate token its keys were made under.
pub const ROTATED_FOR_CLUSTER_ANNOTATION: &str = "xlattice.io/rotated-for-cluster";
/// On an identity Secret: the pod's rotate token its keys were made under.
pub const ROTATED_FOR_POD_ANNOTATION: &str = "xlattice.io/rotated-for-pod";
/// On an identity Secret: when its keys were made (RFC 3339), at mint and at each rotation.
pub const KEYS_CREATED_AT_ANNOTATION: &str = "xlattice.io/keys-created-at";

pub const IDENTITY_SECRET_TYPE: &str = "xlattice.io/identity";
pub const DIRECTORY_KEY: &str = "directory.yaml";
pub const SIDECAR_NAME: &str = "xlattice-sidecar";

const SECRET_PREFIX: &str = "xlattice-id-";
const MAX_NAME: usize = 253;
const MAX_LABEL_VALUE: usize = 63;
const HASH_CHARS: usize = 10;

/// `xlattice-id-<pod>`, shortened with a hash suffix when it would exceed 253 characters.
pub fn identity_secret_name(pod: &str) -> String {
    shorten(&format!("{SECRET_PREFIX}{pod}"), MAX_NAME)
}

/// The label selector of everything the operator made for cluster `cluster`.
pub fn owned_by(cluster: &str) -> String {
    format!(
        "{CLUSTER_LABEL}={},{MANAGED_BY_LABEL}={MANAGED_BY}",
        label_value(cluster)
    )
}

/// A label value naming `value`: as is when it fits, else shortened with a hash suffix.
pub fn label_value(value: &str) -> String {
    shorten(value, MAX_LABEL_VALUE)
}

/// The member directory is spread over this many ConfigMaps ("shards"), so that no one
/// object nears the API server's 1 MiB limit: about 800 RSA-2048 members fit in one, so
/// 16 hold some 12,000 (about 7,000 with RSA-4096 keys). Only shards with members exist.
pub const DIRECTORY_SHARDS: usize = 16;

/// `<cluster>-directory-<shard>`.
pub fn directory_shard_name(cluster: &str, shard: usize) -> String {
    format!("{cluster}-directory-{shard}")
}

/// The file a shard becomes in the sidecar's directory volume.
pub fn directory_shard_file(shard: usize) -> String {
    format!("shard-{shard}.yaml")
}

/// Which shard holds a member's record: fixed by its name, so a member never moves
/// between ConfigMaps (a move, being two writes, could leave it for a moment in none).
/// FNV-1a, because std's hasher may change between releases and this must not.
pub fn directory_shard(member: &str) -> usize {
    let hash = member.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % DIRECTORY_SHARDS as u64) as usize
}

pub fn network_policy_name(cluster: &str) -> String {
    format!("{cluster}-xlattice")
}

pub fn client_service_name(cluster: &str) -> String {
    cluster.to_string()
}

pub fn members_service_name(cluster: &str) -> String {
    format!("{cluster}-members")
}

/// The role that grants identity Secrets (charts/xlattice-operator/rbac/roles.yaml).
pub const IDENTITIES_ROLE: &str = "xlattice-operator-identities";

/// The RoleBinding by which the operator's ServiceAccount `namespace/name` holds
/// `IDENTITIES_ROLE` in a namespace with clusters; the admission policy allows no other name.
pub fn identities_binding_name(namespace: &str, name: &str) -> String {
    format!("xlattice-identities.{namespace}.{name}")
}

/// Short stable digest of `text` (hex, `HASH_CHARS` long), for values that must change when
/// `text` does.
pub fn short_hash(text: &str) -> String {
    let hash = hex::encode(digest::digest(&digest::SHA256, text.as_bytes()));
    hash[..HASH_CHARS].to_string()
}

/// Keeps names unique when shortened: the suffix hashes the full name. The cut is trimmed of
/// '.' and '-' so the result stays a valid DNS subdomain and label value.
fn shorten(name: &str, max: usize) -> String {
    if name.len() <= max {
        return name.to_string();
    }
    let cut = name[..max - HASH_CHARS - 1].trim_end_matches(['.', '-']);
    format!("{cut}-{}", short_hash(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_kept_long_ones_hashed_and_distinct() {
        assert_eq!(identity_secret_name("store-0"), "xlattice-id-store-0");
        assert_eq!(label_value("store-0"), "store-0");
        let a = format!("{}a", "x".repeat(260));
        let b = format!("{}b", "x".repeat(260));
        assert_eq!(identity_secret_name(&a).len(), 253);
        assert_ne!(identity_secret_name(&a), identity_secret_name(&b));
        let dotted = format!("{}.{}", "y".repeat(51), "z".repeat(20));
        let v = label_value(&dotted);
        assert!(v.len() <= 63 && !v.contains(".-"), "{v}");
    }

    #[test]
    fn members_spread_over_all_shards_and_never_move() {
        // Pinned (FNV-1a of "store-0" is 0xad14_0f68_35bb_968b): a different value here
        // would move every member of every cluster.
        assert_eq!(directory_shard("store-0"), 0xb);
        let mut counts = [0usize; DIRECTORY_SHARDS];
        for i in 0..1000 {
            counts[directory_shard(&format!("store-{i}"))] += 1;
        }
        // 62.5 each on average; a lopsided hash would overfill one ConfigMap early.
        assert!(counts.iter().all(|&n| (40..=85).contains(&n)), "{counts:?}");
    }
}

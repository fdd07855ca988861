//! The `XLatticeCluster` custom resource (xlattice.io/v1alpha1).
//!
//! Everything the API server can check is in the schema (ranges, enums, CEL rules), so a
//! bad manifest is refused by `kubectl apply` with a message naming the field, instead of
//! being accepted and then reported as Degraded.

use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use xlattice_protocol::{NodeIdBits, RsaBits};

/// Distance between a public port and the default loopback port of the application behind it.
pub const UPSTREAM_PORT_OFFSET: u16 = 10_000;

/// Desired state of an XLattice cluster: which pods are members and how they are reached.
///
/// Member pods become ingress-isolated by the cluster's NetworkPolicy: only the cluster port
/// (from members), the client port (from `clientAccess`), the sidecar admin port 15090
/// (metrics and probes) and `extraIngressPorts` stay reachable.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "xlattice.io",
    version = "v1alpha1",
    kind = "XLatticeCluster",
    plural = "xlatticeclusters",
    shortname = "xlc",
    namespaced,
    status = "XLatticeClusterStatus",
    doc = "A group of pods that each carry an XLattice identity (NodeID, signing and encryption keys)",
    printcolumn(name = "Members", type_ = "integer", json_path = ".status.members"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "ClusterPort", type_ = "integer", json_path = ".spec.clusterPort"),
    printcolumn(name = "ClientPort", type_ = "integer", json_path = ".spec.clientPort"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 55 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')")
        .message("metadata.name must be a DNS-1035 label of at most 55 characters: it names the cluster's Services (<name>-members)")
)]
#[x_kube(
    validation = Rule::new("self.clusterPort != self.clientPort")
        .message("spec.clusterPort and spec.clientPort must differ"),
    validation = Rule::new("!has(self.upstream) || !has(self.upstream.clusterPort) || (self.upstream.clusterPort != self.clusterPort && self.upstream.clusterPort != self.clientPort)")
        .message("spec.upstream.clusterPort must differ from spec.clusterPort and spec.clientPort"),
    validation = Rule::new("!has(self.upstream) || !has(self.upstream.clientPort) || (self.upstream.clientPort != self.clusterPort && self.upstream.clientPort != self.clientPort)")
        .message("spec.upstream.clientPort must differ from spec.clusterPort and spec.clientPort"),
    validation = Rule::new("(has(self.upstream) && has(self.upstream.clusterPort)) || self.clusterPort <= 55535")
        .message("spec.upstream.clusterPort must be set when spec.clusterPort > 55535 (the default is clusterPort + 10000)"),
    validation = Rule::new("(has(self.upstream) && has(self.upstream.clientPort)) || self.clientPort <= 55535")
        .message("spec.upstream.clientPort must be set when spec.clientPort > 55535 (the default is clientPort + 10000)"),
)]
#[serde(rename_all = "camelCase")]
pub struct XLatticeClusterSpec {
    /// Member pods: every pod of this namespace the selector matches gets an identity.
    pub selector: LabelSelector,

    /// Private port, the same on every member, reachable only from other members.
    #[schemars(range(min = 1, max = 65535))]
    pub cluster_port: i32,

    /// Public port, the same on every member, published by the cluster's Service.
    #[schemars(range(min = 1, max = 65535))]
    pub client_port: i32,

    /// The application's own plaintext ports on 127.0.0.1, behind the sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamPorts>,

    /// NodeID size in bits.
    #[serde(default = "default_node_id_bits")]
    #[schemars(extend("enum" = [160, 256]))]
    pub node_id_bits: u16,

    /// RSA modulus size of both member keys.
    #[serde(default = "default_rsa_bits")]
    #[schemars(extend("enum" = [2048, 3072, 4096]))]
    pub rsa_bits: u16,

    /// Who may reach the client port. Empty: anyone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_access: Vec<NetworkPolicyPeer>,

    /// Further ports of the member pods that stay open to anyone. Every other port is cut
    /// off by the cluster's NetworkPolicy (a policy that selects a pod denies all ingress
    /// it does not allow).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(range(min = 1, max = 65535)))]
    pub extra_ingress_ports: Vec<i32>,

    /// The Service that publishes the client port.
    #[serde(default)]
    pub service: ServiceSettings,

    /// Roll the Deployments and StatefulSets of member pods that lack the sidecar, one at a time.
    #[serde(default)]
    pub restart_workloads: bool,

    /// Periodic key rotation: new keys, same NodeID, for each member whose keys are older than
    /// the period. On demand: annotate the cluster (every member) or a member pod with
    /// `xlattice.io/rotate=<a new value>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RotationSettings>,

    /// Seconds an identity outlives its pod (a StatefulSet pod coming back keeps its NodeID).
    #[serde(default = "default_grace")]
    #[schemars(range(min = 0))]
    pub member_grace_period_seconds: i64,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamPorts {
    /// Loopback port of the application's cluster listener. Default: clusterPort + 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub cluster_port: Option<i32>,
    /// Loopback port of the application's client listener. Default: clientPort + 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub client_port: Option<i32>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSettings {
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RotationSettings {
    /// Go duration ("720h", "30m"); at least 1s is honoured, a negative one disables.
    pub period: kube::core::Duration,
}

/// Observed state, written by the operator through server-side apply.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct XLatticeClusterStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods the selector matches.
    #[serde(default)]
    pub members: i32,
    /// Members whose identity Secret exists.
    #[serde(default)]
    pub minted: i32,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Members that do not run the sidecar yet (a restart of their workload would inject it).
    #[serde(default)]
    pub pods_without_sidecar: Vec<String>,
    /// The ConfigMaps holding the member directory, one per shard with members; together
    /// they are the directory (`xlattice-operator directory <cluster>` prints it whole).
    #[serde(default)]
    pub directory_config_maps: Vec<String>,
    /// When keys of a member were last rotated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

fn default_node_id_bits() -> u16 {
    256
}

fn default_rsa_bits() -> u16 {
    2048
}

fn default_grace() -> i64 {
    300
}

// === impl XLatticeClusterSpec ===

impl XLatticeClusterSpec {
    /// The application's loopback ports, defaults applied.
    pub fn upstream_ports(&self) -> (i32, i32) {
        let up = self.upstream.clone().unwrap_or_default();
        let offset = i32::from(UPSTREAM_PORT_OFFSET);
        (
            up.cluster_port.unwrap_or(self.cluster_port + offset),
            up.client_port.unwrap_or(self.client_port + offset),
        )
    }

    /// The key sizes, or why they are unusable. The schema refuses bad values already; this
    /// guards against objects written before a schema change.
    pub fn key_sizes(&self) -> Result<(NodeIdBits, RsaBits), String> {
        let node_id = NodeIdBits::try_from(self.node_id_bits).map_err(|e| format!("spec.nodeIdBits: {e}"))?;
        let rsa = match self.rsa_bits {
            2048 => RsaBits::B2048,
            3072 => RsaBits::B3072,
            4096 => RsaBits::B4096,
            other => return Err(format!("spec.rsaBits: {other} is not 2048, 3072 or 4096")),
        };
        Ok((node_id, rsa))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn schema_carries_defaults_ranges_and_rules() {
        let crd = serde_json::to_string(&XLatticeCluster::crd()).unwrap();
        for needle in [
            r#""rule":"self.clusterPort != self.clientPort""#,
            r#""enum":[160,256]"#,
            r#""enum":[2048,3072,4096]"#,
            r#""maximum":65535"#,
            r#""shortNames":["xlc"]"#,
        ] {
            assert!(crd.contains(needle), "CRD lacks {needle}");
        }
    }

    #[test]
    fn upstream_defaults_to_public_plus_offset() {
        let spec: XLatticeClusterSpec = serde_json::from_value(serde_json::json!({
            "selector": {"matchLabels": {"app": "x"}},
            "clusterPort": 7000, "clientPort": 8000,
            "upstream": {"clientPort": 9000},
        }))
        .unwrap();
        assert_eq!(spec.upstream_ports(), (17000, 9000));
        assert_eq!(spec.key_sizes().unwrap(), (NodeIdBits::B256, RsaBits::B2048));
        assert_eq!(spec.member_grace_period_seconds, 300);
    }
}

//! The `XLatticeCluster` custom resource (xlattice.io/v1alpha1).
//!
//! Everything the API server can check is in the schema (ranges, enums, CEL rules), so a
//! bad manifest is refused by `kubectl apply` with a message naming the field, instead of
//! being accepted and then reported as Degraded.

use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{
    api::{ApiResource, DynamicObject},
    CustomResource, KubeSchema,
};
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
    validation = Rule::new("!(self.clusterPort in [15001, 15090])").field_path(".clusterPort")
        .message("spec.clusterPort must not be 15001 or 15090: the sidecar listens there (outbound CONNECT, metrics and probes)"),
    validation = Rule::new("!(self.clientPort in [15001, 15090])").field_path(".clientPort")
        .message("spec.clientPort must not be 15001 or 15090: the sidecar listens there (outbound CONNECT, metrics and probes)"),
    validation = Rule::new("(has(self.upstream) && has(self.upstream.clusterPort)) || self.clusterPort <= 55535")
        .message("spec.upstream.clusterPort must be set when spec.clusterPort > 55535 (the default is clusterPort + 10000)"),
    validation = Rule::new("(has(self.upstream) && has(self.upstream.clientPort)) || self.clientPort <= 55535")
        .message("spec.upstream.clientPort must be set when spec.clientPort > 55535 (the default is clientPort + 10000)"),
    validation = Rule::new("!((has(self.upstream) && has(self.upstream.clusterPort) ? self.upstream.clusterPort : self.clusterPort + 10000) in [self.clusterPort, self.clientPort, 15001, 15090])")
        .message("spec.upstream.clusterPort (default clusterPort + 10000) must differ from spec.clusterPort, spec.clientPort and the sidecar's ports 15001 and 15090"),
    validation = Rule::new("!((has(self.upstream) && has(self.upstream.clientPort) ? self.upstream.clientPort : self.clientPort + 10000) in [self.clusterPort, self.clientPort, 15001, 15090])")
        .message("spec.upstream.clientPort (default clientPort + 10000) must differ from spec.clusterPort, spec.clientPort and the sidecar's ports 15001 and 15090"),
    validation = Rule::new("(has(self.upstream) && has(self.upstream.clusterPort) ? self.upstream.clusterPort : self.clusterPort + 10000) != (has(self.upstream) && has(self.upstream.clientPort) ? self.upstream.clientPort : self.clientPort + 10000)")
        .message("spec.upstream.clusterPort and spec.upstream.clientPort (defaults: clusterPort + 10000, clientPort + 10000) must differ: they are the application's two loopback listeners"),
    validation = Rule::new("(has(self.selector.matchLabels) && size(self.selector.matchLabels) > 0) || (has(self.selector.matchExpressions) && size(self.selector.matchExpressions) > 0)")
        .field_path(".selector")
        .message("spec.selector must select something: an empty selector would make every pod of the namespace a member and cut all of them off with the cluster's NetworkPolicy"),
    validation = Rule::new("!has(self.selector.matchExpressions) || self.selector.matchExpressions.all(e, e.key.matches('^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$') && (e.operator in ['In', 'NotIn'] ? (has(e.values) && size(e.values) > 0) : (e.operator in ['Exists', 'DoesNotExist'] && (!has(e.values) || size(e.values) == 0))))")
        .field_path(".selector.matchExpressions")
        .message("spec.selector.matchExpressions: each key must be a label name, each operator In, NotIn, Exists or DoesNotExist, with values for In and NotIn and none for Exists and DoesNotExist"),
    validation = Rule::new("!has(self.selector.matchLabels) || self.selector.matchLabels.all(k, k.matches('^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$') && self.selector.matchLabels[k].matches('^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$'))")
        .field_path(".selector.matchLabels")
        .message("spec.selector.matchLabels: each key must be a label name ([prefix/]name, name at most 63 characters of [A-Za-z0-9._-]) and each value at most 63 characters of [A-Za-z0-9._-], starting and ending alphanumeric"),
    validation = Rule::new("!has(self.clientAccess) || self.clientAccess.all(p, !has(p.ipBlock) || (isCIDR(p.ipBlock.cidr) && (!has(p.ipBlock.except) || p.ipBlock.except.all(e, isCIDR(e)))))")
        .field_path(".clientAccess")
        .message("spec.clientAccess: every ipBlock.cidr and ipBlock.except entry must be a CIDR such as 10.0.0.0/8 or fd00::/8"),
)]
#[serde(rename_all = "camelCase")]
pub struct XLatticeClusterSpec {
    /// Member pods: every pod of this namespace the selector matches gets an identity.
    #[schemars(schema_with = "bounded_selector")]
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

    /// NodeID size in bits. Fixed for the life of the cluster: NodeIDs are the members'
    /// names, and a directory mixing sizes would not be one cluster.
    #[serde(default = "default_node_id_bits")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.nodeIdBits cannot change on a live cluster: every member keeps its NodeID for life; create a new XLatticeCluster with the new size instead"))]
    #[schemars(extend("enum" = [160, 256]))]
    pub node_id_bits: u16,

    /// RSA modulus size of both member keys. Fixed for the life of the cluster (existing
    /// keys would not change size, so the cluster would mix sizes).
    #[serde(default = "default_rsa_bits")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.rsaBits cannot change on a live cluster: existing members keep their keys; create a new XLatticeCluster with the new size instead"))]
    #[schemars(extend("enum" = [2048, 3072, 4096]))]
    pub rsa_bits: u16,

    /// Who may reach the client port. Empty: anyone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "bounded_peers")]
    pub client_access: Vec<NetworkPolicyPeer>,

    /// Further ports of the member pods that stay open to anyone. Every other port is cut
    /// off by the cluster's NetworkPolicy (a policy that selects a pod denies all ingress
    /// it does not allow).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(range(min = 1, max = 65535)), length(max = 64))]
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

    /// The handshake versions the sidecars speak (docs/protocol.md, "Choosing a version"):
    /// Preferred, the hybrid post-quantum handshake (X25519 + ML-KEM-768) with every peer
    /// that speaks it and the classical one with those that do not; Required, hybrid only,
    /// once every member and client speaks it (xlattice_sidecar_session_versions_total shows
    /// when no classical sessions are left); Disabled, classical only. A change applies to pods
    /// injected after it (restartWorkloads rolls the others).
    #[serde(default, skip_serializing_if = "PostQuantumSetting::is_default")]
    pub post_quantum: PostQuantumSetting,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PostQuantumSetting {
    Disabled,
    #[default]
    Preferred,
    Required,
}

impl PostQuantumSetting {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The sidecar's `--post-quantum` value (the protocol crate's `PostQuantum` names).
    pub fn flag(self) -> &'static str {
        match self {
            Self::Disabled => "Disabled",
            Self::Preferred => "Preferred",
            Self::Required => "Required",
        }
    }
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
#[x_kube(
    validation = Rule::new("self.period.matches('^[-+]?(0|(([0-9]+([.][0-9]*)?|[.][0-9]+)(ns|us|µs|μs|ms|s|m|h))+)$') && duration(self.period) <= duration('876000h') && duration(self.period) >= duration('-876000h')")
        .field_path(".period")
        .message("spec.rotation.period must be a Go duration such as 720h or 1h30m, at most 876000h (100 years); a negative one disables periodic rotation"),
)]
#[serde(rename_all = "camelCase")]
pub struct RotationSettings {
    /// Go duration ("720h", "30m"); at least 1s is honoured, a negative one disables.
    /// Kept as written: the operator parses it (`rotation::parse_period`) with bounds.
    #[schemars(length(max = 64))]
    pub period: String,
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
    /// Members whose sidecar was injected for an earlier spec (other ports): they serve the
    /// old ports until restarted (`restartWorkloads` rolls them). Ready is False meanwhile.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods_with_outdated_sidecar: Vec<String>,
    /// The ConfigMaps holding the member directory, one per shard with members; together
    /// they are the directory (`xlattice-operator directory <cluster>` prints it whole).
    #[serde(default)]
    pub directory_config_maps: Vec<String>,
    /// When keys of a member were last rotated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

/// Why a stored XLatticeCluster cannot be read as this version of the operator knows it
/// (written before a schema change, or past a schema that allows what the types do not).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Undecodable {
    /// The JSON path of the offending field, e.g. `spec.rotation.period`.
    pub field: String,
    pub reason: String,
}

/// The resource as the untyped API sees it: the controller and the webhook list and watch
/// clusters untyped, so that one object the types cannot hold fails only itself.
pub fn api_resource() -> ApiResource {
    ApiResource::erase::<XLatticeCluster>(&())
}

/// One cluster, typed, or the field that stops it.
pub fn decode(object: &DynamicObject) -> Result<XLatticeCluster, Undecodable> {
    let value = serde_json::to_value(object).map_err(|e| Undecodable {
        field: ".".into(),
        reason: e.to_string(),
    })?;
    serde_path_to_error::deserialize(value).map_err(|e| Undecodable {
        field: e.path().to_string(),
        reason: e.inner().to_string(),
    })
}

/// The selector alone, when the rest of a cluster cannot be decoded: enough to know which
/// pods it claims.
pub fn decode_selector(object: &DynamicObject) -> Option<LabelSelector> {
    serde_json::from_value(object.data.get("spec")?.get("selector")?.clone()).ok()
}

/// The status as stored, if it can be read (a status this version cannot read is replaced).
pub fn decode_status(object: &DynamicObject) -> Option<XLatticeClusterStatus> {
    serde_json::from_value(object.data.get("status")?.clone()).ok()
}

/// Label names and values as the API server defines them (a label value may be empty).
pub const LABEL_VALUE_PATTERN: &str = "^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$";

/// The member selector, with the bounds the API server's CEL cost estimate needs and the
/// label value syntax as a schema pattern (label names are checked by the operator).
fn bounded_selector(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<LabelSelector>();
    if let Some(labels) = schema.pointer_mut("/properties/matchLabels") {
        labels["maxProperties"] = 32.into();
        labels["additionalProperties"]["maxLength"] = 63.into();
        labels["additionalProperties"]["pattern"] = LABEL_VALUE_PATTERN.into();
    }
    if let Some(expressions) = schema.pointer_mut("/properties/matchExpressions") {
        expressions["maxItems"] = 32.into();
        let item = &mut expressions["items"]["properties"];
        item["key"]["maxLength"] = 317.into();
        item["operator"]["maxLength"] = 16.into();
        item["values"]["maxItems"] = 64.into();
        item["values"]["items"]["maxLength"] = 63.into();
        item["values"]["items"]["pattern"] = LABEL_VALUE_PATTERN.into();
    }
    schema
}

/// `clientAccess` peers, bounded so that the CIDR rule's cost can be estimated: an IPv6
/// CIDR is at most 43 characters.
fn bounded_peers(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<Vec<NetworkPolicyPeer>>();
    schema.insert("maxItems".into(), 64.into());
    if let Some(block) = schema.pointer_mut("/items/properties/ipBlock/properties") {
        block["cidr"]["maxLength"] = 64.into();
        block["except"]["maxItems"] = 64.into();
        block["except"]["items"]["maxLength"] = 64.into();
    }
    for selector in ["podSelector", "namespaceSelector"] {
        if let Some(labels) = schema.pointer_mut(&format!("/items/properties/{selector}/properties/matchLabels")) {
            labels["maxProperties"] = 32.into();
            labels["additionalProperties"]["maxLength"] = 63.into();
            labels["additionalProperties"]["pattern"] = LABEL_VALUE_PATTERN.into();
        }
    }
    schema
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
    fn an_undecodable_cluster_names_its_field() {
        let object: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "xlattice.io/v1alpha1", "kind": "XLatticeCluster",
            "metadata": {"name": "bad", "namespace": "ns"},
            "spec": {
                "selector": {"matchLabels": {"app": "x"}},
                "clusterPort": 7000, "clientPort": 8000,
                "service": {"type": "Headless"},
            },
            "status": {"members": "many"},
        }))
        .unwrap();
        let error = decode(&object).unwrap_err();
        assert_eq!(error.field, "spec.service.type", "{error}");
        let selector = decode_selector(&object).unwrap();
        assert_eq!(selector.match_labels.unwrap()["app"], "x");
        assert_eq!(decode_status(&object), None, "an unreadable status is not an error");

        let mut good = object.clone();
        good.data["spec"]["service"]["type"] = "NodePort".into();
        good.data["status"] = serde_json::json!({"members": 2});
        let cluster = decode(&good).unwrap();
        assert_eq!(
            (cluster.metadata.name.as_deref(), cluster.status.unwrap().members),
            (Some("bad"), 2)
        );
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

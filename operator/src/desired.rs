//! The objects a cluster should own, computed from the cluster, its pods and its identities.
//! No I/O here: the reconciler fetches, these functions decide, the reconciler writes only
//! what differs (see the `*_matches` functions).

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        core::v1::{ConfigMap, Pod, Secret, Service, ServicePort, ServiceSpec},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
        networking::v1::{
            NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
        },
        rbac::v1::{RoleBinding, RoleRef, Subject},
    },
    apimachinery::pkg::{
        apis::meta::v1::{ObjectMeta, OwnerReference},
        util::intstr::IntOrString,
    },
    ByteString,
};
use kube::{api::DynamicObject, Resource, ResourceExt};
use xlattice_protocol::{Identity, MemberDirectory, MemberRecord};

use crate::{crd::XLatticeCluster, names::*};

/// Port of the sidecar's metrics and probes; the NetworkPolicy keeps it open so kubelets
/// and Prometheus still reach it.
pub const SIDECAR_ADMIN_PORT: i32 = 15090;

/// Labels every object owned by `cluster` carries.
pub fn owned_labels(cluster: &XLatticeCluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
        (CLUSTER_LABEL.to_string(), label_value(&cluster.name_any())),
    ])
}

/// Metadata of an object `cluster` owns (and the bare API server's missing garbage
/// collector notwithstanding, the owner reference documents who made it).
fn owned_meta(cluster: &XLatticeCluster, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: cluster.namespace(),
        labels: Some(owned_labels(cluster)),
        owner_references: cluster.controller_owner_ref(&()).map(|o| vec![o]),
        ..Default::default()
    }
}

/// The binding of the identities role to the operator (`subject`) in `cluster`'s namespace,
/// owned by every cluster there (not as their controller: it has many owners), so that the
/// garbage collector deletes it with the last of them.
pub fn identities_binding(cluster: &DynamicObject, subject: &Subject) -> RoleBinding {
    let (ns, name) = (subject.namespace.as_deref().unwrap_or_default(), subject.name.as_str());
    let owner = OwnerReference {
        api_version: XLatticeCluster::api_version(&()).into(),
        kind: XLatticeCluster::kind(&()).into(),
        name: cluster.name_any(),
        uid: cluster.uid().unwrap_or_default(),
        ..Default::default()
    };
    RoleBinding {
        metadata: ObjectMeta {
            name: Some(identities_binding_name(ns, name)),
            namespace: cluster.namespace(),
            labels: Some([(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string())].into()),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: IDENTITIES_ROLE.into(),
        },
        subjects: Some(vec![subject.clone()]),
    }
}

/// The identity Secret of `pod`: the only place the private keys live. `stamp`: the
/// rotation bookkeeping annotations (see `rotation::stamp`).
pub fn identity_secret(
    cluster: &XLatticeCluster,
    pod: &str,
    identity: &Identity,
    stamp: BTreeMap<String, String>,
) -> Secret {
    let mut meta = owned_meta(cluster, identity_secret_name(pod));
    meta.labels
        .get_or_insert_default()
        .insert(MEMBER_LABEL.into(), label_value(pod));
    let mut annotations = stamp;
    annotations.extend([
        (NODE_ID_ANNOTATION.to_string(), identity.node_id.to_string()),
        (MEMBER_ANNOTATION.to_string(), pod.to_string()),
    ]);
    meta.annotations = Some(annotations);
    Secret {
        metadata: meta,
        type_: Some(IDENTITY_SECRET_TYPE.into()),
        data: Some(identity_data(identity)),
        ..Default::default()
    }
}

/// The data of an identity Secret: `node-id`, `sk.pem`, `ck.pem`.
pub fn identity_data(identity: &Identity) -> BTreeMap<String, ByteString> {
    identity
        .to_files()
        .into_iter()
        .map(|(name, bytes)| (name.to_string(), ByteString(bytes.to_vec())))
        .collect()
}

/// `observed` with the keys of `rotated` (same NodeID) and the new rotation stamp; its
/// resourceVersion kept, so the write is refused if the Secret changed meanwhile.
pub fn rotated_secret(observed: &Secret, rotated: &Identity, stamp: BTreeMap<String, String>) -> Secret {
    let mut secret = observed.clone();
    secret.metadata.managed_fields = None;
    secret.metadata.annotations.get_or_insert_default().extend(stamp);
    secret.data = Some(identity_data(rotated));
    secret.string_data = None;
    secret
}

/// The pod an identity Secret belongs to, from its annotation (the label may be hashed).
pub fn secret_member(secret: &Secret) -> Option<&str> {
    secret.annotations().get(MEMBER_ANNOTATION).map(String::as_str)
}

/// The member directory: members sorted by name so equal inputs give byte-equal output.
pub fn directory(cluster: &XLatticeCluster, mut records: Vec<MemberRecord>, pods: &[&Pod]) -> MemberDirectory {
    let ip = |name: &str| {
        pods.iter()
            .find(|p| p.metadata.name.as_deref() == Some(name))
            .and_then(|p| p.status.as_ref()?.pod_ip.clone())
            .filter(|ip| !ip.is_empty())
    };
    for record in &mut records {
        let ip = ip(&record.name);
        record.cluster_endpoint = ip.as_ref().map(|ip| endpoint(ip, cluster.spec.cluster_port));
        record.client_endpoint = ip.as_ref().map(|ip| endpoint(ip, cluster.spec.client_port));
    }
    records.sort_by(|a, b| a.name.cmp(&b.name));
    MemberDirectory {
        cluster: format!("{}/{}", cluster.namespace().unwrap_or_default(), cluster.name_any()),
        members: records,
    }
}

fn endpoint(ip: &str, port: i32) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// What one ConfigMap may hold in total is 1 MiB; the rest of the object needs room too.
pub const MAX_DIRECTORY_BYTES: usize = 1_000_000;

/// The directory as ConfigMaps, one per shard that has members (`names::directory_shard`
/// decides where a member goes), in shard order. Each is a directory of its own, naming
/// the cluster; the sidecar merges the shards it finds.
pub fn directory_config_maps(cluster: &XLatticeCluster, dir: &MemberDirectory) -> Vec<ConfigMap> {
    let mut shards = vec![Vec::new(); DIRECTORY_SHARDS];
    for record in &dir.members {
        shards[directory_shard(&record.name)].push(record.clone());
    }
    shards
        .into_iter()
        .enumerate()
        .filter(|(_, members)| !members.is_empty())
        .map(|(shard, members)| {
            let part = MemberDirectory {
                cluster: dir.cluster.clone(),
                members,
            };
            ConfigMap {
                metadata: owned_meta(cluster, directory_shard_name(&cluster.name_any(), shard)),
                data: Some(BTreeMap::from([(DIRECTORY_KEY.to_string(), part.to_yaml())])),
                ..Default::default()
            }
        })
        .collect()
}

/// Why a directory shard cannot be published, if it cannot: with RSA-2048 keys a member
/// takes about 1.2 KB, so a shard fills near 800 members and the directory near 12,000.
pub fn directory_too_large(config_map: &ConfigMap) -> Option<String> {
    let bytes: usize = config_map.data.iter().flatten().map(|(k, v)| k.len() + v.len()).sum();
    (bytes > MAX_DIRECTORY_BYTES).then(|| {
        format!(
            "member directory shard {} is {bytes} bytes, over the {MAX_DIRECTORY_BYTES} one ConfigMap can hold \
             ({DIRECTORY_SHARDS} shards hold about 12,000 members with RSA-2048 keys); \
             split the members into several XLatticeClusters",
            config_map.name_any()
        )
    })
}

fn tcp_port(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".into()),
        end_port: None,
    }
}

/// Cluster port from members only; client port from `clientAccess` (anyone when empty);
/// the sidecar admin port and `extraIngressPorts` from anyone. All else is denied: a
/// NetworkPolicy that selects a pod isolates it for ingress.
pub fn network_policy(cluster: &XLatticeCluster) -> NetworkPolicy {
    let spec = &cluster.spec;
    let members = NetworkPolicyPeer {
        pod_selector: Some(spec.selector.clone()),
        ..Default::default()
    };
    let client_from = (!spec.client_access.is_empty()).then(|| spec.client_access.clone());
    let mut open: Vec<i32> = vec![SIDECAR_ADMIN_PORT];
    open.extend(spec.extra_ingress_ports.iter().copied());
    open.sort_unstable();
    open.dedup();
    open.retain(|p| *p != spec.cluster_port && *p != spec.client_port);
    NetworkPolicy {
        metadata: owned_meta(cluster, network_policy_name(&cluster.name_any())),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(spec.selector.clone()),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    ports: Some(vec![tcp_port(spec.cluster_port)]),
                    from: Some(vec![members]),
                },
                NetworkPolicyIngressRule {
                    ports: Some(vec![tcp_port(spec.client_port)]),
                    from: client_from,
                },
                NetworkPolicyIngressRule {
                    ports: Some(open.into_iter().map(tcp_port).collect()),
                    from: None,
                },
            ]),
            egress: None,
        }),
    }
}

fn service_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

/// The client Service (type from the spec) and the headless members Service (stable DNS
/// names for peers, published before readiness so members can find each other at startup).
pub fn services(cluster: &XLatticeCluster) -> [Service; 2] {
    let name = cluster.name_any();
    // A Service selects by labels only: with matchExpressions it has no selector, and the
    // operator writes its EndpointSlices (`endpoint_slices`).
    let selector = (!writes_endpoint_slices(cluster))
        .then(|| cluster.spec.selector.match_labels.clone())
        .flatten();
    let client = Service {
        metadata: owned_meta(cluster, client_service_name(&name)),
        spec: Some(ServiceSpec {
            type_: Some(format!("{:?}", cluster.spec.service.type_)),
            selector: selector.clone(),
            ports: Some(vec![service_port("xl-client", cluster.spec.client_port)]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let members = Service {
        metadata: owned_meta(cluster, members_service_name(&name)),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector,
            ports: Some(vec![service_port("xl-cluster", cluster.spec.cluster_port)]),
            ..Default::default()
        }),
        ..Default::default()
    };
    [client, members]
}

/// Whether the cluster's Services need EndpointSlices written by the operator: their
/// selector cannot say what the cluster's does.
pub fn writes_endpoint_slices(cluster: &XLatticeCluster) -> bool {
    cluster
        .spec
        .selector
        .match_expressions
        .as_ref()
        .is_some_and(|e| !e.is_empty())
}

/// The API server refuses an EndpointSlice with more endpoints than this.
const ENDPOINTS_PER_SLICE: usize = 1000;

/// The EndpointSlices of both Services when the operator writes them: the members with a
/// pod IP, by address family, at most 1000 per slice. The client Service's endpoints are
/// ready when their pod is; the members Service publishes every member (as its
/// `publishNotReadyAddresses` says), so peers can find each other while starting.
pub fn endpoint_slices(cluster: &XLatticeCluster, members: &[&Pod]) -> Vec<EndpointSlice> {
    if !writes_endpoint_slices(cluster) {
        return Vec::new();
    }
    let name = cluster.name_any();
    let services = [
        (client_service_name(&name), "xl-client", cluster.spec.client_port, false),
        (
            members_service_name(&name),
            "xl-cluster",
            cluster.spec.cluster_port,
            true,
        ),
    ];
    let mut slices = Vec::new();
    for (service, port_name, port, publish_not_ready) in services {
        for family in ["IPv4", "IPv6"] {
            let endpoints: Vec<Endpoint> = members
                .iter()
                .filter_map(|p| slice_endpoint(p, family, publish_not_ready))
                .collect();
            for (k, chunk) in endpoints.chunks(ENDPOINTS_PER_SLICE).enumerate() {
                let mut metadata = owned_meta(cluster, format!("{service}-{}-{k}", family.to_lowercase()));
                let labels = metadata.labels.get_or_insert_with(Default::default);
                labels.insert("kubernetes.io/service-name".into(), service.clone());
                labels.insert("endpointslice.kubernetes.io/managed-by".into(), MANAGED_BY.into());
                slices.push(EndpointSlice {
                    metadata,
                    address_type: family.into(),
                    endpoints: chunk.to_vec(),
                    ports: Some(vec![EndpointPort {
                        name: Some(port_name.into()),
                        port: Some(port),
                        protocol: Some("TCP".into()),
                        app_protocol: None,
                    }]),
                });
            }
        }
    }
    slices
}

/// A member as an endpoint of `family`, if it has an IP of that family.
fn slice_endpoint(pod: &Pod, family: &str, publish_not_ready: bool) -> Option<Endpoint> {
    let status = pod.status.as_ref()?;
    let ip = status.pod_ip.clone()?;
    if (family == "IPv6") != ip.contains(':') {
        return None;
    }
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let terminating = pod.metadata.deletion_timestamp.is_some();
    Some(Endpoint {
        addresses: vec![ip],
        conditions: Some(EndpointConditions {
            ready: Some((ready || publish_not_ready) && !terminating),
            serving: Some(ready),
            terminating: Some(terminating),
        }),
        node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        target_ref: Some(pod.object_ref(&())),
        ..Default::default()
    })
}

pub fn endpoint_slice_matches(desired: &EndpointSlice, observed: &EndpointSlice) -> bool {
    let targets = |s: &EndpointSlice| {
        s.endpoints
            .iter()
            .map(|e| {
                (
                    e.addresses.clone(),
                    e.conditions.clone(),
                    e.target_ref.as_ref().and_then(|r| r.uid.clone()),
                )
            })
            .collect::<Vec<_>>()
    };
    meta_matches(&desired.metadata, &observed.metadata)
        && desired.address_type == observed.address_type
        && desired.ports == observed.ports
        && targets(desired) == targets(observed)
}

/// True when `observed` carries our labels and owner reference (the parts we set).
fn meta_matches(desired: &ObjectMeta, observed: &ObjectMeta) -> bool {
    let labels = observed.labels.clone().unwrap_or_default();
    let has_labels = desired.labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let owners = observed.owner_references.clone().unwrap_or_default();
    let has_owner = desired.owner_references.iter().flatten().all(|o| owners.contains(o));
    has_labels && has_owner
}

pub fn config_map_matches(desired: &ConfigMap, observed: &ConfigMap) -> bool {
    meta_matches(&desired.metadata, &observed.metadata) && desired.data == observed.data
}

pub fn network_policy_matches(desired: &NetworkPolicy, observed: &NetworkPolicy) -> bool {
    meta_matches(&desired.metadata, &observed.metadata) && desired.spec == observed.spec
}

/// Compares only the fields we set: the API server fills in clusterIP, nodePorts,
/// ipFamilies and more, which must not count as drift.
pub fn service_matches(desired: &Service, observed: &Service) -> bool {
    let (Some(d), Some(o)) = (&desired.spec, &observed.spec) else {
        return false;
    };
    let ports = |s: &ServiceSpec| {
        s.ports
            .iter()
            .flatten()
            .map(|p| (p.name.clone(), p.port, p.target_port.clone(), p.protocol.clone()))
            .collect::<Vec<_>>()
    };
    meta_matches(&desired.metadata, &observed.metadata)
        && d.type_ == o.type_
        && d.selector == o.selector
        && ports(d) == ports(o)
        && (d.cluster_ip.is_none() || d.cluster_ip == o.cluster_ip)
        && d.publish_not_ready_addresses.unwrap_or(false) == o.publish_not_ready_addresses.unwrap_or(false)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crd::XLatticeClusterSpec;
    use k8s_openapi::api::core::v1::PodStatus;
    use std::collections::BTreeSet;
    use xlattice_protocol::{NodeIdBits, RsaBits};

    pub fn cluster(spec: serde_json::Value) -> XLatticeCluster {
        let mut base = serde_json::json!({
            "selector": {"matchLabels": {"app": "store"}},
            "clusterPort": 7000, "clientPort": 8000,
        });
        base.as_object_mut().unwrap().extend(spec.as_object().unwrap().clone());
        let spec: XLatticeClusterSpec = serde_json::from_value(base).unwrap();
        let mut c = XLatticeCluster::new("store", spec);
        c.metadata.namespace = Some("ns".into());
        c.metadata.uid = Some("uid-1".into());
        c
    }

    pub fn pod(name: &str, ip: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                labels: Some(BTreeMap::from([("app".into(), "store".into())])),
                ..Default::default()
            },
            status: Some(PodStatus {
                pod_ip: ip.map(Into::into),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn services_of_a_match_expressions_cluster_get_slices_from_the_operator() {
        let labels_only = cluster(serde_json::json!({}));
        assert!(endpoint_slices(&labels_only, &[&pod("a", Some("10.0.0.1"))]).is_empty());
        assert!(services(&labels_only)
            .iter()
            .all(|s| s.spec.as_ref().unwrap().selector.is_some()));

        let c = cluster(serde_json::json!({"selector": {
            "matchLabels": {"app": "store"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["db"]}],
        }}));
        assert!(services(&c).iter().all(|s| s.spec.as_ref().unwrap().selector.is_none()));
        let mut ready = pod("ready", Some("10.0.0.1"));
        ready.status.as_mut().unwrap().conditions = Some(vec![k8s_openapi::api::core::v1::PodCondition {
            type_: "Ready".into(),
            status: "True".into(),
            ..Default::default()
        }]);
        let starting = pod("starting", Some("10.0.0.2"));
        let v6 = pod("v6", Some("fd00::3"));
        let no_ip = pod("no-ip", None);
        let slices = endpoint_slices(&c, &[&ready, &starting, &v6, &no_ip]);
        let names: Vec<String> = slices.iter().map(|s| s.name_any()).collect();
        assert_eq!(
            names,
            [
                "store-ipv4-0",
                "store-ipv6-0",
                "store-members-ipv4-0",
                "store-members-ipv6-0"
            ]
        );
        let ready_of = |slice: &EndpointSlice| -> Vec<(String, bool)> {
            slice
                .endpoints
                .iter()
                .map(|e| (e.addresses[0].clone(), e.conditions.as_ref().unwrap().ready.unwrap()))
                .collect()
        };
        assert_eq!(
            ready_of(&slices[0]),
            [("10.0.0.1".into(), true), ("10.0.0.2".into(), false)]
        );
        assert_eq!(
            ready_of(&slices[2]),
            [("10.0.0.1".into(), true), ("10.0.0.2".into(), true)],
            "published before ready"
        );
        assert_eq!(
            slices[0].metadata.labels.as_ref().unwrap()["kubernetes.io/service-name"],
            "store"
        );
        assert_eq!(slices[0].ports.as_ref().unwrap()[0].name.as_deref(), Some("xl-client"));
        assert_eq!(slices[1].address_type, "IPv6");

        let many: Vec<Pod> = (0..1001)
            .map(|i| pod(&format!("m-{i}"), Some(&format!("10.1.{}.{}", i / 250, i % 250))))
            .collect();
        let many: Vec<&Pod> = many.iter().collect();
        let sizes: Vec<usize> = endpoint_slices(&c, &many).iter().map(|s| s.endpoints.len()).collect();
        assert_eq!(sizes, [1000, 1, 1000, 1], "at most 1000 endpoints per slice");
    }

    #[test]
    fn secret_has_the_contracted_shape() {
        let c = cluster(serde_json::json!({}));
        let id = Identity::generate(NodeIdBits::B160, RsaBits::B2048).unwrap();
        let s = identity_secret(&c, "store-0", &id, BTreeMap::new());
        assert_eq!(s.metadata.name.as_deref(), Some("xlattice-id-store-0"));
        assert_eq!(s.type_.as_deref(), Some("xlattice.io/identity"));
        let keys: Vec<_> = s.data.as_ref().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["ck.pem", "node-id", "sk.pem"]);
        assert_eq!(s.annotations()[NODE_ID_ANNOTATION], id.node_id.to_string());
        assert_eq!(s.labels()[MEMBER_LABEL], "store-0");
        assert_eq!(secret_member(&s), Some("store-0"));
        let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.controller), ("XLatticeCluster", Some(true)));
    }

    #[test]
    fn rotated_secret_keeps_node_id_metadata_and_version_with_new_keys() {
        let c = cluster(serde_json::json!({}));
        let id = Identity::generate(NodeIdBits::B160, RsaBits::B2048).unwrap();
        let mut observed = identity_secret(&c, "store-0", &id, BTreeMap::new());
        observed.metadata.resource_version = Some("42".into());
        let new = id.rotated(RsaBits::B2048).unwrap();
        let stamp = BTreeMap::from([(ROTATED_FOR_CLUSTER_ANNOTATION.to_string(), "1".to_string())]);
        let s = rotated_secret(&observed, &new, stamp);
        assert_eq!(
            s.metadata.resource_version.as_deref(),
            Some("42"),
            "conditional on what was read"
        );
        assert_eq!(s.metadata.name, observed.metadata.name);
        assert_eq!(s.metadata.labels, observed.metadata.labels);
        assert_eq!(s.metadata.owner_references, observed.metadata.owner_references);
        assert_eq!(s.annotations()[NODE_ID_ANNOTATION], id.node_id.to_string());
        assert_eq!(s.annotations()[ROTATED_FOR_CLUSTER_ANNOTATION], "1");
        let (old, data) = (observed.data.unwrap(), s.data.unwrap());
        assert_eq!(data["node-id"], old["node-id"]);
        assert_ne!(data["sk.pem"], old["sk.pem"]);
        assert_ne!(data["ck.pem"], old["ck.pem"]);
        let back = Identity::from_files(|f| data.get(f).map(|b| b.0.as_slice())).unwrap();
        assert_eq!(back.node_id, id.node_id);
        assert_eq!(back.sk_public().to_pem(), new.sk_public().to_pem());
    }

    #[test]
    fn directory_is_sorted_with_endpoints_only_when_pods_have_ips() {
        let c = cluster(serde_json::json!({}));
        let ids: Vec<_> = (0..2)
            .map(|_| Identity::generate(NodeIdBits::B256, RsaBits::B2048).unwrap())
            .collect();
        let records = vec![
            MemberRecord::for_identity("b", &ids[0]),
            MemberRecord::for_identity("a", &ids[1]),
        ];
        let (pa, pb) = (pod("a", Some("10.0.0.1")), pod("b", None));
        let dir = directory(&c, records, &[&pa, &pb]);
        assert_eq!(dir.cluster, "ns/store");
        assert_eq!(dir.members[0].name, "a");
        assert_eq!(dir.members[0].cluster_endpoint.as_deref(), Some("10.0.0.1:7000"));
        assert_eq!(dir.members[0].client_endpoint.as_deref(), Some("10.0.0.1:8000"));
        assert_eq!(dir.members[1].cluster_endpoint, None);
        let shards = directory_config_maps(&c, &dir);
        let names: Vec<_> = shards.iter().map(|cm| cm.name_any()).collect();
        let expected: BTreeSet<usize> = [directory_shard("a"), directory_shard("b")].into();
        assert_eq!(
            names,
            expected
                .iter()
                .map(|&k| directory_shard_name("store", k))
                .collect::<Vec<_>>()
        );
        let parts = shards
            .iter()
            .map(|cm| MemberDirectory::from_slice(cm.data.as_ref().unwrap()[DIRECTORY_KEY].as_bytes()).unwrap());
        assert_eq!(
            MemberDirectory::merge(parts).unwrap(),
            dir,
            "the shards hold the directory, nothing more"
        );
        assert!(config_map_matches(&shards[0], &shards[0].clone()));
    }

    #[test]
    fn network_policy_opens_exactly_the_contracted_ports() {
        let c = cluster(serde_json::json!({"extraIngressPorts": [9100, 15090]}));
        let np = network_policy(&c);
        let spec = np.spec.as_ref().unwrap();
        assert_eq!(spec.policy_types.as_deref(), Some(&["Ingress".to_string()][..]));
        let rules = spec.ingress.as_ref().unwrap();
        let ports = |i: usize| -> Vec<_> { rules[i].ports.iter().flatten().map(|p| p.port.clone()).collect() };
        assert_eq!(ports(0), [Some(IntOrString::Int(7000))]);
        assert_eq!(
            rules[0].from.as_ref().unwrap()[0].pod_selector.as_ref(),
            Some(&c.spec.selector)
        );
        assert_eq!(ports(1), [Some(IntOrString::Int(8000))]);
        assert_eq!(rules[1].from, None, "empty clientAccess means anyone");
        assert_eq!(ports(2), [Some(IntOrString::Int(9100)), Some(IntOrString::Int(15090))]);

        let c = cluster(serde_json::json!({"clientAccess": [{"podSelector": {"matchLabels": {"role": "client"}}}]}));
        let np = network_policy(&c);
        let from = np.spec.unwrap().ingress.unwrap()[1].from.clone().unwrap();
        assert_eq!(
            from[0].pod_selector.as_ref().unwrap().match_labels.as_ref().unwrap()["role"],
            "client"
        );
    }

    #[test]
    fn services_ignore_server_filled_fields() {
        let c = cluster(serde_json::json!({"service": {"type": "NodePort"}}));
        let [client, members] = services(&c);
        assert_eq!(client.spec.as_ref().unwrap().type_.as_deref(), Some("NodePort"));
        assert_eq!(members.metadata.name.as_deref(), Some("store-members"));
        let mut observed = client.clone();
        let spec = observed.spec.as_mut().unwrap();
        spec.cluster_ip = Some("10.96.0.7".into());
        spec.ports.as_mut().unwrap()[0].node_port = Some(30007);
        spec.session_affinity = Some("None".into());
        assert!(service_matches(&client, &observed));
        assert!(!service_matches(&members, &client));
    }

    #[test]
    fn a_directory_over_what_its_shards_hold_is_refused_with_the_reason() {
        let c = cluster(serde_json::json!({
            "selector": {"matchLabels": {"app": "x"}}, "clusterPort": 7000, "clientPort": 8000
        }));
        // A member record the size an RSA-2048 one is.
        let record = |i: usize| xlattice_protocol::MemberRecord {
            name: format!("pod-{i}"),
            node_id: xlattice_protocol::NodeId::from_bytes(&[i as u8; 32]).unwrap(),
            sk: "k".repeat(451),
            ck: "k".repeat(451),
            cluster_endpoint: Some("10.0.0.1:7000".into()),
            client_endpoint: Some("10.0.0.1:8000".into()),
            attributes: vec![],
        };
        let dir = |n: usize| MemberDirectory {
            cluster: "ns/x".into(),
            members: (0..n).map(record).collect(),
        };
        // One ConfigMap held about 800 such members; the shards hold 1,000 with room to spare.
        let thousand = directory_config_maps(&c, &dir(1000));
        assert_eq!(thousand.len(), DIRECTORY_SHARDS);
        assert!(thousand.iter().all(|cm| directory_too_large(cm).is_none()));
        let largest = thousand
            .iter()
            .map(|cm| cm.data.as_ref().unwrap()[DIRECTORY_KEY].len())
            .max()
            .unwrap();
        assert!(largest < MAX_DIRECTORY_BYTES / 8, "{largest}");

        let too_many = directory_config_maps(&c, &dir(16_000));
        let message = too_many
            .iter()
            .find_map(directory_too_large)
            .expect("16,000 members do not fit");
        assert!(
            message.contains("over the 1000000") && message.contains("store-directory-"),
            "{message}"
        );
    }
}

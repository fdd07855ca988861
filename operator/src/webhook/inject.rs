//! What the webhook does to a pod: pure, so every case is a unit test.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{
        Capabilities, ConfigMapProjection, Container, ContainerPort, DownwardAPIProjection, DownwardAPIVolumeFile,
        EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector, Pod, Probe, ProjectedVolumeSource,
        ResourceFieldSelector, ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext, Volume,
        VolumeMount, VolumeProjection,
    },
    apimachinery::pkg::{api::resource::Quantity, util::intstr::IntOrString},
};
use kube::{
    api::DynamicObject,
    core::{Selector, SelectorExt},
    ResourceExt,
};
use serde_json::{json, Value};

use crate::{
    crd::{self, Undecodable, XLatticeCluster},
    desired::SIDECAR_ADMIN_PORT,
    names::{
        directory_shard_file, directory_shard_name, identity_secret_name, DIRECTORY_KEY, DIRECTORY_SHARDS,
        DIRECTORY_VERSION_ANNOTATION, INJECTED_ANNOTATION, SIDECAR_NAME,
    },
};

pub const IDENTITY_DIR: &str = "/var/run/xlattice/identity";
pub const DIRECTORY_DIR: &str = "/var/run/xlattice/directory";
/// In the directory volume beside the shards, from the pod's `xlattice.io/directory-version`
/// annotation (Downward API): the kubelet swaps it in with the shards, so the sidecar knows
/// which version the operator meant it to serve (`--expected-directory-version`).
pub const DIRECTORY_VERSION_FILE: &str = "directory-version";
pub const CONNECT_LISTEN: &str = "127.0.0.1:15001";
/// Read by the sidecar's `--require-fips` (`xlattice_sidecar::config::SidecarConfig`).
pub const REQUIRE_FIPS_ENV: &str = "XLATTICE_REQUIRE_FIPS";
const IDENTITY_VOLUME: &str = "xlattice-identity";
const DIRECTORY_VOLUME: &str = "xlattice-directory";
/// The API server keeps this much of generateName before the random suffix.
const MAX_GENERATE_NAME: usize = 58;

/// What the operator's flags decide about every injected sidecar (image, resources, FIPS);
/// the rest follows from the cluster's spec (`sidecar_args`). Not to be confused with the
/// sidecar's own `xlattice_sidecar::config::SidecarConfig`, which parses what this injects.
#[derive(Clone, Debug)]
pub struct Injection {
    pub image: String,
    pub pull_policy: Option<String>,
    pub resources: ResourceRequirements,
    /// The operator runs with `--require-fips`: every sidecar it injects refuses to start
    /// outside FIPS mode too (`XLATTICE_REQUIRE_FIPS`), so a pod never runs a non-FIPS
    /// sidecar image by mistake. An env var, not an argument: it follows from the operator's
    /// flags, not the cluster's spec, so it does not make running sidecars outdated.
    pub require_fips: bool,
}

#[derive(Debug, PartialEq)]
pub enum Decision {
    /// Not a member of any cluster, or injected already.
    Skip,
    /// JSON patch operations, and the cluster the pod joins.
    Inject { cluster: String, patch: Vec<Value> },
    /// A pod the webhook cannot serve, with the reason for the user.
    Deny(String),
}

/// The refusal of a pod claimed by a cluster of its namespace that cannot be read (see
/// `crd::decode`): admitting the pod without its sidecar would leave a member without an
/// identity. A broken cluster whose selector does not match the pod stops nothing.
pub fn unreadable_claim(pod: &Pod, unreadable: &[(DynamicObject, Undecodable)]) -> Option<String> {
    let (object, why) = unreadable.iter().find(|(object, _)| {
        crd::decode_selector(object)
            .and_then(|s| Selector::try_from(s).ok())
            .is_some_and(|s| s.matches(pod.labels()))
    })?;
    Some(format!(
        "pod matches the selector of XLatticeCluster {}, which the operator cannot read ({why}): \
         fix that field, and the pod can be created",
        object.name_any()
    ))
}

/// Decides for a pod being created in `clusters`' namespace. `suffix` provides the random
/// name suffix for pods created with generateName only.
pub fn decide(
    pod: &Pod,
    clusters: &[XLatticeCluster],
    config: &Injection,
    suffix: impl FnOnce() -> String,
) -> Decision {
    let matching: Vec<&XLatticeCluster> = clusters
        .iter()
        .filter(|c| c.metadata.deletion_timestamp.is_none())
        .filter(|c| Selector::try_from(c.spec.selector.clone()).is_ok_and(|s| s.matches(pod.labels())))
        .collect();
    let cluster = match matching.as_slice() {
        [] => return Decision::Skip,
        [one] => *one,
        many => {
            let names: Vec<String> = many.iter().map(|c| c.name_any()).collect();
            return Decision::Deny(format!(
                "pod matches the selectors of XLatticeClusters {}; a pod can be a member of one cluster only",
                names.join(", ")
            ));
        }
    };
    let spec = pod.spec.clone().unwrap_or_default();
    let init = spec.init_containers.clone().unwrap_or_default();
    if pod.annotations().contains_key(INJECTED_ANNOTATION) || init.iter().any(|c| c.name == SIDECAR_NAME) {
        return Decision::Skip;
    }
    let (cluster_port, client_port) = (cluster.spec.cluster_port, cluster.spec.client_port);
    for container in spec.containers.iter().chain(&init) {
        for port in container.ports.iter().flatten() {
            let field = match port.container_port {
                p if p == cluster_port => "clusterPort",
                p if p == client_port => "clientPort",
                _ => continue,
            };
            let (up_cluster, up_client) = cluster.spec.upstream_ports();
            return Decision::Deny(format!(
                "container {:?} declares port {} which is spec.{field} of XLatticeCluster {}: the sidecar owns that port; \
                 let the application listen on 127.0.0.1:{} (cluster) and 127.0.0.1:{} (client) instead",
                container.name,
                port.container_port,
                cluster.name_any(),
                up_cluster,
                up_client
            ));
        }
    }

    let mut patch = Vec::new();
    let name = match pod.metadata.name.as_deref().filter(|n| !n.is_empty()) {
        Some(name) => name.to_string(),
        None => match pod.metadata.generate_name.as_deref().filter(|n| !n.is_empty()) {
            // The identity Secret is named after the pod, so the name must be known now;
            // the API server would pick one only after admission.
            Some(prefix) => {
                let prefix = &prefix[..prefix.len().min(MAX_GENERATE_NAME)];
                let name = format!("{prefix}{}", suffix());
                patch.push(json!({"op": "add", "path": "/metadata/name", "value": name}));
                name
            }
            None => return Decision::Deny("pod has neither metadata.name nor metadata.generateName".into()),
        },
    };
    let cluster_name = cluster.name_any();
    if pod.metadata.annotations.is_none() {
        patch.push(json!({"op": "add", "path": "/metadata/annotations", "value": {INJECTED_ANNOTATION: cluster_name}}));
    } else {
        let path = format!(
            "/metadata/annotations/{}",
            INJECTED_ANNOTATION.replace('~', "~0").replace('/', "~1")
        );
        patch.push(json!({"op": "add", "path": path, "value": cluster_name}));
    }
    let sidecar = serde_json::to_value(sidecar(cluster, config)).expect("container serializes");
    if init.is_empty() {
        patch.push(json!({"op": "add", "path": "/spec/initContainers", "value": [sidecar]}));
    } else {
        // First, so that init containers after it can already reach peers through it.
        patch.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": sidecar}));
    }
    let volumes = [
        Volume {
            name: IDENTITY_VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(identity_secret_name(&name)),
                // The kubelet writes Secret files owned by root (by the pod's fsGroup if it
                // has one): 0400 is unreadable for the sidecar's uid 65532, as the real
                // node showed. The volume is mounted into the sidecar container alone, so
                // only its own processes can open the files; an fsGroup would also change
                // the ownership of the application's volumes.
                default_mode: Some(0o444),
                ..Default::default()
            }),
            ..Default::default()
        },
        directory_volume(&cluster_name),
    ]
    .map(|v| serde_json::to_value(v).expect("volume serializes"));
    if spec.volumes.as_ref().is_none_or(|v| v.is_empty()) {
        patch.push(json!({"op": "add", "path": "/spec/volumes", "value": volumes}));
    } else {
        for v in volumes {
            patch.push(json!({"op": "add", "path": "/spec/volumes/-", "value": v}));
        }
    }
    Decision::Inject {
        cluster: cluster_name,
        patch,
    }
}

/// Every shard the directory may have, side by side in one folder. Optional, because
/// only shards with members exist; the kubelet adds a shard's file when it appears.
fn directory_volume(cluster: &str) -> Volume {
    let shard = |k| VolumeProjection {
        config_map: Some(ConfigMapProjection {
            name: directory_shard_name(cluster, k),
            items: Some(vec![KeyToPath {
                key: DIRECTORY_KEY.into(),
                path: directory_shard_file(k),
                mode: None,
            }]),
            optional: Some(true),
        }),
        ..Default::default()
    };
    let version = VolumeProjection {
        downward_api: Some(DownwardAPIProjection {
            items: Some(vec![DownwardAPIVolumeFile {
                path: DIRECTORY_VERSION_FILE.into(),
                field_ref: Some(ObjectFieldSelector {
                    api_version: None,
                    field_path: format!("metadata.annotations['{DIRECTORY_VERSION_ANNOTATION}']"),
                }),
                mode: None,
                resource_field_ref: None,
            }]),
        }),
        ..Default::default()
    };
    Volume {
        name: DIRECTORY_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some((0..DIRECTORY_SHARDS).map(shard).chain([version]).collect()),
            default_mode: None,
        }),
        ..Default::default()
    }
}

/// The sidecar's arguments: all of them follow from the cluster's spec, so a running pod
/// whose sidecar has other arguments was injected for an earlier spec. `--post-quantum` is
/// given only when not the default, so pods injected before it existed stay current.
pub fn sidecar_args(cluster: &XLatticeCluster) -> Vec<String> {
    let (up_cluster, up_client) = cluster.spec.upstream_ports();
    let (cluster_port, client_port) = (cluster.spec.cluster_port, cluster.spec.client_port);
    let post_quantum = cluster.spec.post_quantum;
    let post_quantum = (post_quantum != Default::default())
        .then(|| ["--post-quantum".to_string(), post_quantum.flag().to_string()])
        .into_iter()
        .flatten();
    [
        "run".to_string(),
        "--identity-dir".into(),
        IDENTITY_DIR.into(),
        "--directory".into(),
        DIRECTORY_DIR.into(),
        "--cluster-port".into(),
        cluster_port.to_string(),
        "--client-port".into(),
        client_port.to_string(),
        "--cluster-upstream".into(),
        format!("127.0.0.1:{up_cluster}"),
        "--client-upstream".into(),
        format!("127.0.0.1:{up_client}"),
        "--connect-listen".into(),
        CONNECT_LISTEN.into(),
        "--admin-listen".into(),
        format!("0.0.0.0:{SIDECAR_ADMIN_PORT}"),
    ]
    .into_iter()
    .chain(post_quantum)
    .collect()
}

/// The native sidecar: an init container with restartPolicy Always starts before the app
/// and does not keep a Job from completing.
pub fn sidecar(cluster: &XLatticeCluster, config: &Injection) -> Container {
    let (cluster_port, client_port) = (cluster.spec.cluster_port, cluster.spec.client_port);
    let args = sidecar_args(cluster);
    let port = |name: &str, port: i32| ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    let probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(SIDECAR_ADMIN_PORT),
            ..Default::default()
        }),
        period_seconds: Some(5),
        ..Default::default()
    };
    Container {
        name: SIDECAR_NAME.into(),
        image: Some(config.image.clone()),
        image_pull_policy: config.pull_policy.clone(),
        args: Some(args),
        restart_policy: Some("Always".into()),
        env: Some(
            vec![
                // The sidecar sizes its buffer budget from its memory limit (`sidecar.resources`).
                EnvVar {
                    name: "XLATTICE_MEMORY_LIMIT_MIB".into(),
                    value_from: Some(EnvVarSource {
                        resource_field_ref: Some(ResourceFieldSelector {
                            container_name: None,
                            resource: "limits.memory".into(),
                            divisor: Some(Quantity("1Mi".into())),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ]
            .into_iter()
            .chain(config.require_fips.then(|| EnvVar {
                name: REQUIRE_FIPS_ENV.into(),
                value: Some("true".into()),
                ..Default::default()
            }))
            .collect(),
        ),
        ports: Some(vec![
            port("xl-cluster", cluster_port),
            port("xl-client", client_port),
            port("xl-admin", SIDECAR_ADMIN_PORT),
        ]),
        // The kubelet starts the next container only once a native sidecar's startup
        // probe passes: the application starts with its sidecar serving, so its first
        // CONNECT to a peer works. Ready needs the identity and the directory, which a
        // default kubelet may take a sync period (1 min) to project: ten minutes of grace.
        startup_probe: Some(Probe {
            period_seconds: Some(1),
            failure_threshold: Some(600),
            ..probe("/readyz")
        }),
        readiness_probe: Some(probe("/readyz")),
        liveness_probe: Some(probe("/livez")),
        resources: Some(config.resources.clone()),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: IDENTITY_VOLUME.into(),
                mount_path: IDENTITY_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: DIRECTORY_VOLUME.into(),
                mount_path: DIRECTORY_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
        ]),
        ..Default::default()
    }
}

/// Lowercase letters and digits without vowels or look-alikes, as the API server uses.
pub fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut bytes = [0u8; 5];
    aws_lc_rs::rand::fill(&mut bytes).expect("system RNG failed");
    bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

pub fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("10m".into())),
            ("memory".to_string(), Quantity("32Mi".into())),
        ])),
        limits: Some(BTreeMap::from([("memory".to_string(), Quantity("128Mi".into()))])),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::tests::{cluster, pod};
    use k8s_openapi::api::core::v1::PodSpec;

    fn config() -> Injection {
        Injection {
            image: "xlattice:dev".into(),
            pull_policy: None,
            resources: default_resources(),
            require_fips: false,
        }
    }

    fn app_pod(name: Option<&str>, generate: Option<&str>, ports: &[i32]) -> Pod {
        let mut p = pod(name.unwrap_or_default(), None);
        p.metadata.name = name.map(Into::into);
        p.metadata.generate_name = generate.map(Into::into);
        p.spec = Some(PodSpec {
            containers: vec![Container {
                name: "app".into(),
                ports: Some(
                    ports
                        .iter()
                        .map(|p| ContainerPort {
                            container_port: *p,
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }],
            ..Default::default()
        });
        p
    }

    fn apply(pod: &Pod, patch: Vec<Value>) -> Pod {
        let mut doc = serde_json::to_value(pod).unwrap();
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(patch)).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
        serde_json::from_value(doc).unwrap()
    }

    #[test]
    fn member_pod_gets_the_native_sidecar_and_volumes() {
        let c = cluster(serde_json::json!({}));
        let p = app_pod(Some("store-0"), None, &[17000]);
        let Decision::Inject { cluster: name, patch } = decide(&p, &[c], &config(), || unreachable!()) else {
            panic!()
        };
        assert_eq!(name, "store");
        let out = apply(&p, patch);
        assert_eq!(out.annotations()[INJECTED_ANNOTATION], "store");
        let spec = out.spec.unwrap();
        let sidecar = &spec.init_containers.as_ref().unwrap()[0];
        assert_eq!(sidecar.name, SIDECAR_NAME);
        assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
        let args = sidecar.args.as_ref().unwrap().join(" ");
        assert!(args.contains("--cluster-port 7000 --client-port 8000 --cluster-upstream 127.0.0.1:17000 --client-upstream 127.0.0.1:18000"), "{args}");
        let volumes = spec.volumes.unwrap();
        assert_eq!(
            volumes[0].secret.as_ref().unwrap().secret_name.as_deref(),
            Some("xlattice-id-store-0")
        );
        let sources = volumes[1].projected.as_ref().unwrap().sources.as_ref().unwrap();
        assert_eq!(sources.len(), DIRECTORY_SHARDS + 1, "every shard, then the version");
        let (shards, version) = sources.split_at(DIRECTORY_SHARDS);
        let item = &version[0].downward_api.as_ref().unwrap().items.as_ref().unwrap()[0];
        assert_eq!(item.path, DIRECTORY_VERSION_FILE);
        assert_eq!(
            item.field_ref.as_ref().unwrap().field_path,
            "metadata.annotations['xlattice.io/directory-version']"
        );
        let last = shards[15].config_map.as_ref().unwrap();
        assert_eq!((last.name.as_str(), last.optional), ("store-directory-15", Some(true)));
        assert_eq!(last.items.as_ref().unwrap()[0].path, "shard-15.yaml");
        assert!(args.contains("--directory /var/run/xlattice/directory "), "{args}");
        let limit = sidecar
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == "XLATTICE_MEMORY_LIMIT_MIB");
        let from = limit
            .unwrap()
            .value_from
            .as_ref()
            .unwrap()
            .resource_field_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            (from.resource.as_str(), from.divisor.as_ref().unwrap().0.as_str()),
            ("limits.memory", "1Mi"),
            "the sidecar learns its memory limit, in MiB, from the Downward API"
        );
        let sc = sidecar.security_context.as_ref().unwrap();
        assert_eq!(
            (sc.run_as_user, sc.read_only_root_filesystem),
            (Some(65532), Some(true))
        );
        let startup = sidecar.startup_probe.as_ref().expect("a startup probe");
        assert_eq!(
            startup.http_get.as_ref().unwrap().path.as_deref(),
            Some("/readyz"),
            "the app starts once the sidecar is ready (kubelet ordering of native sidecars)"
        );
    }

    #[test]
    fn generate_name_pods_are_named_by_the_webhook() {
        let c = cluster(serde_json::json!({}));
        let p = app_pod(None, Some("store-7d9f-"), &[]);
        let Decision::Inject { patch, .. } = decide(&p, &[c], &config(), || "x2b4z".into()) else {
            panic!()
        };
        let out = apply(&p, patch);
        assert_eq!(out.metadata.name.as_deref(), Some("store-7d9f-x2b4z"));
        let volumes = out.spec.unwrap().volumes.unwrap();
        assert_eq!(
            volumes[0].secret.as_ref().unwrap().secret_name.as_deref(),
            Some("xlattice-id-store-7d9f-x2b4z")
        );
        assert_eq!(random_suffix().len(), 5);
    }

    #[test]
    fn refusals_and_no_ops() {
        let c = cluster(serde_json::json!({}));
        let mut twin = c.clone();
        twin.metadata.name = Some("twin".into());
        let p = app_pod(Some("a"), None, &[]);
        let Decision::Deny(msg) = decide(&p, &[c.clone(), twin], &config(), String::new) else {
            panic!()
        };
        assert!(msg.contains("store, twin"), "{msg}");

        let Decision::Deny(msg) = decide(
            &app_pod(Some("a"), None, &[8000]),
            std::slice::from_ref(&c),
            &config(),
            String::new,
        ) else {
            panic!()
        };
        assert!(
            msg.contains("spec.clientPort") && msg.contains("127.0.0.1:18000"),
            "{msg}"
        );

        let mut done = p.clone();
        done.metadata.annotations = Some([(INJECTED_ANNOTATION.to_string(), "store".to_string())].into());
        assert_eq!(
            decide(&done, std::slice::from_ref(&c), &config(), String::new),
            Decision::Skip
        );
        let mut stranger = p;
        stranger.metadata.labels = None;
        assert_eq!(
            decide(&stranger, std::slice::from_ref(&c), &config(), String::new),
            Decision::Skip
        );

        // A cluster the operator cannot read refuses the pods it claims, naming the field,
        // and nothing else.
        let mut broken: DynamicObject = serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
        broken.data["spec"]["service"] = json!({"type": "Headless"});
        let why = crd::decode(&broken).unwrap_err();
        let unreadable = [(broken, why)];
        let msg = unreadable_claim(&app_pod(Some("store-0"), None, &[]), &unreadable).unwrap();
        assert!(msg.contains("spec.service.type"), "{msg}");
        assert_eq!(unreadable_claim(&stranger, &unreadable), None);
    }
}

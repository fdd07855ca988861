//! `--probe-network-policy`: the one part of `check` that creates objects, all in a
//! temporary namespace deleted afterwards. A pod dials a listening pod with no policy
//! (must connect), then with a deny-all ingress policy on the listener (must not).

use std::time::{Duration, Instant};

use k8s_openapi::api::{
    core::v1::{
        Capabilities, Container, Namespace, Pod, PodSecurityContext, PodSpec, Probe, SeccompProfile, SecurityContext,
        TCPSocketAction,
    },
    networking::v1::{NetworkPolicy, NetworkPolicySpec},
};
use k8s_openapi::apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString};
use kube::{
    api::{DeleteParams, ObjectMeta, PostParams},
    Api, Client,
};

use super::observe::{describe, Read};

const PORT: i32 = 8080;
const ROLE: &str = "xlattice.io/probe";
/// Pod start and each dial's patience; a policy is programmed a little after creation.
const WAIT: Duration = Duration::from_secs(90);

/// What the two dials found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyProbe {
    pub open_without_policy: bool,
    pub blocked_with_policy: bool,
}

/// Runs the probe in a fresh namespace with `image`, and deletes the namespace whatever
/// the outcome.
pub async fn network_policy(client: &Client, image: &str, pull_policy: Option<String>) -> Read<PolicyProbe> {
    let ns = format!("xlattice-check-{:08x}", std::process::id() ^ now_nanos());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(ns.clone()),
            // The probe pods are nobody's members: the webhook never sees them.
            labels: Some([("xlattice.io/injection".to_string(), "disabled".to_string())].into()),
            ..Default::default()
        },
        ..Default::default()
    };
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .map_err(|e| format!("create namespace {ns}: {}", describe(&e)))?;
    let pods = Probes {
        api: Api::namespaced(client.clone(), &ns),
        image: image.to_string(),
        pull_policy,
    };
    let found = probe(client, &ns, &pods).await;
    let _ = namespaces.delete(&ns, &DeleteParams::background()).await;
    found
}

struct Probes {
    api: Api<Pod>,
    image: String,
    pull_policy: Option<String>,
}

async fn probe(client: &Client, ns: &str, pods: &Probes) -> Read<PolicyProbe> {
    pods.create("server", "server", &["probe", "listen", "--port", &PORT.to_string()])
        .await?;
    let server = pods
        .wait("server", |p| {
            ready(p).then(|| p.status.as_ref()?.pod_ip.clone()).flatten()
        })
        .await?;
    let address = format!("{server}:{PORT}");
    let open_without_policy = pods.dial("dial-open", &address, "open").await?;
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
    policies
        .create(&PostParams::default(), &deny_all())
        .await
        .map_err(|e| format!("create NetworkPolicy: {}", describe(&e)))?;
    let blocked_with_policy = pods.dial("dial-blocked", &address, "blocked").await?;
    Ok(PolicyProbe {
        open_without_policy,
        blocked_with_policy,
    })
}

// === impl Probes ===

impl Probes {
    async fn create(&self, name: &str, role: &str, args: &[&str]) -> Read<()> {
        let pod = probe_pod(name, role, &self.image, self.pull_policy.clone(), args);
        self.api
            .create(&PostParams::default(), &pod)
            .await
            .map(|_| ())
            .map_err(|e| format!("create pod {name}: {}", describe(&e)))
    }

    /// Whether a dialer pod expecting `expect` got it (it exits 0 only then).
    async fn dial(&self, name: &str, address: &str, expect: &str) -> Read<bool> {
        self.create(
            name,
            "dialer",
            &["probe", "dial", address, "--expect", expect, "--within", "20s"],
        )
        .await?;
        self.wait(name, |p| match p.status.as_ref()?.phase.as_deref() {
            Some("Succeeded") => Some(true),
            Some("Failed") => Some(false),
            _ => None,
        })
        .await
    }

    /// Polls pod `name` until `done` yields.
    async fn wait<T>(&self, name: &str, done: impl Fn(&Pod) -> Option<T>) -> Read<T> {
        let start = Instant::now();
        loop {
            let pod = self.api.get_opt(name).await.map_err(|e| describe(&e))?;
            if let Some(found) = pod.as_ref().and_then(&done) {
                return Ok(found);
            }
            if start.elapsed() > WAIT {
                let phase = pod.and_then(|p| p.status?.phase).unwrap_or_default();
                return Err(format!(
                    "pod {name} still {phase} after {WAIT:?} (can the nodes pull the image?)"
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

fn ready(pod: &Pod) -> bool {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A pod that passes the "restricted" Pod Security Standard.
fn probe_pod(name: &str, role: &str, image: &str, pull_policy: Option<String>, args: &[&str]) -> Pod {
    let readiness = (role == "server").then(|| Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::Int(PORT),
            ..Default::default()
        }),
        period_seconds: Some(1),
        ..Default::default()
    });
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([(ROLE.to_string(), role.to_string())].into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            automount_service_account_token: Some(false),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(65532),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            containers: vec![Container {
                name: "probe".into(),
                image: Some(image.into()),
                image_pull_policy: pull_policy,
                args: Some(args.iter().map(|a| a.to_string()).collect()),
                readiness_probe: readiness,
                security_context: Some(SecurityContext {
                    allow_privilege_escalation: Some(false),
                    read_only_root_filesystem: Some(true),
                    capabilities: Some(Capabilities {
                        drop: Some(vec!["ALL".into()]),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            termination_grace_period_seconds: Some(0),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Ingress to the listener from nowhere.
fn deny_all() -> NetworkPolicy {
    NetworkPolicy {
        metadata: ObjectMeta {
            name: Some("deny-all".into()),
            ..Default::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some([(ROLE.to_string(), "server".to_string())].into()),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![]),
            ..Default::default()
        }),
    }
}

fn now_nanos() -> u32 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.map(|d| d.subsec_nanos()).unwrap_or_default()
}

//! Identity keys at rest, read straight from etcd under a real kube-apiserver: no minted
//! identity shows its keys or its NodeID in the clear (the project's control plane runs
//! with Secret encryption, as docs/install.md tells users to), while the directory's
//! ConfigMaps, public by design, show the same NodeIDs when read the same way: the read
//! itself is shown to see plaintext where there is some.

mod support;

use std::{path::Path, time::Duration};

use k8s_openapi::{
    api::core::v1::{ConfigMap, Pod},
    ByteString,
};
use kube::{
    api::{ListParams, PostParams},
    Api,
};
use serde::Deserialize;
use serde_json::json;
use support::*;
use xlattice_operator::XLatticeCluster;

const MEMBERS: usize = 3;

/// etcd's client URL: `XLATTICE_ETCD_ENDPOINT`, else from `ports` beside the kubeconfig
/// (hack/control-plane.sh writes it). This test needs etcd itself, not only an API server.
fn etcd_port(kubeconfig: &Path) -> u16 {
    if let Ok(endpoint) = std::env::var("XLATTICE_ETCD_ENDPOINT") {
        return endpoint
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("XLATTICE_ETCD_ENDPOINT host:port");
    }
    let ports = kubeconfig.with_file_name("ports");
    let text = std::fs::read_to_string(&ports).unwrap_or_else(|e| {
        panic!(
            "reading etcd's port from {}: {e}; this test reads etcd directly: run it against \
             hack/control-plane.sh's control plane, or set XLATTICE_ETCD_ENDPOINT=127.0.0.1:PORT",
            ports.display()
        )
    });
    text.lines()
        .find_map(|l| l.strip_prefix("ETCD_PORT="))
        .and_then(|p| p.parse().ok())
        .expect("ETCD_PORT= in the ports file")
}

#[derive(Deserialize)]
struct Range {
    #[serde(default)]
    kvs: Vec<Kv>,
}

#[derive(Deserialize)]
struct Kv {
    value: ByteString,
}

/// The bytes etcd holds under `key`, through its JSON gateway (one HTTP/1.0 request on
/// loopback: no client dependency for it).
async fn etcd_get(port: u16, key: &str) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = json!({ "key": ByteString(key.as_bytes().to_vec()) }).to_string();
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("etcd reachable");
    let request = format!(
        "POST /v3/kv/range HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8(out).expect("etcd's gateway answers JSON");
    let (head, json) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "etcd: {head}"
    );
    let range: Range = serde_json::from_str(json).expect("a range response");
    let kv = range
        .kvs
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("etcd holds no {key}"));
    kv.value.0
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// What of a Secret's value would show it in the clear: the whole value, and each line of
/// 16 characters or more (a PEM's base64 body lines, so a partial leak is caught too).
fn revealing_parts(value: &[u8]) -> Vec<Vec<u8>> {
    let mut parts = vec![value.to_vec()];
    parts.extend(
        value
            .split(|b| *b == b'\n')
            .filter(|l| l.len() >= 16)
            .map(<[u8]>::to_vec),
    );
    parts
}

#[tokio::test]
async fn identity_keys_are_not_in_etcd_in_the_clear() {
    let Some((h, _operator)) = Harness::start("rest").await else {
        return;
    };
    let port = etcd_port(&h.path);
    let pods: Api<Pod> = Api::namespaced(h.admin.clone(), &h.ns);
    for i in 0..MEMBERS {
        pods.create(&PostParams::default(), &member_pod(&format!("rest-{i}"), "rest", &[]))
            .await
            .unwrap();
    }
    let cluster: XLatticeCluster = serde_json::from_value(json!({
        "apiVersion": "xlattice.io/v1alpha1", "kind": "XLatticeCluster",
        "metadata": {"name": "rest"},
        "spec": {"selector": {"matchLabels": {"app": "rest"}}, "clusterPort": 7000, "clientPort": 8000},
    }))
    .unwrap();
    apply(&Api::namespaced(h.admin.clone(), &h.ns), &cluster).await;
    let secrets = Api::namespaced(h.admin.clone(), &h.ns);
    let minted = wait_for("every member's identity minted", Duration::from_secs(120), || async {
        let found = identity_secrets(&secrets, "rest").await;
        (found.len() == MEMBERS).then_some(found)
    })
    .await;

    let mut node_ids = Vec::new();
    for secret in minted.values() {
        let name = secret.metadata.name.as_deref().expect("a named Secret");
        let stored = etcd_get(port, &format!("/registry/secrets/{}/{name}", h.ns)).await;
        let printable = stored.iter().take_while(|b| b.is_ascii_graphic()).count();
        let prefix = String::from_utf8_lossy(&stored[..printable.min(40)]).into_owned();
        assert!(
            stored.starts_with(b"k8s:enc:"),
            "Secret {name} is stored without an encryption prefix (starts {prefix:?}): is the API server run with --encryption-provider-config?"
        );
        assert!(
            !contains(&stored, b"PRIVATE KEY"),
            "Secret {name}: a PEM header in the clear in etcd"
        );
        for (key, value) in secret.data.iter().flatten() {
            for part in revealing_parts(&value.0) {
                assert!(
                    !contains(&stored, &part),
                    "Secret {name}: part of {key} in the clear in etcd"
                );
            }
        }
        let node_id = secret.data.as_ref().and_then(|d| d.get("node-id")).expect("a node-id");
        node_ids.push(String::from_utf8(node_id.0.clone()).unwrap().trim().to_string());
        eprintln!("Secret {name} in etcd: {} bytes, prefix {prefix:?}", stored.len());
    }

    // The control: the directory publishes those NodeIDs, and the same read finds them in
    // the clear in its ConfigMaps (not encrypted: public by design).
    let wanted = node_ids.clone();
    let shards = wait_for("the directory publishes every member", Duration::from_secs(60), || {
        let configmaps: Api<ConfigMap> = Api::namespaced(h.admin.clone(), &h.ns);
        let wanted = wanted.clone();
        async move {
            let list = configmaps.list(&ListParams::default()).await.ok()?;
            let holding: Vec<_> = list
                .items
                .into_iter()
                .filter(|cm| {
                    cm.data
                        .iter()
                        .flatten()
                        .any(|(_, v)| wanted.iter().any(|id| v.contains(id.as_str())))
                })
                .collect();
            let all = wanted.iter().all(|id| {
                holding
                    .iter()
                    .any(|cm| cm.data.iter().flatten().any(|(_, v)| v.contains(id.as_str())))
            });
            all.then_some(holding)
        }
    })
    .await;
    let mut seen = 0;
    for cm in &shards {
        let name = cm.metadata.name.as_deref().unwrap();
        let stored = etcd_get(port, &format!("/registry/configmaps/{}/{name}", h.ns)).await;
        seen += node_ids.iter().filter(|id| contains(&stored, id.as_bytes())).count();
    }
    assert_eq!(
        seen, MEMBERS,
        "every NodeID read in the clear from the directory's ConfigMaps in etcd"
    );
}

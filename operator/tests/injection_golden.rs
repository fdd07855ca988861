//! Golden files for injection: what the webhook does to each pod of
//! `tests/fixtures/injection/*.yaml` (clusters and a pod) is compared byte for byte with the
//! `.golden.json` beside it, so any change to the injected sidecar, volumes or refusals shows
//! up in review as a diff. After an intended change:
//! `XLATTICE_UPDATE_GOLDEN=1 cargo test -p xlattice-operator --test injection_golden`.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use serde_json::{json, Value};
use xlattice_operator::{
    webhook::inject::{decide, default_resources, Decision, Injection},
    XLatticeCluster, XLatticeClusterSpec,
};

#[derive(Deserialize)]
struct Case {
    clusters: Vec<NamedCluster>,
    pod: Pod,
}

#[derive(Deserialize)]
struct NamedCluster {
    name: String,
    spec: XLatticeClusterSpec,
}

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/injection");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    cases.sort();
    cases
}

/// The decision as a document: what a reviewer reads in the golden file.
fn render(decision: Decision) -> Value {
    match decision {
        Decision::Skip => json!({"decision": "skip"}),
        Decision::Deny(reason) => json!({"decision": "deny", "reason": reason}),
        Decision::Inject { cluster, patch } => json!({"decision": "inject", "cluster": cluster, "patch": patch}),
    }
}

#[test]
fn injection_matches_the_golden_files() {
    let injection = Injection {
        image: "ghcr.io/xlattice/xlattice-sidecar:golden".into(),
        pull_policy: None,
        resources: default_resources(),
        require_fips: false,
    };
    let update = std::env::var_os("XLATTICE_UPDATE_GOLDEN").is_some();
    let cases = fixtures();
    assert!(cases.len() >= 6, "the fixtures are found: {cases:?}");
    let mut stale = Vec::new();
    for path in cases {
        let case: Case = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let clusters: Vec<XLatticeCluster> = case
            .clusters
            .into_iter()
            .map(|c| {
                let mut cluster = XLatticeCluster::new(&c.name, c.spec);
                cluster.metadata.namespace = Some("demo".into());
                cluster
            })
            .collect();
        // A fixed suffix: the golden file must not change from run to run.
        let decision = decide(&case.pod, &clusters, &injection, || "g0ld3".into());
        let got = serde_json::to_string_pretty(&render(decision)).unwrap() + "\n";
        let golden = path.with_extension("golden.json");
        if update {
            std::fs::write(&golden, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_default();
        if got != want {
            stale.push(format!("{}:\n{got}", golden.display()));
        }
    }
    assert!(
        stale.is_empty(),
        "injection differs from its golden file (if intended: XLATTICE_UPDATE_GOLDEN=1):\n{}",
        stale.join("\n")
    );
}

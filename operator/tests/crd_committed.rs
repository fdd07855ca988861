//! CI guard: the CRD committed under deploy/ and charts/ is the one the code generates.
//! On failure, regenerate with:
//!   cargo run -p xlattice-operator -- crd > deploy/crds/xlatticeclusters.yaml
//!   cp deploy/crds/xlatticeclusters.yaml charts/xlattice-operator/crds/

use std::path::Path;

#[test]
fn committed_crd_yaml_matches_the_code() {
    let generated = xlattice_operator::crd_yaml();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for file in [
        "deploy/crds/xlatticeclusters.yaml",
        "charts/xlattice-operator/crds/xlatticeclusters.yaml",
    ] {
        let committed = std::fs::read_to_string(root.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(
            committed == generated,
            "{file} differs from `xlattice-operator crd`; regenerate it:\n  \
             cargo run -p xlattice-operator -- crd > {file}"
        );
    }
}

/// kubectl and helm read YAML as YAML 1.1, where a plain `Off`, `On`, `Yes`, `No`, `Y` or `N`
/// is a boolean: an enum value spelt so would reach the API server as `false` (it did:
/// `postQuantum: Off` became `enum: [false, ...]`). No such plain scalar may be in the CRD.
#[test]
fn the_crd_has_no_value_yaml_1_1_reads_as_a_boolean() {
    // Booleans in YAML 1.1 only (true and false are booleans in 1.2 too, and meant so).
    const BOOLEANS_1_1: [&str; 6] = ["y", "n", "yes", "no", "on", "off"];
    let generated = xlattice_operator::crd_yaml();
    for (n, line) in generated.lines().enumerate() {
        let value = line
            .trim()
            .trim_start_matches("- ")
            .rsplit_once(": ")
            .map_or(line.trim().trim_start_matches("- "), |(_, v)| v);
        assert!(
            !BOOLEANS_1_1.contains(&value.to_ascii_lowercase().as_str()),
            "line {}: {line:?} is a boolean to YAML 1.1 readers (kubectl, helm): quote it or rename it",
            n + 1
        );
    }
}

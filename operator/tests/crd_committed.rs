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

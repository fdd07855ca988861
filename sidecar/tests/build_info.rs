//! /metrics says which cryptographic module runs: fips="true" exactly in the fips build.

#[test]
fn build_info_says_whether_fips_is_in_force() {
    let text = xlattice_sidecar::metrics::Metrics::default().render();
    let line = text
        .lines()
        .find(|l| l.starts_with("xlattice_sidecar_build_info{"))
        .expect("xlattice_sidecar_build_info exposed");
    eprintln!("{line}");
    assert!(line.contains(&format!("fips=\"{}\"", cfg!(feature = "fips"))), "{line}");
    assert!(line.ends_with(" 1"), "{line}");
}

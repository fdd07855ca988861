//! Which cryptographic module this binary runs on: for the startup check (`--require-fips`)
//! and for reporting it (`xlattice --version`, the build-info metrics).

/// Whether this binary was built with the `fips` feature (aws-lc-fips-sys linked).
pub const FIPS_BUILD: bool = cfg!(feature = "fips");

/// Whether the AWS-LC FIPS module is linked and in FIPS mode (its power-on self-tests and
/// integrity check passed; a failure there aborts the process before this returns).
pub fn fips_in_force() -> bool {
    aws_lc_rs::try_fips_mode().is_ok()
}

/// The linked AWS-LC, e.g. `AWS-LC 1.71.0` or `AWS-LC FIPS 4.2.0`.
pub fn module() -> String {
    if FIPS_BUILD {
        format!("AWS-LC FIPS {}", aws_lc_rs::awslc_version())
    } else {
        format!("AWS-LC {}", aws_lc_rs::awslc_version())
    }
}

/// One line for `--version` and the logs, e.g. `crypto: AWS-LC FIPS 4.2.0, FIPS mode: on`.
pub fn describe() -> String {
    format!(
        "crypto: {}, FIPS mode: {}",
        module(),
        if fips_in_force() { "on" } else { "off" }
    )
}

/// The labels of the binaries' `*_build_info` gauge (always 1): `version` (the caller's
/// crate version), `crypto` (`module()`) and `fips` (`fips_in_force()`).
pub fn build_info_labels(version: &str) -> Vec<(&'static str, String)> {
    vec![
        ("version", version.to_string()),
        ("crypto", module()),
        ("fips", fips_in_force().to_string()),
    ]
}

#[derive(Debug, thiserror::Error)]
#[error("FIPS mode was required but is not in force ({0}); use an image built with `--features fips`")]
pub struct FipsNotInForce(String);

/// The startup check: `Err` when FIPS was asked for and this process is not in FIPS mode.
pub fn require_fips(required: bool) -> Result<(), FipsNotInForce> {
    if required && !fips_in_force() {
        return Err(FipsNotInForce(describe()));
    }
    Ok(())
}

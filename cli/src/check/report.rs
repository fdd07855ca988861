//! What `check` found: one line per check, a hint for each that did not pass, as text for
//! people or JSON for scripts. The exit status is decided here too.

use std::fmt::Write as _;

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    /// Works today, needs attention (a certificate near expiry, a sidecar catching up).
    Warn,
    Fail,
    /// Could not be checked (nothing to check, or not permitted): says why, fails nothing.
    Skip,
}

/// One check's result: `check` is a stable name scripts can match on, `subject` what it
/// looked at (a cluster `namespace/name`, the operator, the API server).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub subject: String,
    pub verdict: Verdict,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Finding {
    pub fn pass(check: &'static str, subject: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(check, subject, Verdict::Pass, message, None::<String>)
    }

    pub fn skip(check: &'static str, subject: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(check, subject, Verdict::Skip, message, None::<String>)
    }

    pub fn fail(
        check: &'static str,
        subject: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Self::new(check, subject, Verdict::Fail, message, Some(hint))
    }

    pub fn warn(
        check: &'static str,
        subject: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Self::new(check, subject, Verdict::Warn, message, Some(hint))
    }

    fn new(
        check: &'static str,
        subject: impl Into<String>,
        verdict: Verdict,
        message: impl Into<String>,
        hint: Option<impl Into<String>>,
    ) -> Self {
        Self {
            check,
            subject: subject.into(),
            verdict,
            message: message.into(),
            hint: hint.map(Into::into),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub passed: usize,
    pub warnings: usize,
    pub failed: usize,
    pub skipped: usize,
}

// === impl Report ===

impl Report {
    pub fn new(findings: Vec<Finding>) -> Self {
        let count = |v: Verdict| findings.iter().filter(|f| f.verdict == v).count();
        Self {
            passed: count(Verdict::Pass),
            warnings: count(Verdict::Warn),
            failed: count(Verdict::Fail),
            skipped: count(Verdict::Skip),
            findings,
        }
    }

    /// Any failure fails the command; warnings and skips do not.
    pub fn success(&self) -> bool {
        self.failed == 0
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serializes")
    }

    /// `PASS  check  subject: message`, the hint indented under anything not passed.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            let tag = match f.verdict {
                Verdict::Pass => "PASS",
                Verdict::Warn => "WARN",
                Verdict::Fail => "FAIL",
                Verdict::Skip => "SKIP",
            };
            let _ = writeln!(out, "{tag}  {:<20} {}: {}", f.check, f.subject, f.message);
            if let Some(hint) = &f.hint {
                let _ = writeln!(out, "      hint: {hint}");
            }
        }
        let _ = writeln!(
            out,
            "{} passed, {} warnings, {} failed, {} skipped",
            self.passed, self.warnings, self.failed, self.skipped
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_failure_fails_and_the_hint_is_printed_under_it() {
        let report = Report::new(vec![
            Finding::pass("crd", "xlatticeclusters.xlattice.io", "installed"),
            Finding::warn(
                "webhook-cert",
                "xlattice-system",
                "expires in 5 days",
                "renewal is late",
            ),
            Finding::fail("operator", "xlattice-system", "no pod is ready", "kubectl get pods"),
        ]);
        assert!(!report.success());
        assert_eq!((report.passed, report.warnings, report.failed), (1, 1, 1));
        let text = report.text();
        assert!(text.contains("FAIL  operator"), "{text}");
        assert!(text.contains("      hint: kubectl get pods"), "{text}");
        assert!(text.ends_with("1 passed, 1 warnings, 1 failed, 0 skipped\n"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&report.json()).unwrap();
        assert_eq!(json["findings"][2]["verdict"], "fail");
        assert_eq!(json["failed"], 1);
    }

    #[test]
    fn warnings_and_skips_do_not_fail() {
        let report = Report::new(vec![
            Finding::warn("webhook-cert", "x", "soon", "renew"),
            Finding::skip("network-policy", "x", "not asked for"),
        ]);
        assert!(report.success());
    }
}

//! Pure: whether the API server encrypts Secrets at rest, as far as its own metrics show.
//! Every identity's private keys live in a Secret, which etcd keeps in the clear unless the
//! API server runs with `--encryption-provider-config`. Nothing in the API says which
//! providers are configured; what is visible is `apiserver_storage_transformation_operations_total`,
//! counted per resource and per storage prefix on each write (`to_storage`) and read
//! (`from_storage`) since the API server started: `k8s:enc:<provider>:v1:` when encrypted,
//! an empty prefix when written in the clear by an `identity` listed first, and `identity`
//! when a read found data stored in the clear.

use super::{observe::Read, report::Finding};

const CHECK: &str = "secrets-at-rest";
const SUBJECT: &str = "Secrets";
const OPERATIONS: &str = "apiserver_storage_transformation_operations_total";
/// Present once the API server has loaded an encryption configuration.
const CONFIG_INFO: &str = "apiserver_encryption_config_controller_last_config_info";
const HINT: &str = "run the API server with --encryption-provider-config covering secrets (KMS v2, or secretbox with a static key): docs/install.md, \"Identity keys at rest\"";

/// What the Secrets' storage operations since the API server started show.
#[derive(Debug, Default, PartialEq)]
struct Seen {
    /// Writes by prefix `k8s:enc:...`: the first such prefix, and how many.
    encrypted_writes: Option<(String, f64)>,
    /// Writes with the empty prefix: an `identity` provider first.
    clear_writes: f64,
    /// Reads that found a Secret stored in the clear.
    clear_reads: f64,
    config_loaded: bool,
}

pub fn finding(metrics: &Read<String>) -> Finding {
    let text = match metrics {
        Ok(text) => text,
        Err(e) => {
            return Finding::skip(
                CHECK,
                SUBJECT,
                format!("cannot read the API server's /metrics (needs get on the non-resource URL /metrics): {e}"),
            )
        }
    };
    let seen = seen(text);
    match &seen.encrypted_writes {
        _ if seen.clear_writes > 0.0 => Finding::warn(
            CHECK,
            SUBJECT,
            format!(
                "{} Secret writes since the API server started were stored in the clear (its encryption configuration lists identity first)",
                seen.clear_writes
            ),
            HINT,
        ),
        Some((prefix, _)) if seen.clear_reads > 0.0 => Finding::warn(
            CHECK,
            SUBJECT,
            format!(
                "written encrypted ({prefix}), but {} reads found Secrets still stored in the clear (written before encryption was on)",
                seen.clear_reads
            ),
            "rewrite every Secret once: kubectl get secrets -A -o json | kubectl replace -f -",
        ),
        Some((prefix, writes)) => Finding::pass(
            CHECK,
            SUBJECT,
            format!("encrypted at rest by this API server ({prefix}; {writes} writes since it started)"),
        ),
        None if seen.config_loaded => Finding::warn(
            CHECK,
            SUBJECT,
            "an encryption configuration is loaded, but no Secret has been written through it since the API server started: whether it covers Secrets is not shown",
            HINT,
        ),
        None => Finding::warn(
            CHECK,
            SUBJECT,
            "no encryption at rest seen on this API server: identity keys sit in etcd in the clear, unless your provider encrypts etcd's storage",
            HINT,
        ),
    }
}

fn seen(text: &str) -> Seen {
    let mut seen = Seen::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if line.starts_with(CONFIG_INFO) {
            seen.config_loaded = true;
            continue;
        }
        let Some(rest) = line.strip_prefix(OPERATIONS).and_then(|r| r.strip_prefix('{')) else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let label = |name: &str| label_value(labels, name);
        if label("resource") != Some("secrets") || label("status") != Some("OK") {
            continue;
        }
        match (label("transformation_type"), label("transformer_prefix")) {
            (Some("to_storage"), Some("")) => seen.clear_writes += value,
            (Some("to_storage"), Some(prefix)) if prefix.starts_with("k8s:enc:") => {
                let entry = seen.encrypted_writes.get_or_insert_with(|| (prefix.to_string(), 0.0));
                entry.1 += value;
            }
            (Some("from_storage"), Some("identity")) => seen.clear_reads += value,
            _ => {}
        }
    }
    seen
}

/// The value of `name="..."` in a Prometheus label set (the values here hold no quotes).
fn label_value<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
    let len = labels[start..].find('"')?;
    Some(&labels[start..start + len])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Verdict;

    fn ops(kind: &str, prefix: &str, n: u32) -> String {
        format!("{OPERATIONS}{{resource=\"secrets\",status=\"OK\",transformation_type=\"{kind}\",transformer_prefix=\"{prefix}\"}} {n}\n")
    }

    fn verdict(text: String) -> (Verdict, String) {
        let f = finding(&Ok(text));
        (f.verdict, f.message)
    }

    #[test]
    fn encrypted_writes_pass_nested_key_prefixes_ignored() {
        // As a secretbox API server reports it (the key's own prefix counted beside).
        let text = ops("to_storage", "k8s:enc:secretbox:v1:", 13)
            + &ops("to_storage", "key1:", 13)
            + &ops("from_storage", "k8s:enc:secretbox:v1:", 4);
        let (v, message) = verdict(text);
        assert_eq!(v, Verdict::Pass, "{message}");
        assert!(message.contains("k8s:enc:secretbox:v1:; 13 writes"), "{message}");
    }

    #[test]
    fn clear_writes_or_leftover_clear_secrets_warn() {
        let (v, message) = verdict(ops("to_storage", "", 2) + &ops("from_storage", "identity", 2));
        assert_eq!(v, Verdict::Warn);
        assert!(
            message.contains("2 Secret writes") && message.contains("identity first"),
            "{message}"
        );
        let (v, message) = verdict(ops("to_storage", "k8s:enc:kms:v2:", 5) + &ops("from_storage", "identity", 3));
        assert_eq!(v, Verdict::Warn);
        assert!(
            message.contains("3 reads found Secrets still stored in the clear"),
            "{message}"
        );
    }

    #[test]
    fn nothing_seen_warns_other_resources_and_failed_ops_do_not_count() {
        let other = format!("{OPERATIONS}{{resource=\"configmaps\",status=\"OK\",transformation_type=\"to_storage\",transformer_prefix=\"k8s:enc:aescbc:v1:\"}} 9\n")
            + &format!("{OPERATIONS}{{resource=\"secrets\",status=\"Internal\",transformation_type=\"to_storage\",transformer_prefix=\"k8s:enc:aescbc:v1:\"}} 1\n");
        let (v, message) = verdict(other.clone());
        assert_eq!(v, Verdict::Warn);
        assert!(message.contains("no encryption at rest seen"), "{message}");
        let (v, message) = verdict(other + CONFIG_INFO + "{hash=\"sha256:00\"} 1\n");
        assert_eq!(v, Verdict::Warn);
        assert!(message.contains("configuration is loaded"), "{message}");
    }

    #[test]
    fn unreadable_metrics_skip_naming_the_permission() {
        let f = finding(&Err("forbidden: no".into()));
        assert_eq!(f.verdict, Verdict::Skip);
        assert!(f.message.contains("non-resource URL /metrics") && f.message.contains("forbidden"));
    }
}

//! Key rotation: which identities are due for new keys (same NodeID), and what a Secret
//! records so that a restart or a resync never rotates twice.
//!
//! On demand: the annotation `xlattice.io/rotate: <token>` on the cluster (every member) or
//! on a member pod (that member). A member rotates when a token differs from the one its
//! Secret recorded (`xlattice.io/rotated-for-cluster`, `xlattice.io/rotated-for-pod`).
//! On a period: when `xlattice.io/keys-created-at` (set at mint and at every rotation, else
//! the Secret's creation time) is older than `spec.rotation.period`.
//! Every mint and every rotation records the current tokens and the time, so a brand-new
//! identity is not rotated at once for a token that predates it.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{api::core::v1::Secret, jiff::Timestamp};
use kube::ResourceExt;

use crate::names::{KEYS_CREATED_AT_ANNOTATION, ROTATED_FOR_CLUSTER_ANNOTATION, ROTATED_FOR_POD_ANNOTATION};

/// The shortest period honoured: a smaller one (or zero) would rotate on every reconcile.
pub const MIN_PERIOD: Duration = Duration::from_secs(1);

/// The rotation tokens that apply to one member.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    /// `xlattice.io/rotate` on the cluster.
    pub cluster: Option<String>,
    /// `xlattice.io/rotate` on the member pod.
    pub pod: Option<String>,
}

/// Why a member's keys are rotated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    ClusterToken(String),
    PodToken(String),
    Period,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ClusterToken(t) => write!(f, "cluster annotation xlattice.io/rotate={t}"),
            Self::PodToken(t) => write!(f, "pod annotation xlattice.io/rotate={t}"),
            Self::Period => f.write_str("spec.rotation.period elapsed"),
        }
    }
}

/// The verdict for one identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Due {
    Now(Reason),
    /// Not yet: the period elapses after this long.
    Later(Duration),
    Never,
}

/// Annotations a Secret carries after a mint or a rotation at `now` under `tokens`.
pub fn stamp(tokens: &Tokens, now: Timestamp) -> BTreeMap<String, String> {
    let mut out = BTreeMap::from([(KEYS_CREATED_AT_ANNOTATION.to_string(), now.to_string())]);
    if let Some(t) = &tokens.cluster {
        out.insert(ROTATED_FOR_CLUSTER_ANNOTATION.into(), t.clone());
    }
    if let Some(t) = &tokens.pod {
        out.insert(ROTATED_FOR_POD_ANNOTATION.into(), t.clone());
    }
    out
}

/// When the keys of `secret` were made: the annotation, else the Secret's creation.
pub fn keys_created_at(secret: &Secret) -> Option<Timestamp> {
    secret
        .annotations()
        .get(KEYS_CREATED_AT_ANNOTATION)
        .and_then(|s| s.parse().ok())
        .or_else(|| secret.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// Whether `secret` is due for new keys. Tokens win over the period (they say why).
/// A token that is absent never rotates: removing the annotation changes nothing.
pub fn due(secret: &Secret, tokens: &Tokens, period: Option<Duration>, now: Timestamp) -> Due {
    let recorded = secret.annotations();
    if let Some(t) = &tokens.cluster {
        if recorded.get(ROTATED_FOR_CLUSTER_ANNOTATION) != Some(t) {
            return Due::Now(Reason::ClusterToken(t.clone()));
        }
    }
    if let Some(t) = &tokens.pod {
        if recorded.get(ROTATED_FOR_POD_ANNOTATION) != Some(t) {
            return Due::Now(Reason::PodToken(t.clone()));
        }
    }
    let Some(period) = period else {
        return Due::Never;
    };
    let period = period.max(MIN_PERIOD);
    let Some(created) = keys_created_at(secret) else {
        return Due::Now(Reason::Period);
    };
    let age = now.duration_since(created);
    // A clock that runs behind the Secret's stamp counts as "just made".
    let age = Duration::try_from(age).unwrap_or_default();
    match period.checked_sub(age) {
        Some(left) if !left.is_zero() => Due::Later(left),
        _ => Due::Now(Reason::Period),
    }
}

/// The longest period honoured; the schema refuses longer ones, and an object written
/// before that rule is refused here instead of overflowing.
pub const MAX_PERIOD: Duration = Duration::from_secs(876_000 * 3600);

/// `spec.rotation.period` as a std Duration; negative or absent: no periodic rotation.
/// An unusable value is an error naming the field (the reconcile reports it on status).
pub fn period(spec: &crate::crd::XLatticeClusterSpec) -> Result<Option<Duration>, String> {
    let Some(rotation) = &spec.rotation else {
        return Ok(None);
    };
    parse_period(&rotation.period).map_err(|e| format!("spec.rotation.period: {:?} {e}", rotation.period))
}

/// A Go duration ("1h30m", "-1s", "0", "1.5h"), bounded by `MAX_PERIOD`; `None` when
/// negative. Written here rather than borrowed so that no value can overflow or panic.
pub fn parse_period(text: &str) -> Result<Option<Duration>, String> {
    let negative = text.starts_with('-');
    let mut rest = text.strip_prefix(['-', '+']).unwrap_or(text);
    if rest == "0" {
        // As in Go, "-0" is zero, not negative.
        return Ok(Some(Duration::ZERO));
    }
    if rest.is_empty() {
        return Err("is not a Go duration such as 720h or 1h30m".into());
    }
    let mut seconds = 0f64;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(number_end);
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "\u{00b5}s" | "\u{03bc}s" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err("is not a Go duration such as 720h or 1h30m (units: ns, us, ms, s, m, h)".into()),
        };
        let value: f64 = match number {
            "" | "." => return Err("is not a Go duration such as 720h or 1h30m".into()),
            n => n
                .parse()
                .map_err(|_| "is not a Go duration such as 720h or 1h30m".to_string())?,
        };
        seconds += value * scale;
        if seconds > MAX_PERIOD.as_secs_f64() {
            return Err("is longer than 876000h (100 years)".into());
        }
        rest = tail;
    }
    Ok((!negative).then(|| Duration::from_secs_f64(seconds)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn secret(annotations: &[(&str, &str)], created: i64) -> Secret {
        Secret {
            metadata: ObjectMeta {
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                creation_timestamp: Some(Time(Timestamp::from_second(created).unwrap())),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    fn tokens(cluster: Option<&str>, pod: Option<&str>) -> Tokens {
        Tokens {
            cluster: cluster.map(Into::into),
            pod: pod.map(Into::into),
        }
    }

    #[test]
    fn tokens_rotate_once_each_and_absent_tokens_never() {
        let none = tokens(None, None);
        let s = secret(&[], 0);
        assert_eq!(due(&s, &none, None, at(10)), Due::Never);
        assert_eq!(
            due(&s, &tokens(Some("1"), None), None, at(10)),
            Due::Now(Reason::ClusterToken("1".into()))
        );
        assert_eq!(
            due(&s, &tokens(None, Some("a")), None, at(10)),
            Due::Now(Reason::PodToken("a".into()))
        );

        // After a rotation under both tokens, the same tokens rotate nothing (a restart, a resync).
        let both = tokens(Some("1"), Some("a"));
        let stamped = stamp(&both, at(10));
        let pairs: Vec<(&str, &str)> = stamped.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let s = secret(&pairs, 0);
        assert_eq!(due(&s, &both, None, at(20)), Due::Never);
        // The annotation removed: nothing. A new cluster token: every member. A new pod token: that one.
        assert_eq!(due(&s, &none, None, at(20)), Due::Never);
        assert_eq!(
            due(&s, &tokens(Some("2"), Some("a")), None, at(20)),
            Due::Now(Reason::ClusterToken("2".into()))
        );
        assert_eq!(
            due(&s, &tokens(Some("1"), Some("b")), None, at(20)),
            Due::Now(Reason::PodToken("b".into()))
        );
    }

    #[test]
    fn a_fresh_mint_records_present_tokens_and_is_not_due() {
        let present = tokens(Some("7"), Some("x"));
        let stamped = stamp(&present, at(1_700_000_000));
        assert_eq!(stamped[ROTATED_FOR_CLUSTER_ANNOTATION], "7");
        assert_eq!(stamped[ROTATED_FOR_POD_ANNOTATION], "x");
        assert_eq!(stamped[KEYS_CREATED_AT_ANNOTATION], "2023-11-14T22:13:20Z");
        let pairs: Vec<(&str, &str)> = stamped.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            due(
                &secret(&pairs, 0),
                &present,
                Some(Duration::from_secs(3600)),
                at(1_700_000_001)
            ),
            Due::Later(Duration::from_secs(3599))
        );
        assert!(!stamp(&Tokens::default(), at(0)).contains_key(ROTATED_FOR_POD_ANNOTATION));
    }

    #[test]
    fn period_counts_from_the_stamp_else_the_creation() {
        let none = Tokens::default();
        let hour = Some(Duration::from_secs(3600));
        let s = secret(&[(KEYS_CREATED_AT_ANNOTATION, "1970-01-01T00:16:40Z")], 0); // 1000 s
        assert_eq!(due(&s, &none, hour, at(1000)), Due::Later(Duration::from_secs(3600)));
        assert_eq!(due(&s, &none, hour, at(4599)), Due::Later(Duration::from_secs(1)));
        assert_eq!(due(&s, &none, hour, at(4600)), Due::Now(Reason::Period));
        assert_eq!(
            due(&s, &none, hour, at(0)),
            Due::Later(Duration::from_secs(3600)),
            "clock behind"
        );
        // No stamp (minted before rotation existed): the creation time counts.
        let old = secret(&[], 100);
        assert_eq!(due(&old, &none, hour, at(3700)), Due::Now(Reason::Period));
        assert_eq!(due(&old, &none, hour, at(3000)), Due::Later(Duration::from_secs(700)));
        // A zero period is the minimum, not a hot loop.
        assert_eq!(due(&s, &none, Some(Duration::ZERO), at(1000)), Due::Later(MIN_PERIOD));
    }

    #[test]
    fn period_comes_from_the_spec() {
        let c = crate::desired::tests::cluster(serde_json::json!({"rotation": {"period": "720h"}}));
        assert_eq!(period(&c.spec), Ok(Some(Duration::from_secs(720 * 3600))));
        let c = crate::desired::tests::cluster(serde_json::json!({"rotation": {"period": "-1s"}}));
        assert_eq!(period(&c.spec), Ok(None));
        let c = crate::desired::tests::cluster(serde_json::json!({}));
        assert_eq!(period(&c.spec), Ok(None));
        let c = crate::desired::tests::cluster(serde_json::json!({"rotation": {"period": "banana"}}));
        let error = period(&c.spec).unwrap_err();
        assert!(error.starts_with("spec.rotation.period: \"banana\""), "{error}");
    }

    #[test]
    fn periods_parse_as_go_does_and_never_overflow() {
        let ok =
            |text: &str, secs: f64| assert_eq!(parse_period(text), Ok(Some(Duration::from_secs_f64(secs))), "{text}");
        ok("0", 0.0);
        ok("30m", 1800.0);
        ok("1h30m", 5400.0);
        ok("1.5h", 5400.0);
        ok(".5s", 0.5);
        ok("+2s", 2.0);
        ok("1h1m1s1ms1us1ns", 3661.001001001);
        ok("2\u{00b5}s", 2e-6);
        ok("876000h", 876_000.0 * 3600.0);
        assert_eq!(parse_period("-720h"), Ok(None));
        assert_eq!(parse_period("-0"), Ok(Some(Duration::ZERO)));
        for bad in ["", "-", "banana", "10", "h", "1d", "1.2.3s", ".s", "1h 2m", "5 m"] {
            assert!(parse_period(bad).is_err(), "{bad:?} must be refused");
        }
        for huge in ["876001h", "99999999999999999999999h", "1e300h", &"9".repeat(400)] {
            assert!(
                parse_period(&format!("{huge}h")).is_err() || parse_period(huge).is_err(),
                "{huge}"
            );
        }
        assert!(parse_period(&format!("{}h", "9".repeat(400))).is_err());
    }
}

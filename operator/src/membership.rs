//! Who is a member, who needs an identity, which identities have outlived their pod.

use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::core::v1::{Pod, Secret},
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};
use kube::core::{Selector, SelectorExt};
use kube::ResourceExt;

use crate::{desired::secret_member, names::SIDECAR_NAME};

/// Whether `selector` can be served, with the reason naming the field. The CRD's rules
/// refuse the same at admission (`crd.rs`); this catches objects stored before those rules.
pub fn check_selector(selector: &LabelSelector) -> Result<(), String> {
    let labels = selector.match_labels.clone().unwrap_or_default();
    let expressions = selector.match_expressions.as_deref().unwrap_or_default();
    if !expressions.is_empty() {
        return Err("spec.selector.matchExpressions is not supported yet: the cluster's Services select pods by labels only, so use spec.selector.matchLabels".into());
    }
    if labels.is_empty() {
        return Err(
            "spec.selector must select something: an empty selector would make every pod of the namespace a member"
                .into(),
        );
    }
    for (key, value) in &labels {
        if !is_label_key(key) {
            return Err(format!(
                "spec.selector.matchLabels: {key:?} is not a label name ([prefix/]name)"
            ));
        }
        if !is_label_value(value) {
            return Err(format!("spec.selector.matchLabels[{key:?}]: {value:?} is not a label value (at most 63 characters of [A-Za-z0-9._-], alphanumeric at both ends)"));
        }
    }
    Ok(())
}

/// `[A-Za-z0-9._-]{0,63}`, alphanumeric at both ends (or empty).
fn is_label_value(value: &str) -> bool {
    value.is_empty() || is_label_name(value)
}

/// `[prefix/]name`: prefix a DNS subdomain, name a non-empty label value.
fn is_label_key(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let dns_label = |l: &str| {
        let ends = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        ends(l.chars().next())
            && ends(l.chars().last())
            && l.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    let prefix_ok = prefix.is_none_or(|p| p.len() <= 253 && p.split('.').all(dns_label));
    prefix_ok && is_label_name(name)
}

fn is_label_name(name: &str) -> bool {
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    name.len() <= 63
        && alnum(name.chars().next())
        && alnum(name.chars().last())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Pods the selector matches, minus finished ones (a completed Job pod no longer serves).
pub fn members<'a>(selector: &Selector, pods: &'a [Pod]) -> Vec<&'a Pod> {
    let mut members: Vec<&Pod> = pods
        .iter()
        .filter(|p| selector.matches(p.labels()))
        .filter(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            !matches!(phase, Some("Succeeded" | "Failed"))
        })
        .collect();
    members.sort_by_key(|p| p.name_any());
    members
}

/// Members without an identity Secret, in name order.
pub fn need_identity(members: &[&Pod], secrets: &[Secret]) -> Vec<String> {
    let minted: BTreeSet<&str> = secrets.iter().filter_map(secret_member).collect();
    members
        .iter()
        .map(|p| p.name_any())
        .filter(|n| !minted.contains(n.as_str()))
        .collect()
}

/// Members that do not run the sidecar (created before the webhook or the cluster).
pub fn without_sidecar(members: &[&Pod]) -> Vec<String> {
    members
        .iter()
        .filter(|p| {
            let init = p.spec.as_ref().and_then(|s| s.init_containers.as_ref());
            !init.into_iter().flatten().any(|c| c.name == SIDECAR_NAME)
        })
        .map(|p| p.name_any())
        .collect()
}

/// Members whose sidecar runs with other arguments than `expected` (injected for an
/// earlier spec: other ports). Members without the sidecar are not listed here.
pub fn outdated_sidecar(members: &[&Pod], expected: &[String]) -> Vec<String> {
    members
        .iter()
        .filter(|p| {
            let init = p.spec.as_ref().and_then(|s| s.init_containers.as_ref());
            let sidecar = init.into_iter().flatten().find(|c| c.name == SIDECAR_NAME);
            sidecar.is_some_and(|c| c.args.as_deref() != Some(expected))
        })
        .map(|p| p.name_any())
        .collect()
}

/// What to do with an identity whose pod is not a member.
#[derive(Debug, PartialEq, Eq)]
pub enum Orphan {
    /// Still inside the grace period: check again after this long.
    Wait(Duration),
    Delete,
}

/// Remembers since when each identity has been without its pod. In memory on purpose: after
/// a restart the grace period starts over, which can only delay a deletion, never hasten it,
/// and needs no write to the Secret (the operator updates identity Secrets only to rotate keys).
#[derive(Debug, Default)]
pub struct OrphanClock {
    since: HashMap<String, Instant>,
}

// === impl OrphanClock ===

impl OrphanClock {
    /// Decides for every Secret (keyed by uid) whose member is not in `members`; forgets the
    /// Secrets that have their member back or no longer exist.
    pub fn judge(
        &mut self,
        members: &[&Pod],
        secrets: &[Secret],
        grace: Duration,
        now: Instant,
    ) -> Vec<(String, Orphan)> {
        let names: BTreeSet<String> = members.iter().map(|p| p.name_any()).collect();
        let mut verdicts = Vec::new();
        let mut seen = BTreeSet::new();
        for secret in secrets {
            let uid = secret.uid().unwrap_or_default();
            if secret_member(secret).is_some_and(|m| names.contains(m)) {
                continue;
            }
            seen.insert(uid.clone());
            let since = *self.since.entry(uid).or_insert(now);
            let age = now.saturating_duration_since(since);
            let verdict = if age >= grace {
                Orphan::Delete
            } else {
                Orphan::Wait(grace - age)
            };
            verdicts.push((secret.name_any(), verdict));
        }
        self.since.retain(|uid, _| seen.contains(uid));
        verdicts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{identity_secret, tests::*};
    use xlattice_protocol::{Identity, NodeIdBits, RsaBits};

    /// The same table the e2e test sends to the API server: the CRD's rules and this check
    /// refuse the same selectors.
    #[test]
    fn selectors_are_checked_as_the_crd_checks_them() {
        let cases: Vec<serde_json::Value> =
            serde_json::from_str(include_str!("../tests/fixtures/selectors.json")).unwrap();
        for case in cases {
            let selector: LabelSelector = serde_json::from_value(case["selector"].clone()).unwrap();
            match (check_selector(&selector), case["refused"].as_str()) {
                (Ok(()), None) => {}
                (Err(e), Some(needle)) => assert!(e.starts_with(needle), "{selector:?}: {e} lacks {needle}"),
                (got, want) => panic!("{selector:?}: got {got:?}, want refusal {want:?}"),
            }
        }
    }

    fn secret_for(name: &str, uid: &str) -> Secret {
        let c = cluster(serde_json::json!({}));
        let id = Identity::generate(NodeIdBits::B160, RsaBits::B2048).unwrap();
        let mut s = identity_secret(&c, name, &id, Default::default());
        s.metadata.uid = Some(uid.into());
        s
    }

    #[test]
    fn members_need_identities_until_minted() {
        let c = cluster(serde_json::json!({}));
        let selector: Selector = c.spec.selector.clone().try_into().unwrap();
        let mut other = pod("other", None);
        other.metadata.labels = None;
        let mut done = pod("done", None);
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        let pods = vec![pod("b", None), pod("a", None), other, done];
        let members = members(&selector, &pods);
        let names: Vec<_> = members.iter().map(|p| p.name_any()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(need_identity(&members, &[secret_for("a", "1")]), ["b"]);
        assert_eq!(without_sidecar(&members), ["a", "b"]);
    }

    #[test]
    fn orphans_are_deleted_only_after_the_grace_period() {
        let secrets = vec![secret_for("a", "1"), secret_for("gone", "2")];
        let (pa, grace) = (pod("a", None), Duration::from_secs(10));
        let mut clock = OrphanClock::default();
        let t0 = Instant::now();
        assert_eq!(
            clock.judge(&[&pa], &secrets, grace, t0),
            [("xlattice-id-gone".into(), Orphan::Wait(grace))]
        );
        let later = t0 + Duration::from_secs(4);
        assert_eq!(
            clock.judge(&[&pa], &secrets, grace, later)[0].1,
            Orphan::Wait(Duration::from_secs(6))
        );
        assert_eq!(clock.judge(&[&pa], &secrets, grace, t0 + grace)[0].1, Orphan::Delete);

        // The pod came back (a StatefulSet pod): the clock forgets, a later loss starts over.
        let pg = pod("gone", None);
        assert!(clock.judge(&[&pa, &pg], &secrets, grace, t0 + grace).is_empty());
        assert_eq!(
            clock.judge(&[&pa], &secrets, grace, t0 + grace * 2)[0].1,
            Orphan::Wait(grace)
        );
    }
}

//! Who is a member, who needs an identity, which identities have outlived their pod.

use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::core::v1::{Pod, Secret},
    apimachinery::pkg::apis::meta::v1::LabelSelector,
    jiff::Timestamp,
};
use kube::core::{Selector, SelectorExt};
use kube::ResourceExt;

use crate::{
    desired::secret_member,
    names::{DIRECTORY_VERSION_ANNOTATION, INJECTED_ANNOTATION, SIDECAR_NAME},
};

/// Whether `selector` can be served, with the reason naming the field. The CRD's rules
/// refuse the same at admission (`crd.rs`); this catches objects stored before those rules.
pub fn check_selector(selector: &LabelSelector) -> Result<(), String> {
    let labels = selector.match_labels.clone().unwrap_or_default();
    let expressions = selector.match_expressions.as_deref().unwrap_or_default();
    for e in expressions {
        let values = e.values.as_deref().unwrap_or_default();
        let field = format!("spec.selector.matchExpressions[{:?}]", e.key);
        if !is_label_key(&e.key) {
            return Err(format!("{field}: {:?} is not a label name ([prefix/]name)", e.key));
        }
        match (e.operator.as_str(), values.is_empty()) {
            ("In" | "NotIn", false) | ("Exists" | "DoesNotExist", true) => {}
            ("In" | "NotIn", true) => return Err(format!("{field}: {} needs values", e.operator)),
            ("Exists" | "DoesNotExist", false) => return Err(format!("{field}: {} takes no values", e.operator)),
            (other, _) => {
                return Err(format!(
                    "{field}: operator {other:?} is not In, NotIn, Exists or DoesNotExist"
                ))
            }
        }
        if let Some(bad) = values.iter().find(|v| !is_label_value(v)) {
            return Err(format!("{field}: {bad:?} is not a label value"));
        }
    }
    if labels.is_empty() && expressions.is_empty() {
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

/// A cluster of the namespace, as the claim rule sees it.
#[derive(Clone, Debug)]
pub struct Claimant {
    pub name: String,
    pub created: Option<Timestamp>,
    pub selector: Option<Selector>,
}

/// The cluster a pod belongs to when several select it: the one that injected its sidecar
/// (`xlattice.io/injected`), while that cluster exists and still selects it; else the oldest
/// that selects it (creation time, then name). A cluster created later over running pods
/// never takes them, and deleting the older one hands over only pods it did not inject.
pub fn claimed_by<'c>(pod: &Pod, clusters: &'c [Claimant]) -> Option<&'c str> {
    let selecting: Vec<&Claimant> = clusters
        .iter()
        .filter(|c| c.selector.as_ref().is_some_and(|s| s.matches(pod.labels())))
        .collect();
    let injected = pod.annotations().get(INJECTED_ANNOTATION);
    if let Some(c) = selecting.iter().find(|c| Some(&c.name) == injected) {
        return Some(&c.name);
    }
    selecting
        .into_iter()
        .min_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)))
        .map(|c| c.name.as_str())
}

/// Pods `cluster` selects that belong to another cluster, by that cluster's name.
pub fn claimed_by_others<'p>(cluster: &str, matched: &[&'p Pod], clusters: &[Claimant]) -> Vec<(&'p Pod, String)> {
    matched
        .iter()
        .filter_map(|p| match claimed_by(p, clusters) {
            Some(owner) if owner != cluster => Some((*p, owner.to_string())),
            _ => None,
        })
        .collect()
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

/// Running members with the sidecar whose pod does not yet carry directory `version`: the
/// pods to touch so that the kubelet brings them the new directory now.
pub fn directory_behind<'a>(members: &[&'a Pod], version: &str) -> Vec<&'a Pod> {
    members
        .iter()
        .copied()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.annotations().contains_key(INJECTED_ANNOTATION))
        .filter(|p| p.annotations().get(DIRECTORY_VERSION_ANNOTATION).map(String::as_str) != Some(version))
        .collect()
}

/// Members whose sidecar was injected for another spec: other arguments than `expected`
/// (other ports), or for another cluster (its volumes name that cluster's directory).
/// Members without the sidecar are not listed here.
pub fn outdated_sidecar(cluster: &str, members: &[&Pod], expected: &[String]) -> Vec<String> {
    members
        .iter()
        .filter(|p| {
            let init = p.spec.as_ref().and_then(|s| s.init_containers.as_ref());
            let sidecar = init.into_iter().flatten().find(|c| c.name == SIDECAR_NAME);
            let injected_for = p.annotations().get(INJECTED_ANNOTATION).map(String::as_str);
            sidecar.is_some_and(|c| c.args.as_deref() != Some(expected) || injected_for != Some(cluster))
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

    #[test]
    fn pods_with_the_sidecar_and_another_directory_version_are_behind() {
        let with = |name: &str, version: Option<&str>| {
            let mut p = pod(name, None);
            let mut annotations =
                std::collections::BTreeMap::from([(INJECTED_ANNOTATION.to_string(), "c".to_string())]);
            if let Some(v) = version {
                annotations.insert(DIRECTORY_VERSION_ANNOTATION.to_string(), v.to_string());
            }
            p.metadata.annotations = Some(annotations);
            p
        };
        let (current, old, new) = (with("a", Some("v2")), with("b", Some("v1")), with("c", None));
        let plain = pod("d", None);
        let mut leaving = with("e", Some("v1"));
        leaving.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(1).unwrap(),
        ));
        let members = [&current, &old, &new, &plain, &leaving];
        let behind: Vec<String> = directory_behind(&members, "v2").iter().map(|p| p.name_any()).collect();
        assert_eq!(
            behind,
            ["b", "c"],
            "not the current one, the one without a sidecar, nor one leaving"
        );
    }

    #[test]
    fn the_injecting_cluster_then_the_oldest_claims_a_pod() {
        let claimant = |name: &str, created: i64, app: &str| Claimant {
            name: name.into(),
            created: Some(Timestamp::from_second(created).unwrap()),
            selector: Some(Selector::from_iter([kube::core::Expression::Equal(
                "app".into(),
                app.into(),
            )])),
        };
        let old = claimant("old", 100, "store");
        let new = claimant("new", 200, "store");
        let other = claimant("other", 50, "web");
        let clusters = [new.clone(), old.clone(), other];
        let plain = pod("store-0", None);
        assert_eq!(claimed_by(&plain, &clusters), Some("old"), "the oldest");
        let mut injected = plain.clone();
        injected.metadata.annotations = Some([(INJECTED_ANNOTATION.to_string(), "new".to_string())].into());
        assert_eq!(claimed_by(&injected, &clusters), Some("new"), "the injecting cluster");
        assert_eq!(
            claimed_by(&injected, std::slice::from_ref(&old)),
            Some("old"),
            "its injector is gone"
        );
        let tie = claimant("a-tie", 100, "store");
        assert_eq!(claimed_by(&plain, &[old.clone(), tie]), Some("a-tie"), "then by name");
        let matched = [&plain, &injected];
        let others = claimed_by_others("new", &matched, &clusters);
        assert_eq!(others.len(), 1);
        assert_eq!(
            (others[0].0.name_any(), others[0].1.as_str()),
            ("store-0".to_string(), "old")
        );
        let mut unlabelled = pod("web-0", None);
        unlabelled.metadata.labels = None;
        assert_eq!(claimed_by(&unlabelled, &[old, new]), None);
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

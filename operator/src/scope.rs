//! Which namespaces the operator serves: all of them (a ClusterRole bound cluster-wide), or a
//! list (the same ClusterRole bound by a RoleBinding in each, so that its token can read and
//! write nothing elsewhere, Secrets included).

use std::collections::BTreeSet;

use kube::{api::DynamicObject, Api, Client, Resource};

use crate::crd;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    All,
    Namespaces(BTreeSet<String>),
}

// === impl Scope ===

impl Scope {
    /// From `--watch-namespace` values: none means every namespace.
    pub fn from_flags(namespaces: &[String]) -> Self {
        let set: BTreeSet<String> = namespaces.iter().filter(|n| !n.is_empty()).cloned().collect();
        if set.is_empty() {
            Self::All
        } else {
            Self::Namespaces(set)
        }
    }

    pub fn serves(&self, namespace: &str) -> bool {
        match self {
            Self::All => true,
            Self::Namespaces(set) => set.contains(namespace),
        }
    }

    /// One entry per watch the controller runs: `None` for all namespaces.
    pub fn watches(&self) -> Vec<Option<String>> {
        match self {
            Self::All => vec![None],
            Self::Namespaces(set) => set.iter().cloned().map(Some).collect(),
        }
    }
}

/// An Api over `namespace`, or over all namespaces.
pub fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The untyped XLatticeCluster Api over `namespace`, or over all namespaces.
pub fn clusters(client: &Client, namespace: Option<&str>) -> Api<DynamicObject> {
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &crd::api_resource()),
        None => Api::all_with(client.clone(), &crd::api_resource()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_namespace_listed_means_all() {
        assert_eq!(Scope::from_flags(&[]), Scope::All);
        assert_eq!(Scope::from_flags(&[String::new()]), Scope::All);
        let scope = Scope::from_flags(&["b".into(), "a".into(), "a".into()]);
        assert!(scope.serves("a") && !scope.serves("c"));
        assert_eq!(scope.watches(), [Some("a".to_string()), Some("b".to_string())]);
        assert!(Scope::All.serves("anything"));
    }
}

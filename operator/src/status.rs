//! The status the operator reports, computed from what the reconcile found and did.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::XLatticeClusterStatus;

pub const READY: &str = "Ready";
pub const IDENTITIES_MINTED: &str = "IdentitiesMinted";
pub const NETWORK_POLICY_READY: &str = "NetworkPolicyReady";
pub const DEGRADED: &str = "Degraded";

/// Why a cluster cannot be served as asked: the condition's reason (a bounded set, so
/// alerts can match on it) and a message naming the member or field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Degraded {
    pub reason: DegradedReason,
    pub message: String,
}

/// The `reason` of a Degraded=True condition. Listed from the most to the least urgent:
/// when a reconcile finds several, the status reports the first (see `Degraded::worst`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DegradedReason {
    /// The spec cannot be served as written (the message names the field).
    InvalidSpec,
    /// The selector matches pods of another cluster (named in the message): those stay
    /// the other cluster's.
    SelectorConflict,
    /// A member has no identity: minting failed.
    MintingFailed,
    /// Keys due for rotation were not rotated.
    RotationFailed,
    /// A directory shard would exceed the ConfigMap size limit; the last one written stays.
    DirectoryTooLarge,
    /// Two members hold one NodeID (a hand edit): the later is left out of the directory.
    DuplicateNodeId,
    /// An identity Secret cannot be read: its member is left out of the directory.
    CorruptIdentity,
}

/// What one reconcile found.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    pub generation: Option<i64>,
    pub members: usize,
    pub minted: usize,
    pub network_policy_ready: bool,
    pub pods_without_sidecar: Vec<String>,
    /// Members whose sidecar was made for an earlier spec.
    pub pods_with_outdated_sidecar: Vec<String>,
    /// The directory shard ConfigMaps that exist.
    pub directory: Vec<String>,
    /// Why the cluster cannot be served as asked.
    pub degraded: Option<Degraded>,
    /// Set when this reconcile rotated keys; else the observed value is kept.
    pub last_rotation: Option<Time>,
}

// === impl Facts ===

impl Facts {
    /// What a stored status says was found, for a reconcile that could not look itself.
    pub fn observed(status: Option<&XLatticeClusterStatus>) -> Self {
        let Some(status) = status else {
            return Self::default();
        };
        let ready = |type_: &str| status.conditions.iter().any(|c| c.type_ == type_ && c.status == "True");
        Self {
            generation: status.observed_generation,
            members: status.members.max(0) as usize,
            minted: status.minted.max(0) as usize,
            network_policy_ready: ready(NETWORK_POLICY_READY),
            pods_without_sidecar: status.pods_without_sidecar.clone(),
            pods_with_outdated_sidecar: status.pods_with_outdated_sidecar.clone(),
            directory: status.directory_config_maps.clone(),
            degraded: status
                .conditions
                .iter()
                .find(|c| c.type_ == DEGRADED && c.status == "True")
                .and_then(|c| Some(Degraded::new(DegradedReason::parse(&c.reason)?, c.message.clone()))),
            last_rotation: None,
        }
    }
}

/// The status to report. Conditions keep their lastTransitionTime while their status holds,
/// so an unchanged cluster yields a status equal to the observed one: no write.
pub fn desired(observed: Option<&XLatticeClusterStatus>, facts: &Facts, now: Time) -> XLatticeClusterStatus {
    let minted = facts.minted >= facts.members;
    let degraded = facts.degraded.is_some();
    let ready = minted && facts.network_policy_ready && !degraded && facts.pods_with_outdated_sidecar.is_empty();
    let mut conditions = vec![
        cond(
            READY,
            ready,
            if ready {
                (
                    "Ready",
                    "all members have identities, the directory and the NetworkPolicy are in place".to_string(),
                )
            } else {
                ("NotReady", not_ready(facts))
            },
        ),
        cond(
            IDENTITIES_MINTED,
            minted,
            (
                if minted { "AllMinted" } else { "Minting" },
                format!("{} of {} members have an identity", facts.minted, facts.members),
            ),
        ),
        cond(
            NETWORK_POLICY_READY,
            facts.network_policy_ready,
            if facts.network_policy_ready {
                ("Applied", "NetworkPolicy matches the spec".into())
            } else {
                ("Pending", "NetworkPolicy not applied yet".into())
            },
        ),
        match &facts.degraded {
            Some(d) => cond(DEGRADED, true, (d.reason.as_str(), d.message.clone())),
            None => cond(DEGRADED, false, ("AsExpected", "no problem found".into())),
        },
    ];
    let old = observed.map(|s| s.conditions.as_slice()).unwrap_or_default();
    for c in &mut conditions {
        c.observed_generation = facts.generation;
        c.last_transition_time = old
            .iter()
            .find(|o| o.type_ == c.type_ && o.status == c.status)
            .map(|o| o.last_transition_time.clone())
            .unwrap_or_else(|| now.clone());
    }
    XLatticeClusterStatus {
        observed_generation: facts.generation,
        members: facts.members as i32,
        minted: facts.minted as i32,
        conditions,
        pods_without_sidecar: facts.pods_without_sidecar.clone(),
        pods_with_outdated_sidecar: facts.pods_with_outdated_sidecar.clone(),
        directory_config_maps: facts.directory.clone(),
        last_rotation: facts
            .last_rotation
            .clone()
            .or_else(|| observed.and_then(|s| s.last_rotation.clone())),
    }
}

fn not_ready(facts: &Facts) -> String {
    match &facts.degraded {
        Some(d) => d.message.clone(),
        None if facts.minted < facts.members => {
            format!("minting identities: {} of {}", facts.minted, facts.members)
        }
        None if !facts.pods_with_outdated_sidecar.is_empty() => format!(
            "{} members run a sidecar made for an earlier spec (see podsWithOutdatedSidecar): restart them, or set restartWorkloads",
            facts.pods_with_outdated_sidecar.len()
        ),
        None => "NetworkPolicy not applied yet".into(),
    }
}

// === impl Degraded ===

impl Degraded {
    pub fn new(reason: DegradedReason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }

    /// The one to report when a reconcile found several: the most urgent, the first found
    /// among equals.
    pub fn worst(found: impl IntoIterator<Item = Degraded>) -> Option<Degraded> {
        found.into_iter().reduce(|a, b| if b.reason < a.reason { b } else { a })
    }
}

impl DegradedReason {
    pub const ALL: [Self; 7] = [
        Self::InvalidSpec,
        Self::SelectorConflict,
        Self::MintingFailed,
        Self::RotationFailed,
        Self::DirectoryTooLarge,
        Self::DuplicateNodeId,
        Self::CorruptIdentity,
    ];

    pub fn parse(reason: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == reason)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidSpec => "InvalidSpec",
            Self::SelectorConflict => "SelectorConflict",
            Self::MintingFailed => "MintingFailed",
            Self::RotationFailed => "RotationFailed",
            Self::DirectoryTooLarge => "DirectoryTooLarge",
            Self::DuplicateNodeId => "DuplicateNodeId",
            Self::CorruptIdentity => "CorruptIdentity",
        }
    }
}

impl std::fmt::Display for Degraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason.as_str(), self.message)
    }
}

fn cond(type_: &str, status: bool, (reason, message): (&str, String)) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        observed_generation: None,
        last_transition_time: Time(Default::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn settled_status_is_stable_and_transitions_are_dated() {
        let facts = Facts {
            generation: Some(2),
            members: 3,
            minted: 3,
            network_policy_ready: true,
            ..Default::default()
        };
        let first = desired(None, &facts, at(100));
        let ready = first.conditions.iter().find(|c| c.type_ == READY).unwrap();
        assert_eq!((ready.status.as_str(), &ready.last_transition_time), ("True", &at(100)));
        assert_eq!(
            desired(Some(&first), &facts, at(200)),
            first,
            "nothing changed, nothing to write"
        );

        let degraded = Facts {
            degraded: Some(Degraded::new(DegradedReason::InvalidSpec, "bad")),
            ..facts
        };
        let second = desired(Some(&first), &degraded, at(300));
        let ready = second.conditions.iter().find(|c| c.type_ == READY).unwrap();
        assert_eq!((ready.status.as_str(), ready.message.as_str()), ("False", "bad"));
        assert_eq!(ready.last_transition_time, at(300));
        let minted = second.conditions.iter().find(|c| c.type_ == IDENTITIES_MINTED).unwrap();
        assert_eq!(minted.last_transition_time, at(100));

        // A rotation is remembered by later reconciles that rotate nothing.
        let rotated = desired(
            Some(&second),
            &Facts {
                last_rotation: Some(at(400)),
                ..degraded.clone()
            },
            at(400),
        );
        assert_eq!(rotated.last_rotation, Some(at(400)));
        assert_eq!(desired(Some(&rotated), &degraded, at(500)), rotated);
    }

    #[test]
    fn the_most_urgent_degraded_reason_wins() {
        use DegradedReason::*;
        let found = [
            Degraded::new(CorruptIdentity, "a"),
            Degraded::new(MintingFailed, "b"),
            Degraded::new(RotationFailed, "c"),
            Degraded::new(MintingFailed, "d"),
        ];
        assert_eq!(Degraded::worst(found), Some(Degraded::new(MintingFailed, "b")));
        assert_eq!(Degraded::worst([]), None);
        for reason in DegradedReason::ALL {
            assert_eq!(DegradedReason::parse(reason.as_str()), Some(reason));
        }
    }

    #[test]
    fn facts_read_back_from_a_status_give_that_status() {
        let facts = Facts {
            generation: Some(4),
            members: 3,
            minted: 2,
            network_policy_ready: true,
            pods_without_sidecar: vec!["a".into()],
            pods_with_outdated_sidecar: vec!["b".into()],
            directory: vec!["s-directory-1".into()],
            degraded: Some(Degraded::new(DegradedReason::CorruptIdentity, "xlattice-id-a")),
            last_rotation: None,
        };
        let written = desired(None, &facts, at(100));
        assert_eq!(
            desired(Some(&written), &Facts::observed(Some(&written)), at(200)),
            written
        );
    }
}

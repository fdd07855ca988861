//! Member records and the member directory: the public halves of every member.
//!
//! Serialized form (JSON or YAML, field names camelCase), documented in docs/protocol.md
//! ("Member directory"):
//! ```yaml
//! cluster: default/store
//! members:
//!   - name: store-0
//!     nodeId: 3f…(40 or 64 hex digits)
//!     sk: "-----BEGIN PUBLIC KEY-----…"
//!     ck: "-----BEGIN PUBLIC KEY-----…"
//!     clusterEndpoint: 10.0.0.5:7000
//!     clientEndpoint: 10.0.0.5:8000
//!     attributes: [ephemeral]
//! ```

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

use crate::{identity::Identity, keys::KeyError, NodeId, PublicKey};

/// Flags a member may carry (the historical XLattice member attributes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Attribute {
    Ephemeral,
    Admin,
    Solo,
}

/// One member's public record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MemberRecord {
    /// The member's name (its pod name under the operator).
    pub name: String,
    pub node_id: NodeId,
    /// Public signing key, SPKI PEM.
    pub sk: String,
    /// Public encryption key, SPKI PEM.
    pub ck: String,
    /// host:port of the private cluster port, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_endpoint: Option<String>,
    /// host:port of the public client port, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<Attribute>,
}

/// All members of one cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MemberDirectory {
    /// `namespace/name` of the cluster.
    pub cluster: String,
    pub members: Vec<MemberRecord>,
}

/// A member whose keys have been parsed and checked.
#[derive(Clone, Debug)]
pub struct Member {
    pub record: MemberRecord,
    pub sk: PublicKey,
    pub ck: PublicKey,
}

/// A directory ready for lookups: keys parsed once, NodeIDs and names unique.
#[derive(Clone, Debug, Default)]
pub struct DirectoryIndex {
    cluster: String,
    by_node_id: HashMap<NodeId, Arc<Member>>,
    by_name: HashMap<String, Arc<Member>>,
    by_ck_hint: HashMap<[u8; 8], Arc<Member>>,
}

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("member directory is not valid JSON or YAML: {0}")]
    Syntax(String),
    #[error("member {name:?}: {field}: {source}")]
    Key {
        name: String,
        field: &'static str,
        source: KeyError,
    },
    #[error("NodeID {0} appears twice")]
    DuplicateNodeId(NodeId),
    #[error("member name {0:?} appears twice")]
    DuplicateName(String),
    #[error("member {0:?} has the ck of another member")]
    DuplicateKey(String),
    #[error("parts of one directory name different clusters: {0:?} and {1:?}")]
    MixedClusters(String, String),
    #[error("{path}: {message}")]
    Read { path: String, message: String },
}

// === impl MemberRecord ===

impl MemberRecord {
    pub fn for_identity(name: impl Into<String>, identity: &Identity) -> Self {
        Self {
            name: name.into(),
            node_id: identity.node_id,
            sk: identity.sk_public().to_pem(),
            ck: identity.ck_public().to_pem(),
            cluster_endpoint: None,
            client_endpoint: None,
            attributes: Vec::new(),
        }
    }

    pub fn parse(&self) -> Result<Member, DirectoryError> {
        let key = |field, pem: &str| {
            PublicKey::from_pem(pem).map_err(|source| DirectoryError::Key {
                name: self.name.clone(),
                field,
                source,
            })
        };
        Ok(Member {
            sk: key("sk", &self.sk)?,
            ck: key("ck", &self.ck)?,
            record: self.clone(),
        })
    }
}

// === impl MemberDirectory ===

impl MemberDirectory {
    /// Parses JSON or YAML (JSON is YAML, so one parser serves both).
    pub fn from_slice(bytes: &[u8]) -> Result<Self, DirectoryError> {
        serde_yaml::from_slice(bytes).map_err(|e| DirectoryError::Syntax(e.to_string()))
    }

    /// Joins the parts of a directory split over several files (the operator's shards):
    /// they must name the same cluster; members come out sorted by name. Duplicates
    /// are left for `index` to refuse.
    pub fn merge(parts: impl IntoIterator<Item = MemberDirectory>) -> Result<Self, DirectoryError> {
        let mut merged = MemberDirectory::default();
        for part in parts {
            if merged.cluster.is_empty() {
                merged.cluster = part.cluster;
            } else if !part.cluster.is_empty() && part.cluster != merged.cluster {
                return Err(DirectoryError::MixedClusters(merged.cluster, part.cluster));
            }
            merged.members.extend(part.members);
        }
        merged.members.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(merged)
    }

    /// The files a directory is read from: `path` itself when it is a file, else the
    /// `*.yaml`, `*.yml` and `*.json` files in it, sorted. Hidden entries are skipped:
    /// Kubernetes keeps its `..data` bookkeeping in a mounted volume.
    pub fn files(path: &Path) -> Result<Vec<PathBuf>, DirectoryError> {
        let read_err = |e: std::io::Error| DirectoryError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        if !std::fs::metadata(path).map_err(read_err)?.is_dir() {
            return Ok(vec![path.to_path_buf()]);
        }
        let mut files = Vec::new();
        for entry in std::fs::read_dir(path).map_err(read_err)? {
            let entry = entry.map_err(read_err)?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let wanted = [".yaml", ".yml", ".json"].iter().any(|ext| name.ends_with(ext));
            // metadata() follows the symlinks a mounted ConfigMap is made of.
            if wanted && !name.starts_with('.') && entry.path().metadata().is_ok_and(|m| m.is_file()) {
                files.push(entry.path());
            }
        }
        files.sort();
        Ok(files)
    }

    /// Reads a directory from a file, or from a folder of shards (see `files`), merged.
    /// An empty folder is an empty directory: the shards may not be published yet.
    pub fn read_path(path: &Path) -> Result<Self, DirectoryError> {
        let mut parts = Vec::new();
        for file in Self::files(path)? {
            let bytes = std::fs::read(&file).map_err(|e| DirectoryError::Read {
                path: file.display().to_string(),
                message: e.to_string(),
            })?;
            parts.push(Self::from_slice(&bytes).map_err(|e| DirectoryError::Read {
                path: file.display().to_string(),
                message: e.to_string(),
            })?);
        }
        Self::merge(parts)
    }

    /// A short fingerprint of what the directory says (its cluster and members, in name
    /// order, however it was split or merged). The operator stamps it on every member pod;
    /// a sidecar compares it with what it loaded. Both call this: the contract is here.
    pub fn version(&self) -> String {
        let mut members: Vec<&MemberRecord> = self.members.iter().collect();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        let canonical = serde_json::to_vec(&(&self.cluster, members)).expect("directory serializes");
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &canonical);
        digest.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("directory serializes")
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("directory serializes")
    }

    pub fn index(&self) -> Result<DirectoryIndex, DirectoryError> {
        let mut index = DirectoryIndex {
            cluster: self.cluster.clone(),
            ..Default::default()
        };
        for record in &self.members {
            let member = Arc::new(record.parse()?);
            if index.by_node_id.insert(record.node_id, member.clone()).is_some() {
                return Err(DirectoryError::DuplicateNodeId(record.node_id));
            }
            if index.by_name.insert(record.name.clone(), member.clone()).is_some() {
                return Err(DirectoryError::DuplicateName(record.name.clone()));
            }
            // Keys are random: two members with one ck hint would be a forged directory.
            if index.by_ck_hint.insert(member.ck.hint(), member).is_some() {
                return Err(DirectoryError::DuplicateKey(record.name.clone()));
            }
        }
        Ok(index)
    }
}

// === impl DirectoryIndex ===

impl DirectoryIndex {
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    pub fn by_node_id(&self, id: &NodeId) -> Option<&Arc<Member>> {
        self.by_node_id.get(id)
    }

    pub fn by_name(&self, name: &str) -> Option<&Arc<Member>> {
        self.by_name.get(name)
    }

    /// The member whose ck has this hint (see `PublicKey::hint`).
    pub fn by_ck_hint(&self, hint: &[u8; 8]) -> Option<&Arc<Member>> {
        self.by_ck_hint.get(hint)
    }

    /// By NodeID (hex) or by name.
    pub fn lookup(&self, key: &str) -> Option<&Arc<Member>> {
        key.parse::<NodeId>()
            .ok()
            .and_then(|id| self.by_node_id(&id))
            .or_else(|| self.by_name(key))
    }

    pub fn len(&self) -> usize {
        self.by_node_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_node_id.is_empty()
    }

    pub fn members(&self) -> impl Iterator<Item = &Arc<Member>> {
        self.by_node_id.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NodeIdBits, RsaBits};

    fn two_members() -> MemberDirectory {
        let a = Identity::generate(NodeIdBits::B256, RsaBits::B2048).unwrap();
        let b = Identity::generate(NodeIdBits::B160, RsaBits::B2048).unwrap();
        let mut ra = MemberRecord::for_identity("a", &a);
        ra.cluster_endpoint = Some("127.0.0.1:7000".into());
        ra.attributes = vec![Attribute::Ephemeral];
        MemberDirectory {
            cluster: "ns/c".into(),
            members: vec![ra, MemberRecord::for_identity("b", &b)],
        }
    }

    #[test]
    fn json_and_yaml_round_trip_and_lookup() {
        let dir = two_members();
        assert_eq!(MemberDirectory::from_slice(dir.to_json().as_bytes()).unwrap(), dir);
        assert_eq!(MemberDirectory::from_slice(dir.to_yaml().as_bytes()).unwrap(), dir);
        let index = dir.index().unwrap();
        assert_eq!(index.len(), 2);
        let b = &dir.members[1];
        assert_eq!(index.lookup(&b.node_id.to_string()).unwrap().record.name, "b");
        assert_eq!(index.lookup("a").unwrap().record.node_id, dir.members[0].node_id);
        assert!(index.lookup("c").is_none());
        let b_ck = PublicKey::from_pem(&b.ck).unwrap();
        assert_eq!(index.by_ck_hint(&b_ck.hint()).unwrap().record.name, "b");
    }

    #[test]
    fn the_version_follows_the_content_not_the_split() {
        let dir = two_members();
        let (a, b) = (&dir.members[0], &dir.members[1]);
        let part = |m: &MemberRecord| MemberDirectory {
            cluster: dir.cluster.clone(),
            members: vec![m.clone()],
        };
        let merged = MemberDirectory::merge([part(b), part(a)]).unwrap();
        assert_eq!(merged.version(), dir.version(), "shards merged in any order");
        assert_eq!(dir.version().len(), 16);
        let mut moved = dir.clone();
        moved.members[1].client_endpoint = Some("10.0.0.9:8000".into());
        assert_ne!(moved.version(), dir.version(), "an endpoint is content");
        let mut fewer = dir.clone();
        fewer.members.pop();
        assert_ne!(fewer.version(), dir.version(), "a member removed");
    }

    #[test]
    fn bad_directories_are_refused_with_the_reason() {
        let mut dir = two_members();
        dir.members[1].node_id = dir.members[0].node_id;
        assert!(matches!(dir.index(), Err(DirectoryError::DuplicateNodeId(_))));

        let mut dir = two_members();
        dir.members[1].ck = "garbage".into();
        let err = dir.index().unwrap_err().to_string();
        assert!(err.starts_with("member \"b\": ck: "), "{err}");

        let err = MemberDirectory::from_slice(b"cluster: x\nmembers: []\nextra: 1\n").unwrap_err();
        assert!(err.to_string().contains("extra"), "{err}");
    }

    #[test]
    fn a_folder_of_shards_reads_as_one_directory() {
        let dir = two_members();
        let folder = std::env::temp_dir().join(format!("xl-shards-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&folder);
        std::fs::create_dir_all(folder.join("..2026_11_24")).unwrap();
        assert_eq!(MemberDirectory::read_path(&folder).unwrap().members, vec![]);

        let shard = |members: &[MemberRecord]| MemberDirectory {
            cluster: dir.cluster.clone(),
            members: members.to_vec(),
        };
        // As the kubelet lays out a projected volume: files are symlinks into a hidden dir.
        std::fs::write(
            folder.join("..2026_11_24/shard-3.yaml"),
            shard(&dir.members[1..]).to_yaml(),
        )
        .unwrap();
        std::os::unix::fs::symlink("..2026_11_24/shard-3.yaml", folder.join("shard-3.yaml")).unwrap();
        std::fs::write(folder.join("shard-0.json"), shard(&dir.members[..1]).to_json()).unwrap();
        std::fs::write(folder.join("notes.txt"), "not a shard").unwrap();
        assert_eq!(MemberDirectory::read_path(&folder).unwrap(), dir);

        // A member in two shards is refused when indexed; so is a shard of another cluster.
        std::fs::write(folder.join("shard-9.yaml"), shard(&dir.members[..1]).to_yaml()).unwrap();
        let twice = MemberDirectory::read_path(&folder).unwrap().index().unwrap_err();
        assert!(matches!(twice, DirectoryError::DuplicateNodeId(_)), "{twice}");
        let other = MemberDirectory {
            cluster: "ns/other".into(),
            members: vec![],
        };
        std::fs::write(folder.join("shard-9.yaml"), other.to_yaml()).unwrap();
        let err = MemberDirectory::read_path(&folder).unwrap_err().to_string();
        assert!(err.contains("ns/c") && err.contains("ns/other"), "{err}");

        std::fs::write(folder.join("shard-9.yaml"), "members: [").unwrap();
        let err = MemberDirectory::read_path(&folder).unwrap_err().to_string();
        assert!(err.contains("shard-9.yaml"), "{err}");
        std::fs::remove_dir_all(&folder).unwrap();
    }
}

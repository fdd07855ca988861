//! The identity and member directory this sidecar serves with, reloaded from files.
//!
//! Kubernetes updates a mounted Secret or ConfigMap by swapping a symlink, so a
//! whole new version appears at once; polling the contents catches it without
//! inotify subtleties. A version that does not parse is refused and the last good
//! one stays in force.

use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use xlattice_protocol::{DirectoryIndex, Identity, MemberDirectory, ReplayGuard};

use crate::metrics::Metrics;

/// One consistent view: the identity and the directory loaded together.
pub struct Loaded {
    pub identity: Arc<Identity>,
    pub directory: Arc<DirectoryIndex>,
    /// `MemberDirectory::version` of the directory as loaded.
    pub directory_version: String,
    fingerprint: u64,
}

/// How long the directory served has differed from the one the operator stamped on this
/// pod (`xlattice.io/directory-version`, a Downward API file): the kubelet has not brought
/// the new shards yet, or they were refused. Pure, so it is a unit test.
#[derive(Debug, Default)]
pub struct Freshness {
    behind_since: Option<std::time::Instant>,
}

/// What every connection handler shares.
pub struct Shared {
    pub current: watch::Receiver<Arc<Loaded>>,
    pub replay: ReplayGuard,
    pub metrics: Metrics,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("identity: {0}")]
    Identity(#[from] xlattice_protocol::IdentityError),
    #[error("directory {path}: {message}")]
    Directory { path: String, message: String },
}

pub struct Sources {
    pub identity_dir: PathBuf,
    pub directory: PathBuf,
    /// The directory version this pod should serve; absent outside Kubernetes.
    pub expected_version: PathBuf,
}

// === impl Freshness ===

impl Freshness {
    /// Takes in the expected and the loaded version at `now`; how long it has been behind
    /// (zero when current or when nothing is expected).
    pub fn observe(&mut self, expected: Option<&str>, loaded: &str, now: std::time::Instant) -> Duration {
        match expected {
            Some(expected) if expected != loaded => now.duration_since(*self.behind_since.get_or_insert(now)),
            _ => {
                self.behind_since = None;
                Duration::ZERO
            }
        }
    }
}

// === impl Sources ===

impl Sources {
    fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for name in xlattice_protocol::identity::IDENTITY_FILES {
            std::fs::read(self.identity_dir.join(name)).ok().hash(&mut hasher);
        }
        // Which shard files exist counts as much as what they hold.
        for file in MemberDirectory::files(&self.directory).unwrap_or_default() {
            file.hash(&mut hasher);
            std::fs::read(&file).ok().hash(&mut hasher);
        }
        hasher.finish()
    }

    pub fn load(&self) -> Result<Loaded, LoadError> {
        let fingerprint = self.fingerprint();
        let identity = Identity::load_dir(&self.identity_dir)?;
        let dir_err = |message: String| LoadError::Directory {
            path: self.directory.display().to_string(),
            message,
        };
        let read = MemberDirectory::read_path(&self.directory).map_err(|e| dir_err(e.to_string()))?;
        let directory_version = read.version();
        let directory = read.index().map_err(|e| dir_err(e.to_string()))?;
        Ok(Loaded {
            identity: Arc::new(identity),
            directory: Arc::new(directory),
            directory_version,
            fingerprint,
        })
    }

    /// The version written on this pod, if there is one yet.
    fn expected_version(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.expected_version).ok()?;
        Some(text.trim().to_string()).filter(|v| !v.is_empty())
    }

    /// Polls for changes until cancelled, publishing each good new version.
    pub async fn watch(
        self,
        tx: watch::Sender<Arc<Loaded>>,
        interval: Duration,
        metrics: Metrics,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rejected = None;
        let mut freshness = Freshness::default();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let behind = freshness.observe(
                self.expected_version().as_deref(),
                &tx.borrow().directory_version,
                std::time::Instant::now(),
            );
            metrics.directory_behind_seconds.set(behind.as_secs() as i64);
            let fingerprint = self.fingerprint();
            if fingerprint == tx.borrow().fingerprint || Some(fingerprint) == rejected {
                continue;
            }
            match self.load() {
                Ok(loaded) => {
                    tracing::info!(
                        node_id = %loaded.identity.node_id,
                        members = loaded.directory.len(),
                        "identity and directory reloaded"
                    );
                    metrics.reloads.get_or_create(&crate::metrics::ResultLabel::ok()).inc();
                    metrics.loaded_now();
                    rejected = None;
                    tx.send_replace(Arc::new(loaded));
                }
                Err(error) => {
                    tracing::warn!(%error, "new identity or directory refused; keeping the previous one");
                    metrics
                        .reloads
                        .get_or_create(&crate::metrics::ResultLabel::error())
                        .inc();
                    rejected = Some(fingerprint);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn behind_counts_from_the_first_difference_and_resets_when_current() {
        let mut freshness = Freshness::default();
        let t0 = Instant::now();
        let later = |s| t0 + Duration::from_secs(s);
        assert_eq!(freshness.observe(None, "a", t0), Duration::ZERO, "nothing expected");
        assert_eq!(freshness.observe(Some("a"), "a", later(1)), Duration::ZERO);
        assert_eq!(freshness.observe(Some("b"), "a", later(2)), Duration::ZERO, "just now");
        assert_eq!(freshness.observe(Some("b"), "a", later(9)), Duration::from_secs(7));
        assert_eq!(
            freshness.observe(Some("b"), "b", later(10)),
            Duration::ZERO,
            "caught up"
        );
        assert_eq!(
            freshness.observe(Some("c"), "b", later(12)),
            Duration::ZERO,
            "a new difference starts at zero"
        );
    }
}

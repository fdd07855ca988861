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
    fingerprint: u64,
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
        let directory = MemberDirectory::read_path(&self.directory)
            .and_then(|d| d.index())
            .map_err(|e| dir_err(e.to_string()))?;
        Ok(Loaded {
            identity: Arc::new(identity),
            directory: Arc::new(directory),
            fingerprint,
        })
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
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
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

//! One guard accounts for each session from open to end: the open-sessions gauge while it
//! lives, then the bytes moved each way and how it ended, whatever the ending. Refusals
//! are counted by reason and logged at warn, at most once per interval per listener.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use xlattice_protocol::record::RecordError;

use crate::{
    admission::Listener,
    metrics::{BytesLabels, EndingLabels, HandshakeLabels, Metrics},
    proxy::{ProxyError, Side},
};

/// How a session ended, as the `ending` label of `sessions_ended_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Both directions were closed in order (a close record each way).
    Clean,
    /// The network side failed at the record layer: `RecordError::reason` (truncated,
    /// forged, bad_length, bad_content_type, sequence_exhausted).
    Record(&'static str),
    /// The network side's transport failed (reset, broken pipe).
    NetworkError,
    /// The plaintext side (the application, or the member a session is relayed to) failed.
    AppError,
    /// Nothing moved either way for the idle timeout.
    Idle,
    /// The peer left the member directory.
    Revoked,
    /// The application's port did not accept the connection.
    AppUnreachable,
    /// The sidecar stopped before the session ended (drain deadline).
    Aborted,
}

/// Accounts for one open session; see the module documentation.
pub struct SessionGuard<'a> {
    metrics: &'a Metrics,
    listener: Listener,
    ended: bool,
}

/// Counts refusals and logs them at warn, at most once per `LOG_EVERY` per listener, with
/// the number refused since the last line: an operator sees them without a flood in the log.
pub struct Refusals {
    listener: Listener,
    since_log: AtomicU64,
    last_log: Mutex<Option<Instant>>,
}

const LOG_EVERY: Duration = Duration::from_secs(10);

// === impl Ending ===

impl Ending {
    pub fn label(self) -> &'static str {
        match self {
            Self::Clean => "clean",
            Self::Record(reason) => reason,
            Self::NetworkError => "network_error",
            Self::AppError => "app_error",
            Self::Idle => "idle",
            Self::Revoked => "revoked",
            Self::AppUnreachable => "app_unreachable",
            Self::Aborted => "aborted",
        }
    }

    /// The ending of a proxy whose side a is the network (a session, or a relayed client).
    pub fn of(result: &Result<(), ProxyError>) -> Self {
        match result {
            Ok(()) => Self::Clean,
            Err(ProxyError::Idle(_)) => Self::Idle,
            Err(ProxyError::Io { side: Side::A, source }) => {
                RecordError::of(source).map_or(Self::NetworkError, |e| Self::Record(e.reason()))
            }
            Err(ProxyError::Io { side: Side::B, .. }) => Self::AppError,
        }
    }

    /// Whether the application may be told "end of stream": only when the peer closed
    /// in order. Every other ending resets the application's connection (docs/protocol.md).
    pub fn is_clean(self) -> bool {
        self == Self::Clean
    }
}

// === impl SessionGuard ===

impl<'a> SessionGuard<'a> {
    pub fn open(metrics: &'a Metrics, listener: Listener) -> Self {
        metrics.open_sessions.get_or_create(&listener.metric_label()).inc();
        Self {
            metrics,
            listener,
            ended: false,
        }
    }

    /// Records the bytes moved (`from_network`: opened and delivered to the plaintext
    /// side; `to_network`: the other way) and the ending.
    pub fn finish(mut self, from_network: u64, to_network: u64, ending: Ending) {
        let port = self.listener.label();
        let bytes = |direction| BytesLabels { port, direction };
        self.metrics.bytes.get_or_create(&bytes("in")).inc_by(from_network);
        self.metrics.bytes.get_or_create(&bytes("out")).inc_by(to_network);
        self.end(ending);
    }

    fn end(&mut self, ending: Ending) {
        self.ended = true;
        let labels = EndingLabels {
            port: self.listener.label(),
            ending: ending.label(),
        };
        self.metrics.sessions_ended.get_or_create(&labels).inc();
    }
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.end(Ending::Aborted);
        }
        self.metrics
            .open_sessions
            .get_or_create(&self.listener.metric_label())
            .dec();
    }
}

// === impl Refusals ===

impl Refusals {
    pub fn new(listener: Listener) -> Self {
        Self {
            listener,
            since_log: AtomicU64::new(0),
            last_log: Mutex::new(None),
        }
    }

    pub fn listener(&self) -> Listener {
        self.listener
    }

    /// Counts one refused handshake under `reason` and logs it when the interval allows.
    pub fn refuse(&self, metrics: &Metrics, reason: &'static str, detail: &dyn std::fmt::Display) {
        let labels = HandshakeLabels {
            port: self.listener.label(),
            result: "error",
            reason,
        };
        metrics.handshakes.get_or_create(&labels).inc();
        let refused = self.since_log.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::debug!(listener = self.listener.label(), reason, %detail, "handshake refused");
        let now = Instant::now();
        let mut last = self.last_log.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|at| now.duration_since(at) >= LOG_EVERY) {
            *last = Some(now);
            self.since_log.fetch_sub(refused, Ordering::Relaxed);
            tracing::warn!(
                listener = self.listener.label(),
                refused,
                latest_reason = reason,
                latest = %detail,
                "handshakes refused (one line per {LOG_EVERY:?} per listener; xlattice_sidecar_handshakes_total has every reason)"
            );
        }
    }
}

//! Moves bytes both ways between two streams, with an idle timeout.
//!
//! Unlike tokio::io::copy_bidirectional, each direction holds its buffer only while
//! data is in flight: a quiet session keeps no buffers, which is what lets a sidecar
//! hold thousands of idle sessions in little memory. Between a session and plaintext
//! (`proxy_session`), neither direction needs a buffer here at all: what leaves the session
//! is written from where it was decrypted, and what enters it is sealed where it was read.

use std::{
    future::{poll_fn, Future},
    io::{self, IoSlice},
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::Duration,
};

use xlattice_protocol::{BufferBudget, BufferSize, SecureStream, MAX_PLAINTEXT_SLICES};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Instant,
};

/// A direction's buffer follows the traffic (`BufferSize`) between one record's payload and
/// the record layer's largest batch.
const MIN_BUFFER: usize = 16 * 1024;
const MAX_BUFFER: usize = 1024 * 1024;

/// Bytes moved each way: (a to b, b to a).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transferred {
    pub a_to_b: u64,
    pub b_to_a: u64,
}

/// Plaintext bytes moved each way between a session and its plaintext side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionBytes {
    /// Opened from the session and delivered to the plaintext side.
    pub from_session: u64,
    /// Read from the plaintext side and sealed into the session.
    pub into_session: u64,
}

struct OneWay {
    buf: Vec<u8>,
    /// Size of the next allocation, following the traffic.
    size: BufferSize,
    start: usize,
    end: usize,
    unflushed: bool,
    eof: bool,
    done: bool,
    moved: u64,
}

impl OneWay {
    fn new(budget: Option<&Arc<BufferBudget>>) -> Self {
        let mut size = BufferSize::new(MIN_BUFFER, MAX_BUFFER);
        if let Some(budget) = budget {
            size.set_budget(budget.clone());
        }
        Self {
            buf: Vec::new(),
            size,
            start: 0,
            end: 0,
            unflushed: false,
            eof: false,
            done: false,
            moved: 0,
        }
    }
}

impl OneWay {
    /// Makes progress; `Ready` once the source hit EOF and the sink is shut down.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut from: Pin<&mut R>,
        mut to: Pin<&mut W>,
        active: &mut bool,
    ) -> Poll<Result<(), Failed>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if self.start < self.end {
                let n = ready!(to.as_mut().poll_write(cx, &self.buf[self.start..self.end])).map_err(Failed::Write)?;
                if n == 0 {
                    return Poll::Ready(Err(Failed::Write(io::ErrorKind::WriteZero.into())));
                }
                self.start += n;
                self.moved += n as u64;
                self.unflushed = true;
                *active = true;
                continue;
            }
            if self.eof {
                ready!(to.as_mut().poll_shutdown(cx)).map_err(Failed::Write)?;
                self.done = true;
                self.buf = Vec::new();
                self.size.release();
                continue;
            }
            let size = self.size.reserve();
            if self.buf.len() < size {
                self.buf = vec![0u8; size];
            }
            let mut read = ReadBuf::new(&mut self.buf);
            match from.as_mut().poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {
                    let n = read.filled().len();
                    *active = true;
                    if n == 0 {
                        self.eof = true;
                    } else {
                        (self.start, self.end) = (0, n);
                        self.size.record(n, self.buf.len());
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Failed::Read(e))),
                Poll::Pending => {
                    // Going quiet: give the buffer back and push out what the sink holds.
                    self.buf = Vec::new();
                    self.size.release();
                    if self.unflushed {
                        ready!(to.as_mut().poll_flush(cx)).map_err(Failed::Write)?;
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// Which end of one direction failed.
enum Failed {
    Read(io::Error),
    Write(io::Error),
}

impl Failed {
    /// Names the failed side, given the direction's source and sink.
    fn on(self, from: Side, to: Side) -> ProxyError {
        match self {
            Self::Read(source) => ProxyError::Io { side: from, source },
            Self::Write(source) => ProxyError::Io { side: to, source },
        }
    }
}

/// The session-to-plaintext direction: payloads are decrypted in place in the session's
/// read buffer and leave in one vectored write, so this direction holds no buffer of its
/// own and the bytes are touched once between the two sockets.
#[derive(Default)]
struct FromSession {
    unflushed: bool,
    done: bool,
    moved: u64,
}

impl FromSession {
    fn poll<S, W>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut SecureStream<S>,
        mut to: Pin<&mut W>,
        active: &mut bool,
    ) -> Poll<Result<(), Failed>>
    where
        S: AsyncRead + Unpin,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if from.poll_plaintext(cx).map_err(Failed::Read)?.is_pending() {
                if self.unflushed {
                    ready!(to.as_mut().poll_flush(cx)).map_err(Failed::Write)?;
                    self.unflushed = false;
                }
                return Poll::Pending;
            }
            let mut slices = [IoSlice::new(&[]); MAX_PLAINTEXT_SLICES];
            let mut count = 0;
            for (slot, payload) in slices.iter_mut().zip(from.plaintext()) {
                *slot = IoSlice::new(payload);
                count += 1;
            }
            *active = true;
            if count == 0 {
                ready!(to.as_mut().poll_shutdown(cx)).map_err(Failed::Write)?;
                self.done = true;
                continue;
            }
            let n = ready!(to.as_mut().poll_write_vectored(cx, &slices[..count])).map_err(Failed::Write)?;
            if n == 0 {
                return Poll::Ready(Err(Failed::Write(io::ErrorKind::WriteZero.into())));
            }
            from.consume_plaintext(n);
            self.moved += n as u64;
            self.unflushed = true;
        }
    }
}

/// The plaintext-to-session direction: the plaintext side's bytes are read into the
/// session's write buffer and sealed there, so this direction, like `FromSession`, holds
/// one buffer, not one here and one of sealed records. With two large buffers, both freed
/// whenever the application paused, glibc handed the pages back to the kernel (past its
/// trim threshold) and every burst faulted them in again (the figures: README, Performance).
#[derive(Default)]
struct IntoSession {
    unflushed: bool,
    eof: bool,
    done: bool,
    moved: u64,
}

impl IntoSession {
    fn poll<P, S>(
        &mut self,
        cx: &mut Context<'_>,
        mut from: Pin<&mut P>,
        to: &mut SecureStream<S>,
        active: &mut bool,
    ) -> Poll<Result<(), Failed>>
    where
        P: AsyncRead + ?Sized,
        S: AsyncWrite + Unpin,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            ready!(to.poll_send_sealed(cx)).map_err(Failed::Write)?;
            if self.eof {
                ready!(Pin::new(&mut *to).poll_shutdown(cx)).map_err(Failed::Write)?;
                self.done = true;
                continue;
            }
            let Poll::Ready(read) = to.poll_read_to_seal(cx, from.as_mut()) else {
                // Going quiet (the session gave its buffer back): push out what it holds.
                if self.unflushed {
                    ready!(Pin::new(&mut *to).poll_flush(cx)).map_err(Failed::Write)?;
                    self.unflushed = false;
                }
                return Poll::Pending;
            };
            *active = true;
            match read.map_err(Failed::Read)? {
                0 => self.eof = true,
                n => {
                    to.seal_read(n).map_err(Failed::Write)?;
                    self.moved += n as u64;
                    self.unflushed = true;
                }
            }
        }
    }
}

/// One of the two streams given to `proxy` (a, b) or `proxy_session` (session, plain).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::A => "a",
            Self::B => "b",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("idle for {0:?}")]
    Idle(Duration),
    #[error("side {side}: {source}")]
    Io { side: Side, source: io::Error },
}

/// How a proxy ended, and what it moved before that: bytes count whatever the ending.
#[derive(Debug)]
pub struct Proxied<T> {
    pub moved: T,
    pub result: Result<(), ProxyError>,
}

/// Proxies until both directions reach EOF, either side fails, or nothing moves
/// for `idle`. Buffers grow past their minimum only as far as `budget` allows.
pub async fn proxy<A, B>(
    a: &mut A,
    b: &mut B,
    idle: Duration,
    budget: Option<&Arc<BufferBudget>>,
) -> Proxied<Transferred>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (mut ab, mut ba) = (OneWay::new(budget), OneWay::new(budget));
    let result = drive(idle, |cx, active| {
        let forward = ab
            .poll(cx, Pin::new(&mut *a), Pin::new(&mut *b), active)
            .map_err(|f| f.on(Side::A, Side::B))?;
        let backward = ba
            .poll(cx, Pin::new(&mut *b), Pin::new(&mut *a), active)
            .map_err(|f| f.on(Side::B, Side::A))?;
        Poll::Ready(Ok(forward.is_ready() && backward.is_ready()))
    })
    .await;
    Proxied {
        moved: Transferred {
            a_to_b: ab.moved,
            b_to_a: ba.moved,
        },
        result,
    }
}

/// `proxy` between a session (side a) and a plaintext stream (side b). The session's
/// buffers share `budget` too.
pub async fn proxy_session<S, P>(
    session: &mut SecureStream<S>,
    plain: &mut P,
    idle: Duration,
    budget: Option<&Arc<BufferBudget>>,
) -> Proxied<SessionBytes>
where
    S: AsyncRead + AsyncWrite + Unpin,
    P: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    if let Some(budget) = budget {
        session.set_buffer_budget(budget.clone());
    }
    let (mut out_of_session, mut into_session) = (FromSession::default(), IntoSession::default());
    let result = drive(idle, |cx, active| {
        let forward = out_of_session
            .poll(cx, session, Pin::new(&mut *plain), active)
            .map_err(|f| f.on(Side::A, Side::B))?;
        let backward = into_session
            .poll(cx, Pin::new(&mut *plain), session, active)
            .map_err(|f| f.on(Side::B, Side::A))?;
        Poll::Ready(Ok(forward.is_ready() && backward.is_ready()))
    })
    .await;
    Proxied {
        moved: SessionBytes {
            from_session: out_of_session.moved,
            into_session: into_session.moved,
        },
        result,
    }
}

/// Polls `step` (which says whether both directions are done and whether anything
/// moved) until it is done, fails, or reports no movement for `idle`.
async fn drive<F>(idle: Duration, mut step: F) -> Result<(), ProxyError>
where
    F: FnMut(&mut Context<'_>, &mut bool) -> Poll<Result<bool, ProxyError>>,
{
    let mut last_active = Instant::now();
    let deadline = tokio::time::sleep(idle);
    tokio::pin!(deadline);
    poll_fn(|cx| {
        let mut active = false;
        if let Poll::Ready(done) = step(cx, &mut active) {
            if done? {
                return Poll::Ready(Ok(()));
            }
        }
        let now = Instant::now();
        if active {
            last_active = now;
        }
        if now >= last_active + idle {
            return Poll::Ready(Err(ProxyError::Idle(idle)));
        }
        if deadline.deadline() != last_active + idle {
            deadline.as_mut().reset(last_active + idle);
        }
        // Registers the timer's waker; if it already fired the check above ran.
        let _ = deadline.as_mut().poll(cx);
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn moves_both_ways_and_propagates_eof() {
        let (mut a_outer, mut a_inner) = tokio::io::duplex(1024);
        let (mut b_inner, mut b_outer) = tokio::io::duplex(1024);
        let task = tokio::spawn(async move { proxy(&mut a_inner, &mut b_inner, Duration::from_secs(5), None).await });
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            a_outer.write_all(&sent).await.unwrap();
            a_outer.shutdown().await.unwrap();
            let mut back = Vec::new();
            a_outer.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        b_outer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, data);
        b_outer.write_all(b"bye").await.unwrap();
        b_outer.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"bye");
        let proxied = task.await.unwrap();
        proxied.result.unwrap();
        assert_eq!(
            proxied.moved,
            Transferred {
                a_to_b: 200_000,
                b_to_a: 3
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn closes_an_idle_session() {
        let (_a_outer, mut a_inner) = tokio::io::duplex(64);
        let (mut b_inner, _b_outer) = tokio::io::duplex(64);
        let err = proxy(&mut a_inner, &mut b_inner, Duration::from_secs(30), None)
            .await
            .result
            .unwrap_err();
        assert!(matches!(err, ProxyError::Idle(_)), "{err}");
    }

    #[tokio::test]
    async fn a_session_and_plaintext_move_both_ways_through_a_sink_that_takes_little_at_a_time() {
        use xlattice_protocol::{handshake::SessionKeys, Role};
        let keys = SessionKeys {
            client_to_server: [7; 32].into(),
            server_to_client: [9; 32].into(),
            transcript_hash: [0; 32],
            version: xlattice_protocol::Version::Hybrid,
        };
        let (wire_client, wire_server) = tokio::io::duplex(64 * 1024);
        let mut client = SecureStream::new(wire_client, &keys, Role::Client, None);
        let mut server = SecureStream::new(wire_server, &keys, Role::Server, None);
        // A small pipe to the app: vectored writes of a whole batch are taken in pieces.
        let (mut app_inner, mut app) = tokio::io::duplex(1000);
        let task =
            tokio::spawn(async move { proxy_session(&mut server, &mut app_inner, Duration::from_secs(5), None).await });

        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 239) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        app.read_to_end(&mut got).await.unwrap();
        assert!(got == data, "{} of {} bytes, in order", got.len(), data.len());
        app.write_all(b"count: 1000000").await.unwrap();
        app.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"count: 1000000");
        let proxied = task.await.unwrap();
        proxied.result.unwrap();
        assert_eq!(
            proxied.moved,
            SessionBytes {
                from_session: 1_000_000,
                into_session: 14
            }
        );
    }
}

//! Moves bytes both ways between two streams, with an idle timeout.
//!
//! Unlike tokio::io::copy_bidirectional, each direction holds its buffer only while
//! data is in flight: a quiet session keeps no buffers, which is what lets a sidecar
//! hold thousands of idle sessions in little memory.

use std::{
    future::{poll_fn, Future},
    io,
    pin::Pin,
    task::{ready, Context, Poll},
    time::Duration,
};

use xlattice_protocol::ReadSize;

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Instant,
};

/// A direction's buffer follows the traffic (`ReadSize`) between one record's payload and
/// the record layer's largest batch.
const MIN_BUFFER: usize = 16 * 1024;
const MAX_BUFFER: usize = 256 * 1024;

/// Bytes moved each way: (a to b, b to a).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transferred {
    pub a_to_b: u64,
    pub b_to_a: u64,
}

struct OneWay {
    buf: Vec<u8>,
    /// Size of the next allocation, following the traffic.
    size: ReadSize,
    start: usize,
    end: usize,
    unflushed: bool,
    eof: bool,
    done: bool,
    moved: u64,
}

impl Default for OneWay {
    fn default() -> Self {
        Self {
            buf: Vec::new(),
            size: ReadSize::new(MIN_BUFFER, MAX_BUFFER),
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
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if self.start < self.end {
                let n = ready!(to.as_mut().poll_write(cx, &self.buf[self.start..self.end]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.start += n;
                self.moved += n as u64;
                self.unflushed = true;
                *active = true;
                continue;
            }
            if self.eof {
                ready!(to.as_mut().poll_shutdown(cx))?;
                self.done = true;
                self.buf = Vec::new();
                continue;
            }
            if self.buf.len() < self.size.next() {
                self.buf = vec![0u8; self.size.next()];
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
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Going quiet: give the buffer back and push out what the sink holds.
                    self.buf = Vec::new();
                    if self.unflushed {
                        ready!(to.as_mut().poll_flush(cx))?;
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("idle for {0:?}")]
    Idle(Duration),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Proxies until both directions reach EOF, either side fails, or nothing moves
/// for `idle`.
pub async fn proxy<A, B>(a: &mut A, b: &mut B, idle: Duration) -> Result<Transferred, ProxyError>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (mut ab, mut ba) = (OneWay::default(), OneWay::default());
    let mut last_active = Instant::now();
    let deadline = tokio::time::sleep(idle);
    tokio::pin!(deadline);
    let result = poll_fn(|cx| {
        let mut active = false;
        let forward = ab.poll(cx, Pin::new(&mut *a), Pin::new(&mut *b), &mut active)?;
        let backward = ba.poll(cx, Pin::new(&mut *b), Pin::new(&mut *a), &mut active)?;
        if forward.is_ready() && backward.is_ready() {
            return Poll::Ready(Ok(()));
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
    .await;
    result.map(|()| Transferred {
        a_to_b: ab.moved,
        b_to_a: ba.moved,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn moves_both_ways_and_propagates_eof() {
        let (mut a_outer, mut a_inner) = tokio::io::duplex(1024);
        let (mut b_inner, mut b_outer) = tokio::io::duplex(1024);
        let task = tokio::spawn(async move { proxy(&mut a_inner, &mut b_inner, Duration::from_secs(5)).await });
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
        let moved = task.await.unwrap().unwrap();
        assert_eq!(
            moved,
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
        let err = proxy(&mut a_inner, &mut b_inner, Duration::from_secs(30))
            .await
            .unwrap_err();
        assert!(matches!(err, ProxyError::Idle(_)), "{err}");
    }
}

//! Sockets with deadlines: a reused read buffer, and reads and writes that give up at a
//! deadline. The timer is one per connection, reset rather than made anew, and armed only
//! when the socket would block: a read that finds its bytes waiting costs no timer at all.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Why a read or write did not complete.
#[derive(Debug)]
pub enum IoFault {
    /// The deadline passed first.
    Timeout,
    /// The peer closed the connection (a read got end of stream; a write got nothing taken).
    Closed,
    /// Reset, or another socket error.
    Io(io::Error),
}

/// A connection's read buffer: bytes `start..end` are read and not yet consumed.
#[derive(Debug)]
pub struct Buffer {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl Buffer {
    pub fn new(capacity: usize) -> Self {
        Self { data: vec![0; capacity], start: 0, end: 0 }
    }

    /// What has been read and not consumed.
    pub fn readable(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Marks `n` bytes as used.
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Forgets everything read.
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Room for at least `want` more bytes: the unread bytes move to the front, or the buffer
    /// grows.
    fn spare(&mut self, want: usize) -> &mut [u8] {
        if self.data.len() - self.end < want {
            if self.start > 0 {
                self.data.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.data.len() - self.end < want {
                let grown = (self.end + want).max(self.data.len() * 2);
                self.data.resize(grown, 0);
            }
        }
        &mut self.data[self.end..]
    }

    /// Reads once from `socket` into the buffer, giving up at `deadline`; `Ok(0)` at the end of
    /// the stream.
    pub async fn read_from<R: AsyncRead + Unpin>(
        &mut self,
        socket: &mut R,
        timer: &mut Pin<Box<Sleep>>,
        deadline: Instant,
    ) -> Result<usize, IoFault> {
        let mut armed = false;
        let n = poll_fn(|cx| {
            let mut read = ReadBuf::new(self.spare(4096));
            match Pin::new(&mut *socket).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => return Poll::Ready(Ok(read.filled().len())),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(IoFault::Io(e))),
                Poll::Pending => {}
            }
            if !armed {
                armed = true;
                timer.as_mut().reset(deadline);
            }
            match timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(IoFault::Timeout)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await?;
        self.end += n;
        Ok(n)
    }
}

/// Writes all of `first` then `second`, failing when the peer takes nothing for `stall`.
pub async fn write_all<W: AsyncWrite + Unpin>(
    socket: &mut W,
    first: &[u8],
    second: &[u8],
    timer: &mut Pin<Box<Sleep>>,
    stall: Duration,
) -> Result<(), IoFault> {
    let (mut a, mut b) = (first, second);
    let mut armed = false;
    poll_fn(|cx| {
        while !a.is_empty() || !b.is_empty() {
            let written = if a.is_empty() {
                Pin::new(&mut *socket).poll_write(cx, b)
            } else if b.is_empty() {
                Pin::new(&mut *socket).poll_write(cx, a)
            } else {
                Pin::new(&mut *socket).poll_write_vectored(cx, &[io::IoSlice::new(a), io::IoSlice::new(b)])
            };
            match written {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(IoFault::Closed)),
                Poll::Ready(Ok(n)) => {
                    armed = false;
                    let from_a = n.min(a.len());
                    a = &a[from_a..];
                    b = &b[n - from_a..];
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(IoFault::Io(e))),
                Poll::Pending => {
                    if !armed {
                        armed = true;
                        timer.as_mut().reset(Instant::now() + stall);
                    }
                    return match timer.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Err(IoFault::Timeout)),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
        Poll::Ready(Ok(()))
    })
    .await
}

/// A timer for a connection, far in the future until reset.
pub fn idle_timer() -> Pin<Box<Sleep>> {
    Box::pin(tokio::time::sleep_until(far_future()))
}

/// A deadline that never comes in practice (and cannot overflow the clock).
pub fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(1 << 30)
}

/// `now + timeout`, saturating far in the future.
pub fn deadline_in(timeout: Duration) -> Instant {
    Instant::now().checked_add(timeout).unwrap_or_else(far_future)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_buffer_compacts_before_it_grows() {
        let mut buf = Buffer::new(8);
        buf.spare(8)[..8].copy_from_slice(b"abcdefgh");
        buf.end = 8;
        buf.consume(6);
        assert_eq!(buf.readable(), b"gh");
        let spare = buf.spare(4).len();
        assert_eq!((buf.readable(), spare), (&b"gh"[..], 6));
        buf.spare(100);
        assert!(buf.data.len() >= 102);
        assert_eq!(buf.readable(), b"gh");
        buf.consume(2);
        assert!(buf.is_empty() && buf.start == 0);
    }
}

//! The client's request body as the proxy reads it: framed by its head (a length, or chunked),
//! decoded, counted against `limits.max_body_bytes`, and timed by `timeouts.body_read` (the
//! longest pause) and `limits.min_body_rate` (after a grace of `body_read`, Apache
//! `mod_reqtimeout`'s rule: the allowance grows by one second per `min_body_rate` bytes).
//!
//! [`ClientBody::take`] is pure: it moves body data from the bytes already read into a buffer
//! of decoded data, leaving whatever follows the body (the next pipelined request) unread. The
//! connection reads more with [`ClientBody::deadline`].

use std::time::Duration;

use tokio::time::Instant;

use crate::error::ProxyError;
use crate::h1::Framing;
use crate::h1::chunked::ChunkedDecoder;

/// Why the client's body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    /// The body grew past `limits.max_body_bytes`.
    TooLarge,
    /// The client paused longer than `timeouts.body_read` between two pieces of its body.
    Stalled,
    /// The body arrived slower than `limits.min_body_rate` allows.
    TooSlow,
    /// Malformed chunked framing, or the client went away in the middle of its body.
    Malformed,
}

impl From<BodyFault> for ProxyError {
    fn from(fault: BodyFault) -> Self {
        match fault {
            BodyFault::TooLarge => Self::BodyTooLarge,
            BodyFault::Stalled => Self::BodyReadTimeout,
            BodyFault::TooSlow => Self::BodyTooSlow,
            BodyFault::Malformed => Self::BadRequestBody,
        }
    }
}

/// The rules for reading a client's body.
#[derive(Debug, Clone, Copy)]
pub struct BodyRules {
    /// `limits.max_body_bytes`.
    pub limit: Option<u64>,
    /// `timeouts.body_read`: the longest pause between two pieces, and the grace before the
    /// rate counts.
    pub gap: Duration,
    /// `limits.min_body_rate` in bytes per second; 0 for none.
    pub min_rate: u64,
}

#[derive(Debug)]
enum Remaining {
    Length(u64),
    Chunked(Box<ChunkedDecoder>),
    Done,
}

/// A request body being read.
#[derive(Debug)]
pub struct ClientBody {
    remaining: Remaining,
    rules: BodyRules,
    started: Instant,
    received: u64,
}

impl ClientBody {
    /// The body a head framed; `max_trailer_bytes` bounds a chunked body's trailer section.
    pub fn new(framing: Framing, rules: BodyRules, max_trailer_bytes: usize) -> Self {
        let remaining = match framing {
            Framing::Empty | Framing::UntilClose => Remaining::Done,
            Framing::Length(n) => Remaining::Length(n),
            Framing::Chunked => Remaining::Chunked(Box::new(ChunkedDecoder::new(max_trailer_bytes))),
        };
        Self { remaining, rules, started: Instant::now(), received: 0 }
    }

    /// Whether the whole body has been read.
    pub fn is_done(&self) -> bool {
        matches!(self.remaining, Remaining::Done)
    }

    /// The rest of a sized body still to come (`None` when chunked).
    pub fn remaining_length(&self) -> Option<u64> {
        match self.remaining {
            Remaining::Length(n) => Some(n),
            Remaining::Done => Some(0),
            Remaining::Chunked(_) => None,
        }
    }

    /// Moves the body data at the start of `input` (bytes read after the head) to the end of
    /// `out`, decoded; returns how much of `input` it consumed (what follows the body stays).
    pub fn take(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, BodyFault> {
        let (consumed, data) = match &mut self.remaining {
            Remaining::Done => return Ok(0),
            Remaining::Length(left) => {
                let take = usize::try_from(*left).unwrap_or(usize::MAX).min(input.len());
                out.extend_from_slice(&input[..take]);
                *left -= take as u64;
                if *left == 0 {
                    self.remaining = Remaining::Done;
                }
                (take, take)
            }
            Remaining::Chunked(decoder) => {
                let before = out.len();
                let decoded =
                    decoder.decode(input, |data| out.extend_from_slice(data)).map_err(|_| BodyFault::Malformed)?;
                if decoded.done {
                    self.remaining = Remaining::Done;
                }
                (decoded.consumed, out.len() - before)
            }
        };
        self.received += data as u64;
        if self.rules.limit.is_some_and(|limit| self.received > limit) {
            return Err(BodyFault::TooLarge);
        }
        Ok(consumed)
    }

    /// Until when the client may take to send more, and which rule that deadline enforces.
    pub fn deadline(&self) -> (Instant, BodyFault) {
        let gap = crate::io::deadline_in(self.rules.gap);
        if self.rules.min_rate == 0 {
            return (gap, BodyFault::Stalled);
        }
        let allowance = self.rules.gap + Duration::from_secs_f64(self.received as f64 / self.rules.min_rate as f64);
        let rate = self.started.checked_add(allowance).unwrap_or_else(crate::io::far_future);
        if rate < gap { (rate.max(Instant::now()), BodyFault::TooSlow) } else { (gap, BodyFault::Stalled) }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    const RULES: BodyRules = BodyRules { limit: Some(10), gap: Duration::from_secs(10), min_rate: 0 };

    #[test]
    fn a_sized_body_takes_its_length_and_leaves_the_next_request() {
        let mut body = ClientBody::new(Framing::Length(5), RULES, 1024);
        let mut out = Vec::new();
        assert_eq!(body.take(b"hel", &mut out), Ok(3));
        assert!(!body.is_done());
        assert_eq!(body.take(b"loGET /", &mut out), Ok(2));
        assert!(body.is_done());
        assert_eq!(out, b"hello");
    }

    #[test]
    fn a_chunked_body_is_decoded_and_limited() {
        let mut body = ClientBody::new(Framing::Chunked, RULES, 1024);
        let mut out = Vec::new();
        let input = b"5\r\nhello\r\n0\r\n\r\nnext";
        assert_eq!(body.take(input, &mut out), Ok(input.len() - 4));
        assert!(body.is_done());
        assert_eq!(out, b"hello");
        let mut body = ClientBody::new(Framing::Chunked, RULES, 1024);
        assert_eq!(body.take(b"b\r\nhello world\r\n", &mut Vec::new()), Err(BodyFault::TooLarge));
        let mut body = ClientBody::new(Framing::Chunked, RULES, 1024);
        assert_eq!(body.take(b"zz\r\n", &mut Vec::new()), Err(BodyFault::Malformed));
    }

    #[test]
    fn the_minimum_rate_deadline_grows_with_the_bytes_received() {
        let rules = BodyRules { limit: None, gap: Duration::from_secs(10), min_rate: 100 };
        let mut body = ClientBody::new(Framing::Length(10_000), rules, 1024);
        let (first, _) = body.deadline();
        body.take(&[0u8; 1000], &mut Vec::new()).unwrap();
        let (later, _) = body.deadline();
        // 1,000 bytes at 100 bytes/s: ten more seconds of allowance, capped by the gap.
        assert!(later >= first);
    }
}

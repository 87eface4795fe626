//! HTTP/1.1 on the wire: the proxy's own codec, pure (no I/O, no async).
//!
//! It parses request and response heads with `httparse` into spans of the read buffer (no
//! copy, no allocation per message), decides each message's framing by RFC 9112 §6 as strictly
//! as hyper does (the hostile-request suite and the differential fuzz target `h1_request`
//! hold it to that), decodes chunked bodies, and writes heads into reused buffers.
//!
//! ```text
//! request.rs   request head -> RequestHead { method, target, headers, framing, keep-alive, ... }
//! response.rs  response head -> ResponseHead { status, headers, framing, keep-alive }
//! chunked.rs   incremental chunked decoding (hyper's rules), and chunk framing for writing
//! date.rs      the Date header, formatted once a second
//! ```

pub mod chunked;
pub mod date;
pub mod request;
pub mod response;

/// A byte range of the buffer a head was parsed from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    fn of(buf: &[u8], part: &[u8]) -> Self {
        // `part` is a sub-slice of `buf` (httparse hands out slices of its input).
        let start = part.as_ptr() as usize - buf.as_ptr() as usize;
        Self { start: start as u32, end: (start + part.len()) as u32 }
    }

    /// The bytes of this span in `buf`.
    pub fn get(self, buf: &[u8]) -> &[u8] {
        &buf[self.start as usize..self.end as usize]
    }

    pub fn len(self) -> usize {
        (self.end - self.start) as usize
    }

    pub fn is_empty(self) -> bool {
        self.start == self.end
    }
}

/// One header line: its name and value (without surrounding whitespace).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeaderSpan {
    pub name: Span,
    pub value: Span,
}

/// The versions HTTP/1 speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// How a message's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (a response only).
    UntilClose,
}

/// The most headers a head may have (hyper's default; beyond it: 431).
pub const MAX_HEADERS: usize = 100;

/// A non-empty run of ASCII digits that fits a u64, nothing else (no sign, no space), as hyper
/// reads a `Content-Length`.
pub fn parse_digits(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() {
        return None;
    }
    bytes.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() { n.checked_mul(10)?.checked_add(u64::from(b - b'0')) } else { None }
    })
}

/// Whether a comma-separated header value lists `token` (any case, optional whitespace).
pub fn lists_token(value: &[u8], token: &[u8]) -> bool {
    value.split(|&b| b == b',').any(|t| trim_ows(t).eq_ignore_ascii_case(token))
}

/// The last element of a comma-separated list, without whitespace.
pub fn last_token(value: &[u8]) -> &[u8] {
    trim_ows(value.rsplit(|&b| b == b',').next().unwrap_or(value))
}

/// Trims optional whitespace (SP, HTAB) and, as `str::trim` does for hyper's list parsing,
/// the other ASCII whitespace.
pub fn trim_ows(bytes: &[u8]) -> &[u8] {
    bytes.trim_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_are_digits_only() {
        assert_eq!(parse_digits(b"0"), Some(0));
        assert_eq!(parse_digits(b"18446744073709551615"), Some(u64::MAX));
        for bad in [&b""[..], b"+5", b"-1", b"0x5", b"5a", b"5 5", b" 5", b"18446744073709551616"] {
            assert_eq!(parse_digits(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn token_lists() {
        assert!(lists_token(b"keep-alive, Close", b"close"));
        assert!(!lists_token(b"closed", b"close"));
        assert_eq!(last_token(b"gzip,  chunked "), b"chunked");
        assert_eq!(last_token(b"chunked"), b"chunked");
    }
}

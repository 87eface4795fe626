//! Response heads from an upstream, framed by RFC 9112 §6.3 with hyper 1's client rules.

use std::mem::MaybeUninit;

use super::{Framing, HeaderSpan, MAX_HEADERS, Span, Version, last_token, lists_token, parse_digits};

/// The largest upstream response head; beyond it the answer is a 502.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Why an upstream's response cannot be relayed (the client gets a 502).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseError {
    /// Not an HTTP/1 status line and headers.
    Malformed,
    /// Over [`MAX_RESPONSE_HEAD`] or [`MAX_HEADERS`].
    TooLarge,
    /// `Content-Length` values that disagree or are not numbers, or `Transfer-Encoding` on
    /// HTTP/1.0.
    BadFraming,
}

/// A parsed response head.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub len: usize,
    pub status: u16,
    pub reason: Span,
    pub version: Version,
    pub headers: Vec<HeaderSpan>,
    pub framing: Framing,
    /// Whether the upstream connection may carry another exchange, by the response alone.
    pub keep_alive: bool,
    /// `Transfer-Encoding` came, and its final coding is not `chunked`: the body is read until
    /// close and is still encoded.
    pub unrelayable_coding: bool,
    /// `Transfer-Encoding` came (a `Content-Length` beside it is to be dropped).
    pub has_transfer_encoding: bool,
}

impl Default for ResponseHead {
    fn default() -> Self {
        Self {
            len: 0,
            status: 0,
            reason: Span::default(),
            version: Version::Http11,
            headers: Vec::with_capacity(16),
            framing: Framing::Empty,
            keep_alive: true,
            unrelayable_coding: false,
            has_transfer_encoding: false,
        }
    }
}

/// What the request was, for the response's framing: a HEAD's answer has no body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Head,
    Other,
}

/// Parses a response head at the start of `buf`. `Ok(false)`: not complete yet. A 1xx head
/// parses like any other; the caller skips what it does not relay.
pub fn parse(buf: &[u8], request: RequestKind, head: &mut ResponseHead) -> Result<bool, ResponseError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut res, buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_RESPONSE_HEAD => return Err(ResponseError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(false),
        Err(httparse::Error::TooManyHeaders) => return Err(ResponseError::TooLarge),
        Err(_) => return Err(ResponseError::Malformed),
    };
    if len > MAX_RESPONSE_HEAD {
        return Err(ResponseError::TooLarge);
    }
    let (Some(code), Some(reason), Some(version)) = (res.code, res.reason, res.version) else {
        return Err(ResponseError::Malformed);
    };
    // `http::StatusCode` takes 100-999 only; hyper refuses the rest.
    if !(100..=999).contains(&code) {
        return Err(ResponseError::Malformed);
    }
    let is_http_11 = version == 1;
    head.len = len;
    head.status = code;
    head.reason = Span::of(buf, reason.as_bytes());
    head.version = if is_http_11 { Version::Http11 } else { Version::Http10 };
    head.headers.clear();
    head.keep_alive = is_http_11;
    let mut saw_close = false;
    let mut transfer_encoding: Option<&[u8]> = None;
    let mut lengths = Lengths::None;
    for header in res.headers.iter() {
        let (name, value) = (header.name.as_bytes(), header.value);
        head.headers.push(HeaderSpan { name: Span::of(buf, name), value: Span::of(buf, value) });
        if name.eq_ignore_ascii_case(b"connection") {
            if saw_close || lists_token(value, b"close") {
                saw_close = true;
                head.keep_alive = false;
            } else if !head.keep_alive {
                head.keep_alive = lists_token(value, b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = Some(value);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            lengths = lengths.with(value);
        }
    }
    head.has_transfer_encoding = transfer_encoding.is_some();
    head.unrelayable_coding = false;
    head.framing = match (code, request) {
        // No body, whatever the headers say (RFC 9112 §6.3 rule 1).
        (100..=199 | 204 | 304, _) | (_, RequestKind::Head) => Framing::Empty,
        _ => match (transfer_encoding, lengths) {
            (Some(_), _) if !is_http_11 => return Err(ResponseError::BadFraming),
            (Some(last_line), _) => {
                if last_token(last_line).eq_ignore_ascii_case(b"chunked") {
                    Framing::Chunked
                } else {
                    head.unrelayable_coding = true;
                    Framing::UntilClose
                }
            }
            (None, Lengths::One(0)) => Framing::Empty,
            // hyper keeps the two lengths above this for itself, and refuses them.
            (None, Lengths::One(length)) if length > u64::MAX - 2 => return Err(ResponseError::BadFraming),
            (None, Lengths::One(length)) => Framing::Length(length),
            (None, Lengths::Invalid) => return Err(ResponseError::BadFraming),
            (None, Lengths::None) => Framing::UntilClose,
        },
    };
    if head.framing == Framing::UntilClose {
        head.keep_alive = false;
    }
    Ok(true)
}

/// The `Content-Length` values seen so far: every value, and every comma-separated element of
/// one, must be the same number, as hyper's client requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lengths {
    None,
    One(u64),
    Invalid,
}

impl Lengths {
    fn with(self, value: &[u8]) -> Self {
        let mut merged = self;
        for element in value.split(|&b| b == b',') {
            merged = match (merged, parse_digits(element.trim_ascii())) {
                (Self::Invalid, _) | (_, None) => return Self::Invalid,
                (Self::One(seen), Some(length)) if seen != length => return Self::Invalid,
                (_, Some(length)) => Self::One(length),
            };
        }
        merged
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn framing(bytes: &[u8], request: RequestKind) -> Result<(Framing, bool), ResponseError> {
        let mut head = ResponseHead::default();
        assert!(parse(bytes, request, &mut head)?, "complete");
        Ok((head.framing, head.keep_alive))
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        use RequestKind::{Head, Other};
        type Case = (&'static [u8], RequestKind, Result<(Framing, bool), ResponseError>);
        let cases: &[Case] = &[
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", Other, Ok((Framing::Length(5), true))),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", Head, Ok((Framing::Empty, true))),
            (b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", Other, Ok((Framing::Empty, true))),
            (b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n", Other, Ok((Framing::Empty, true))),
            (b"HTTP/1.1 100 Continue\r\n\r\n", Other, Ok((Framing::Empty, true))),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
                Other,
                Ok((Framing::Chunked, true)),
            ),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", Other, Ok((Framing::UntilClose, false))),
            (b"HTTP/1.1 200 OK\r\n\r\n", Other, Ok((Framing::UntilClose, false))),
            (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n", Other, Ok((Framing::Length(2), false))),
            (
                b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n",
                Other,
                Ok((Framing::Length(2), true)),
            ),
            (
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n",
                Other,
                Ok((Framing::Length(2), false)),
            ),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n", Other, Ok((Framing::Length(5), true))),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                Other,
                Err(ResponseError::BadFraming),
            ),
            (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", Other, Err(ResponseError::BadFraming)),
            (b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", Other, Err(ResponseError::BadFraming)),
        ];
        for (bytes, request, expected) in cases {
            assert_eq!(framing(bytes, *request), *expected, "{}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn malformed_and_oversized_heads_are_refused() {
        let mut head = ResponseHead::default();
        for bad in [
            &b"HTTP/1.2 200 OK\r\n\r\n"[..],
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX : a\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\0b\r\n\r\n",
        ] {
            assert_eq!(
                parse(bad, RequestKind::Other, &mut head),
                Err(ResponseError::Malformed),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let big = format!("HTTP/1.1 200 OK\r\nX: {}\r\n", "a".repeat(MAX_RESPONSE_HEAD));
        assert_eq!(parse(big.as_bytes(), RequestKind::Other, &mut head), Err(ResponseError::TooLarge));
        assert_eq!(parse(b"HTTP/1.1 200 OK\r\n", RequestKind::Other, &mut head), Ok(false));
    }
}

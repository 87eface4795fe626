//! Request heads: parsed at the start of the client's read buffer, framed by RFC 9112 §6.3
//! with hyper 1's rules (which the hostile-request suite was written against).

use std::mem::MaybeUninit;

use super::{Framing, HeaderSpan, MAX_HEADERS, Span, Version, last_token, lists_token, parse_digits};

/// The longest request target, as hyper and `http::Uri` allow it (beyond it: 414).
pub const MAX_TARGET_LEN: usize = u16::MAX as usize - 1;

/// The largest body length that can be framed: hyper keeps the two values above it for itself,
/// and answers a longer `Content-Length` with 431; so does this parser.
const MAX_BODY_LENGTH: u64 = u64::MAX - 2;

/// The start of the HTTP/2 connection preface: a client speaking HTTP/2 with prior knowledge.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// Why a request head is refused before it is routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Not an HTTP/1 request head (400, and the connection closes).
    Malformed,
    /// Over `max_header_bytes`, more than [`MAX_HEADERS`] headers, or a `Content-Length` too
    /// large to frame (431, close).
    TooLarge,
    /// A request target over [`MAX_TARGET_LEN`] (414, close).
    TargetTooLong,
    /// The HTTP/2 preface: the connection closes without an answer.
    Http2Preface,
}

/// What the request target is (RFC 9112 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetForm {
    /// `/path?query`.
    Origin,
    /// `http://authority/path?query`: `authority` is set.
    Absolute,
    /// `host:port`, for CONNECT.
    Authority,
    /// `*`, for OPTIONS.
    Asterisk,
}

/// A parsed request head: spans of the buffer it was parsed from, and what its headers say.
#[derive(Debug, Clone)]
pub struct RequestHead {
    /// Bytes of the head, up to and including the blank line; the body starts there.
    pub len: usize,
    pub method: Span,
    pub form: TargetForm,
    /// The path and query the request is for (a fragment is dropped, as `http::Uri` drops it);
    /// empty for the authority and asterisk forms.
    pub path_and_query: Span,
    /// The authority of an absolute-form or authority-form target.
    pub authority: Span,
    pub version: Version,
    /// Every header line, in order.
    pub headers: Vec<HeaderSpan>,
    pub framing: Framing,
    /// Whether the connection may carry another request after this one, by the request alone.
    pub keep_alive: bool,
    pub expect_continue: bool,
    /// `Upgrade` on HTTP/1.1, or CONNECT.
    pub wants_upgrade: bool,
    /// The client framed a body (`Content-Length` or `Transfer-Encoding`), even an empty one.
    pub framed_body: bool,
}

impl Default for RequestHead {
    fn default() -> Self {
        Self {
            len: 0,
            method: Span::default(),
            form: TargetForm::Origin,
            path_and_query: Span::default(),
            authority: Span::default(),
            version: Version::Http11,
            headers: Vec::with_capacity(32),
            framing: Framing::Empty,
            keep_alive: true,
            expect_continue: false,
            wants_upgrade: false,
            framed_body: false,
        }
    }
}

impl RequestHead {
    /// The method, as text (httparse has checked it is a token).
    pub fn method<'b>(&self, buf: &'b [u8]) -> &'b str {
        std::str::from_utf8(self.method.get(buf)).unwrap_or("")
    }

    /// The path and query, as text (checked to be ASCII, or UTF-8 in the high bytes).
    pub fn path_and_query<'b>(&self, buf: &'b [u8]) -> &'b str {
        std::str::from_utf8(self.path_and_query.get(buf)).unwrap_or("")
    }

    /// The authority of an absolute-form or authority-form target.
    pub fn authority<'b>(&self, buf: &'b [u8]) -> Option<&'b str> {
        match self.form {
            TargetForm::Absolute | TargetForm::Authority => std::str::from_utf8(self.authority.get(buf)).ok(),
            _ => None,
        }
    }
}

/// Parses the request head at the start of `buf` into `head`. `Ok(false)`: not complete yet
/// (read more and call again). `max_head` is `limits.max_header_bytes`.
pub fn parse(buf: &[u8], max_head: usize, head: &mut RequestHead) -> Result<bool, HeadError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut req, buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > max_head => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(false),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(httparse::Error::Version) if skip_empty_lines(buf).starts_with(H2_PREFACE) => {
            return Err(HeadError::Http2Preface);
        }
        Err(_) => return Err(HeadError::Malformed),
    };
    if len > max_head {
        return Err(HeadError::TooLarge);
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Malformed);
    };
    if target.len() > MAX_TARGET_LEN {
        return Err(HeadError::TargetTooLong);
    }
    let is_http_11 = version == 1;
    head.len = len;
    head.method = Span::of(buf, method.as_bytes());
    head.version = if is_http_11 { Version::Http11 } else { Version::Http10 };
    read_target(buf, Span::of(buf, target.as_bytes()), head)?;

    head.headers.clear();
    head.keep_alive = is_http_11;
    head.expect_continue = false;
    head.wants_upgrade = method == "CONNECT";
    let mut saw_close = false;
    let mut content_length: Option<u64> = None;
    let (mut is_cl, mut is_te, mut is_te_chunked) = (false, false, false);
    for header in req.headers.iter() {
        let (name, value) = (header.name.as_bytes(), header.value);
        head.headers.push(HeaderSpan { name: Span::of(buf, name), value: Span::of(buf, value) });
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if !is_http_11 {
                return Err(HeadError::Malformed);
            }
            is_te = true;
            content_length = None;
            // The last line decides: `chunked` must be the final coding.
            is_te_chunked = last_token(value).eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case(b"content-length") {
            is_cl = true;
            if is_te {
                continue;
            }
            let length = parse_digits(value).ok_or(HeadError::Malformed)?;
            match content_length {
                Some(previous) if previous != length => return Err(HeadError::Malformed),
                _ => content_length = Some(length),
            }
            if length > MAX_BODY_LENGTH {
                return Err(HeadError::TooLarge);
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            // Once any line asks to close, a later `keep-alive` cannot undo it.
            if saw_close || lists_token(value, b"close") {
                saw_close = true;
                head.keep_alive = false;
            } else if !head.keep_alive {
                head.keep_alive = lists_token(value, b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            head.expect_continue = value.eq_ignore_ascii_case(b"100-continue");
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            head.wants_upgrade = is_http_11;
        }
    }
    if is_te && !is_te_chunked {
        return Err(HeadError::Malformed);
    }
    head.framing = match (is_te, content_length) {
        (true, _) => Framing::Chunked,
        (false, Some(0) | None) => Framing::Empty,
        (false, Some(length)) => Framing::Length(length),
    };
    head.framed_body = is_te || is_cl;
    // Framed by Transfer-Encoding, with a Content-Length beside it: whatever follows cannot be
    // trusted to start where either says, so the connection ends after this exchange.
    if is_te && is_cl {
        head.keep_alive = false;
    }
    Ok(true)
}

/// httparse skips empty lines before a request line (RFC 9112 §2.2); so does the preface check.
fn skip_empty_lines(buf: &[u8]) -> &[u8] {
    let start = buf.iter().position(|&b| b != b'\r' && b != b'\n').unwrap_or(buf.len());
    &buf[start..]
}

/// The target's form and parts, checked as `http::Uri` checks it (hyper refuses with 400 what
/// `http::Uri` does not accept).
fn read_target(buf: &[u8], target: Span, head: &mut RequestHead) -> Result<(), HeadError> {
    let bytes = target.get(buf);
    head.authority = Span::default();
    if matches!(bytes.first(), Some(b'/' | b'?' | b'#')) {
        head.form = TargetForm::Origin;
        let kept = scan_path_and_query(bytes).ok_or(HeadError::Malformed)?;
        head.path_and_query = Span { start: target.start, end: target.start + kept as u32 };
        return Ok(());
    }
    if bytes == b"*" {
        head.form = TargetForm::Asterisk;
        head.path_and_query = Span { start: target.start, end: target.start };
        return Ok(());
    }
    // The rare forms: let `http::Uri` judge them exactly as hyper's parser does.
    let uri = http::Uri::try_from(bytes).map_err(|_| HeadError::Malformed)?;
    let Some(authority) = uri.authority() else { return Err(HeadError::Malformed) };
    let at = find(bytes, authority.as_str().as_bytes()).ok_or(HeadError::Malformed)?;
    head.authority =
        Span { start: target.start + at as u32, end: target.start + (at + authority.as_str().len()) as u32 };
    if uri.scheme().is_none() {
        head.form = TargetForm::Authority;
        head.path_and_query = Span { start: target.end, end: target.end };
        return Ok(());
    }
    head.form = TargetForm::Absolute;
    let rest = &bytes[at + authority.as_str().len()..];
    let kept = if rest.is_empty() { 0 } else { scan_path_and_query(rest).ok_or(HeadError::Malformed)? };
    let start = head.authority.end;
    head.path_and_query = Span { start, end: start + kept as u32 };
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len().max(1)).position(|w| w == needle)
}

/// How many bytes of a path-and-query target are kept (all up to a `#`), or `None` when a byte
/// is one `http::Uri` refuses: the WHATWG path and query sets, `"{}` accepted in the path as
/// `http` accepts them, bytes above ASCII only as valid UTF-8.
fn scan_path_and_query(bytes: &[u8]) -> Option<usize> {
    let mut in_query = false;
    let mut end = bytes.len();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'#' => {
                end = i;
                break;
            }
            b'?' if !in_query => in_query = true,
            _ if in_query && is_query_byte(b) => {}
            _ if !in_query && is_path_byte(b) => {}
            0x80..=0xFF => {}
            _ => return None,
        }
    }
    let kept = &bytes[..end];
    if kept.iter().any(|b| !b.is_ascii()) && std::str::from_utf8(kept).is_err() {
        return None;
    }
    Some(end)
}

fn is_path_byte(b: u8) -> bool {
    matches!(b, 0x21 | 0x24..=0x3B | 0x3D | 0x40..=0x5F | 0x61..=0x7A | 0x7C | 0x7E | b'"' | b'{' | b'}')
}

fn is_query_byte(b: u8) -> bool {
    matches!(b, 0x21 | 0x24..=0x3B | 0x3D | 0x3F..=0x7E)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn parsed(bytes: &[u8]) -> Result<RequestHead, HeadError> {
        let mut head = RequestHead::default();
        match parse(bytes, 16 * 1024, &mut head)? {
            true => Ok(head),
            false => panic!("incomplete: {:?}", String::from_utf8_lossy(bytes)),
        }
    }

    #[test]
    fn a_simple_get_has_no_body_and_keeps_the_connection() {
        let buf = b"GET /foo/bar?x=1#frag HTTP/1.1\r\nHost: a\r\n\r\nnext";
        let head = parsed(buf).unwrap();
        assert_eq!(head.len, buf.len() - 4);
        assert_eq!(head.method(buf), "GET");
        assert_eq!(head.path_and_query(buf), "/foo/bar?x=1");
        assert_eq!((head.framing, head.keep_alive, head.framed_body), (Framing::Empty, true, false));
        assert_eq!(head.headers.len(), 1);
    }

    #[test]
    fn framing_follows_rfc_9112_and_hypers_rules() {
        let cases: &[(&[u8], Result<Framing, HeadError>)] = &[
            (b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n", Ok(Framing::Length(5))),
            (b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", Ok(Framing::Empty)),
            (b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", Ok(Framing::Length(5))),
            (b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", Err(HeadError::Malformed)),
            (b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n", Err(HeadError::Malformed)),
            (b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n", Err(HeadError::Malformed)),
            (b"POST / HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\n", Err(HeadError::TooLarge)),
            (b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", Err(HeadError::Malformed)),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", Ok(Framing::Chunked)),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", Ok(Framing::Chunked)),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n", Err(HeadError::Malformed)),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n",
                Err(HeadError::Malformed),
            ),
            (b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", Ok(Framing::Chunked)),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: bad\r\n\r\n", Ok(Framing::Chunked)),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", Err(HeadError::Malformed)),
        ];
        for (bytes, expected) in cases {
            assert_eq!(parsed(bytes).map(|h| h.framing), *expected, "{}", String::from_utf8_lossy(bytes));
        }
        // CL with TE: framed by TE, and the connection is not kept.
        let head = parsed(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        assert!(!head.keep_alive && head.framed_body);
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection() {
        let cases: &[(&[u8], bool)] = &[
            (b"GET / HTTP/1.1\r\n\r\n", true),
            (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", false),
            (b"GET / HTTP/1.1\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n", false),
            (b"GET / HTTP/1.0\r\n\r\n", false),
            (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true),
        ];
        for (bytes, keep) in cases {
            assert_eq!(parsed(bytes).unwrap().keep_alive, *keep, "{}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn heads_hyper_refuses_are_refused() {
        let malformed: &[&[u8]] = &[
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET / http/1.1\r\n\r\n",
            b"GET / HTTP/1.2\r\n\r\n",
            b"GET /\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
            b"GET / HTTP/1.1\r\nX : a\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
            b"GET /a\x7fb HTTP/1.1\r\n\r\n",
            b"GET /a<b HTTP/1.1\r\n\r\n",
            b"GET /caf\xe9 HTTP/1.1\r\n\r\n",
        ];
        for bytes in malformed {
            let mut head = RequestHead::default();
            assert_eq!(
                parse(bytes, 16 * 1024, &mut head),
                Err(HeadError::Malformed),
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
        let mut head = RequestHead::default();
        assert_eq!(parse(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 16 * 1024, &mut head), Err(HeadError::Http2Preface));
        let many: String = (0..101).map(|i| format!("X-{i}: 1\r\n")).collect();
        let bytes = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(parse(bytes.as_bytes(), 16 * 1024, &mut head), Err(HeadError::TooLarge));
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(5000));
        assert_eq!(parse(long.as_bytes(), 4096, &mut head), Err(HeadError::TooLarge));
        assert_eq!(parse(&long.as_bytes()[..4500], 4096, &mut head), Err(HeadError::TooLarge));
        assert_eq!(parse(&long.as_bytes()[..3000], 4096, &mut head), Ok(false));
    }

    #[test]
    fn target_forms() {
        let buf = b"GET http://api.example.com:80/foo/x?y#z HTTP/1.1\r\n\r\n";
        let head = parsed(buf).unwrap();
        assert_eq!(
            (head.form, head.authority(buf), head.path_and_query(buf)),
            (TargetForm::Absolute, Some("api.example.com:80"), "/foo/x?y")
        );
        let buf = b"GET http://api.example.com HTTP/1.1\r\n\r\n";
        let head = parsed(buf).unwrap();
        assert_eq!((head.authority(buf), head.path_and_query(buf)), (Some("api.example.com"), ""));
        let buf = b"CONNECT api.example.com:443 HTTP/1.1\r\n\r\n";
        let head = parsed(buf).unwrap();
        assert_eq!((head.form, head.authority(buf)), (TargetForm::Authority, Some("api.example.com:443")));
        assert!(head.wants_upgrade);
        let head = parsed(b"OPTIONS * HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(head.form, TargetForm::Asterisk);
        let buf = "GET /caf\u{e9} HTTP/1.1\r\n\r\n".as_bytes();
        assert_eq!(parsed(buf).unwrap().path_and_query(buf), "/caf\u{e9}");
    }
}

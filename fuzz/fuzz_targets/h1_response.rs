//! Differential: the proxy's response parser against hyper 1's client, on the same bytes.
//!
//! The first input byte says whether the request was a `HEAD` (odd) or a `GET`; the rest is what
//! the upstream answers before it closes. hyper's client reads it over an in-memory pipe; the
//! proxy's codec (`gatehouse_proxy::h1::response::parse`, skipping informational heads as the
//! proxy does, then the body by its framing) reads it too. They must agree: the same status,
//! headers, version and body bytes, or both refusing.
//!
//! Differences that are the proxy's by design, and allowed: it refuses a head over 64 KiB
//! (hyper's buffer goes to about 400 KiB).
#![no_main]

use gatehouse_fuzz::hyper_peer::{ClientRead, client_reads};
use gatehouse_proxy::h1::Framing;
use gatehouse_proxy::h1::chunked::ChunkedDecoder;
use gatehouse_proxy::h1::response::{MAX_RESPONSE_HEAD, RequestKind, ResponseError, ResponseHead, parse};
use libfuzzer_sys::fuzz_target;

fn ours(head_request: bool, data: &[u8]) -> (ClientRead, bool) {
    let kind = if head_request { RequestKind::Head } else { RequestKind::Other };
    let mut at = 0;
    let mut head = ResponseHead::default();
    loop {
        match parse(&data[at..], kind, &mut head) {
            Ok(true) if (100..200).contains(&head.status) && head.status != 101 => at += head.len,
            Ok(true) => break,
            Ok(false) => return (ClientRead::Refused, false),
            Err(e) => return (ClientRead::Refused, e == ResponseError::TooLarge),
        }
    }
    let buf = &data[at..];
    let mut headers: Vec<(String, Vec<u8>)> = head
        .headers
        .iter()
        .map(|h| (String::from_utf8_lossy(h.name.get(buf)).to_ascii_lowercase(), h.value.get(buf).to_vec()))
        .collect();
    headers.sort();
    let rest = &buf[head.len..];
    let body = match head.framing {
        Framing::Empty => Ok(Vec::new()),
        Framing::Length(n) => {
            usize::try_from(n).ok().filter(|&n| n <= rest.len()).map(|n| rest[..n].to_vec()).ok_or(())
        }
        Framing::UntilClose => Ok(rest.to_vec()),
        Framing::Chunked => {
            let mut decoder = ChunkedDecoder::new(MAX_RESPONSE_HEAD);
            let mut body = Vec::new();
            match decoder.decode(rest, |d| body.extend_from_slice(d)) {
                Ok(d) if d.done => Ok(body),
                _ => Err(()),
            }
        }
    };
    let read = ClientRead::Response {
        status: head.status,
        http11: head.version == gatehouse_proxy::h1::Version::Http11,
        headers,
        body,
    };
    (read, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, answer)) = data.split_first() else { return };
    let head_request = first % 2 == 1;
    let theirs = client_reads(head_request, answer);
    let (ours, too_large) = ours(head_request, answer);
    // A 101 is an upgrade: hyper hands over the connection, and its body is not HTTP.
    let (ours, theirs) = match (ours, theirs) {
        (
            ClientRead::Response { status: 101, http11, headers, .. },
            ClientRead::Response { status: 101, body: _, headers: h2, http11: v2 },
        ) => (
            ClientRead::Response { status: 101, http11, headers, body: Ok(Vec::new()) },
            ClientRead::Response { status: 101, http11: v2, headers: h2, body: Ok(Vec::new()) },
        ),
        pair => pair,
    };
    assert!(
        ours == theirs || too_large,
        "the codec and hyper disagree on the answer {:?} (HEAD: {head_request}):\n  codec: {ours:?}\n  hyper: {theirs:?}",
        String::from_utf8_lossy(answer)
    );
});

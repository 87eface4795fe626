//! Every way a request can fail, and the one place a failure becomes an answer: a row of
//! {status, body, whether the connection closes} per failure ([`ProxyError::answer`]).

use gatehouse_convention::Rejection;
use http::StatusCode;

use crate::h1::request::HeadError;
use crate::request::HeadRejection;

/// Why the proxy answered a request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// The convention refused the host or path (404 or 400, as the convention says).
    Rejected(Rejection),
    /// No `Host`, several, or a malformed one (400).
    BadHost,
    /// `CONNECT`: no tunnels through the edge (405).
    Connect,
    /// `TRACE` (405).
    Trace,
    /// A method that is not upper case (400).
    BadMethod,
    /// The readiness path answers `GET` and `HEAD` only (405).
    ReadinessMethod,
    /// A transfer coding other than `chunked` (501, RFC 9112 §6.1): its content would be
    /// forwarded as if it were not encoded.
    UnsupportedTransferCoding,
    /// The body's framing is malformed (`chunked` twice, a bad chunk), or the client went
    /// away in the middle of it (400).
    BadRequestBody,
    /// The client paused longer than `timeouts.body_read` in the middle of its body (408).
    BodyReadTimeout,
    /// The client sent its body slower than `limits.min_body_rate` (408).
    BodyTooSlow,
    /// The trusted hop's entry in `X-Forwarded-For` is not an address (400).
    BadForwardedFor,
    /// A chunked body too large to buffer, for an upstream that speaks HTTP/1.0 and so cannot
    /// frame it (411: the client can send it with a `Content-Length`).
    LengthRequired,
    /// The path names a Service this edge could reach, but there is no such Service.
    UnknownService,
    /// The Service exists but has no ready endpoint.
    NoReadyEndpoint,
    /// `max_connections` reached.
    Overloaded,
    /// The request body is over `limits.max_body_bytes`.
    BodyTooLarge,
    /// The upstream refused or reset the connection.
    UpstreamUnavailable,
    /// The upstream answered something the proxy must not relay: a `101` nobody asked for, a
    /// transfer coding other than `chunked`.
    UpstreamProtocol,
    /// The upstream did not accept the connection or answer within its timeout.
    UpstreamTimeout,
    /// The request head is not HTTP/1 (400).
    MalformedHead,
    /// The request head is over `max_header_bytes` or 100 headers (431).
    HeadTooLarge,
    /// The request target is over 65,534 bytes (414).
    TargetTooLong,
}

/// What the client gets for a failure: one row per error.
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    pub status: StatusCode,
    pub body: &'static [u8],
    /// The connection must not carry another request: the rest of this request's bytes were
    /// not read, or cannot be trusted to end where they say, or the client is to go away.
    pub close: bool,
    pub allow: Option<&'static str>,
}

const ROUTED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

impl ProxyError {
    /// A short stable name for logs.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Rejected(r) => r.reason(),
            Self::BadHost => "bad_host",
            Self::Connect => "connect_refused",
            Self::Trace => "trace_refused",
            Self::BadMethod => "bad_method",
            Self::ReadinessMethod => "readiness_method",
            Self::UnsupportedTransferCoding => "unsupported_transfer_coding",
            Self::BadRequestBody => "bad_request_body",
            Self::BodyReadTimeout => "body_read_timeout",
            Self::BodyTooSlow => "body_too_slow",
            Self::BadForwardedFor => "bad_forwarded_for",
            Self::LengthRequired => "length_required",
            Self::UnknownService => "unknown_service",
            Self::NoReadyEndpoint => "no_ready_endpoint",
            Self::Overloaded => "overloaded",
            Self::BodyTooLarge => "body_too_large",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::UpstreamProtocol => "upstream_protocol_error",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::MalformedHead => "malformed_head",
            Self::HeadTooLarge => "head_too_large",
            Self::TargetTooLong => "target_too_long",
        }
    }

    /// The one classification: what the client gets for this failure.
    pub fn answer(self) -> Answer {
        let row = |status, body, close| Answer { status, body, close, allow: None };
        match self {
            Self::Rejected(r) => match r.status_code() {
                400 => row(StatusCode::BAD_REQUEST, b"{\"error\":\"bad request path\"}\n", false),
                _ => row(StatusCode::NOT_FOUND, b"{\"error\":\"no route\"}\n", false),
            },
            Self::BadHost => row(StatusCode::BAD_REQUEST, b"{\"error\":\"bad or missing host\"}\n", false),
            // What follows a CONNECT head may be meant for a tunnel, never to be read as requests.
            Self::Connect => Answer {
                allow: Some(ROUTED_METHODS),
                ..row(StatusCode::METHOD_NOT_ALLOWED, b"{\"error\":\"CONNECT is not supported\"}\n", true)
            },
            Self::Trace => Answer {
                allow: Some(ROUTED_METHODS),
                ..row(StatusCode::METHOD_NOT_ALLOWED, b"{\"error\":\"TRACE is not supported\"}\n", false)
            },
            Self::BadMethod => row(StatusCode::BAD_REQUEST, b"{\"error\":\"bad method\"}\n", false),
            Self::ReadinessMethod => Answer {
                allow: Some("GET, HEAD"),
                ..row(StatusCode::METHOD_NOT_ALLOWED, b"{\"error\":\"method not allowed\"}\n", false)
            },
            Self::UnsupportedTransferCoding => {
                row(StatusCode::NOT_IMPLEMENTED, b"{\"error\":\"transfer coding not supported\"}\n", true)
            }
            Self::BadRequestBody => row(StatusCode::BAD_REQUEST, b"{\"error\":\"malformed request body\"}\n", true),
            // RFC 9110 §15.5.9: a 408 closes the connection.
            Self::BodyReadTimeout => row(StatusCode::REQUEST_TIMEOUT, b"{\"error\":\"request body timeout\"}\n", true),
            Self::BodyTooSlow => row(StatusCode::REQUEST_TIMEOUT, b"{\"error\":\"request body too slow\"}\n", true),
            Self::BadForwardedFor => row(StatusCode::BAD_REQUEST, b"{\"error\":\"bad x-forwarded-for\"}\n", false),
            Self::LengthRequired => {
                row(StatusCode::LENGTH_REQUIRED, b"{\"error\":\"content-length required\"}\n", true)
            }
            Self::UnknownService => row(StatusCode::NOT_FOUND, b"{\"error\":\"no route\"}\n", false),
            Self::NoReadyEndpoint => {
                row(StatusCode::SERVICE_UNAVAILABLE, b"{\"error\":\"no ready endpoint\"}\n", false)
            }
            // This connection should not stay.
            Self::Overloaded => row(StatusCode::SERVICE_UNAVAILABLE, b"{\"error\":\"overloaded\"}\n", true),
            Self::BodyTooLarge => {
                row(StatusCode::PAYLOAD_TOO_LARGE, b"{\"error\":\"request body too large\"}\n", false)
            }
            Self::UpstreamUnavailable => row(StatusCode::BAD_GATEWAY, b"{\"error\":\"upstream unavailable\"}\n", false),
            Self::UpstreamProtocol => row(StatusCode::BAD_GATEWAY, b"{\"error\":\"upstream protocol error\"}\n", false),
            Self::UpstreamTimeout => row(StatusCode::GATEWAY_TIMEOUT, b"{\"error\":\"upstream timeout\"}\n", false),
            // What follows a head that could not be read cannot be found either.
            Self::MalformedHead => row(StatusCode::BAD_REQUEST, b"{\"error\":\"malformed request\"}\n", true),
            Self::HeadTooLarge => {
                row(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, b"{\"error\":\"request head too large\"}\n", true)
            }
            Self::TargetTooLong => row(StatusCode::URI_TOO_LONG, b"{\"error\":\"request target too long\"}\n", true),
        }
    }
}

impl From<HeadError> for ProxyError {
    fn from(error: HeadError) -> Self {
        match error {
            HeadError::Malformed | HeadError::Http2Preface => Self::MalformedHead,
            HeadError::TooLarge => Self::HeadTooLarge,
            HeadError::TargetTooLong => Self::TargetTooLong,
        }
    }
}

impl From<HeadRejection> for ProxyError {
    fn from(rejection: HeadRejection) -> Self {
        match rejection {
            HeadRejection::Convention(r) => Self::Rejected(r),
            HeadRejection::MissingHost | HeadRejection::InvalidHost => Self::BadHost,
            HeadRejection::Connect => Self::Connect,
            HeadRejection::Trace => Self::Trace,
            HeadRejection::BadMethod => Self::BadMethod,
            HeadRejection::UnsupportedTransferCoding => Self::UnsupportedTransferCoding,
            HeadRejection::BadFraming => Self::BadRequestBody,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn each_error_has_its_status_and_closes_when_its_bytes_cannot_be_trusted() {
        // (error, status, closes)
        let cases = [
            (ProxyError::Rejected(Rejection::UnknownHost), 404, false),
            (ProxyError::Rejected(Rejection::InvalidServiceSegment), 404, false),
            (ProxyError::Rejected(Rejection::DotSegment), 400, false),
            (ProxyError::Rejected(Rejection::MalformedPath), 400, false),
            (ProxyError::BadHost, 400, false),
            (ProxyError::Connect, 405, true),
            (ProxyError::Trace, 405, false),
            (ProxyError::BadMethod, 400, false),
            (ProxyError::ReadinessMethod, 405, false),
            (ProxyError::UnsupportedTransferCoding, 501, true),
            (ProxyError::BadRequestBody, 400, true),
            (ProxyError::BodyReadTimeout, 408, true),
            (ProxyError::BodyTooSlow, 408, true),
            (ProxyError::BadForwardedFor, 400, false),
            (ProxyError::LengthRequired, 411, true),
            (ProxyError::UnknownService, 404, false),
            (ProxyError::NoReadyEndpoint, 503, false),
            (ProxyError::Overloaded, 503, true),
            (ProxyError::BodyTooLarge, 413, false),
            (ProxyError::UpstreamUnavailable, 502, false),
            (ProxyError::UpstreamProtocol, 502, false),
            (ProxyError::UpstreamTimeout, 504, false),
            (ProxyError::MalformedHead, 400, true),
            (ProxyError::HeadTooLarge, 431, true),
            (ProxyError::TargetTooLong, 414, true),
        ];
        for (error, status, closes) in cases {
            let answer = error.answer();
            assert_eq!((answer.status.as_u16(), answer.close), (status, closes), "{error:?}");
        }
        for error in [ProxyError::Connect, ProxyError::Trace, ProxyError::ReadinessMethod] {
            assert!(error.answer().allow.is_some(), "{error:?}");
        }
    }
}

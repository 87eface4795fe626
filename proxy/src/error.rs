//! Every way a request can fail, and the one function that turns a failure into a response.

use gatehouse_convention::Rejection;
use http::{HeaderValue, Response, StatusCode, header};

use crate::body::ResponseBody;
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
    /// A transfer coding other than `chunked` (501, RFC 9112 §6.1): its content would be
    /// forwarded as if it were not encoded.
    UnsupportedTransferCoding,
    /// The body's framing is malformed (`chunked` twice, a bad chunk), or the client went
    /// away in the middle of it (400).
    BadRequestBody,
    /// The client paused longer than `timeouts.body_read` in the middle of its body (408).
    BodyReadTimeout,
    /// The path names a Service this edge could reach, but there is no such Service.
    UnknownService,
    /// The Service exists but has no ready endpoint.
    NoReadyEndpoint,
    /// `max_connections` reached.
    Overloaded,
    /// The request body is over `limits.max_body_bytes`.
    BodyTooLarge,
    /// The upstream refused or reset the connection, or answered something unusable.
    UpstreamUnavailable,
    /// The upstream did not accept the connection or answer within its timeout.
    UpstreamTimeout,
}

impl ProxyError {
    /// A short stable name for logs.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Rejected(r) => r.reason(),
            Self::BadHost => "bad_host",
            Self::Connect => "connect_refused",
            Self::UnsupportedTransferCoding => "unsupported_transfer_coding",
            Self::BadRequestBody => "bad_request_body",
            Self::BodyReadTimeout => "body_read_timeout",
            Self::UnknownService => "unknown_service",
            Self::NoReadyEndpoint => "no_ready_endpoint",
            Self::Overloaded => "overloaded",
            Self::BodyTooLarge => "body_too_large",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::UpstreamTimeout => "upstream_timeout",
        }
    }
}

impl From<HeadRejection> for ProxyError {
    fn from(rejection: HeadRejection) -> Self {
        match rejection {
            HeadRejection::Convention(r) => Self::Rejected(r),
            HeadRejection::MissingHost | HeadRejection::InvalidHost => Self::BadHost,
            HeadRejection::Connect => Self::Connect,
            HeadRejection::UnsupportedTransferCoding => Self::UnsupportedTransferCoding,
            HeadRejection::BadFraming => Self::BadRequestBody,
        }
    }
}

/// The single place where errors become status codes. Bodies are fixed strings: nothing
/// about endpoints, Services or internal errors reaches the client.
pub fn error_response(error: ProxyError) -> Response<ResponseBody> {
    let (status, body): (StatusCode, &'static [u8]) = match error {
        ProxyError::Rejected(r) => match r.status_code() {
            400 => (StatusCode::BAD_REQUEST, b"{\"error\":\"bad request path\"}\n"),
            _ => (StatusCode::NOT_FOUND, b"{\"error\":\"no route\"}\n"),
        },
        ProxyError::BadHost => (StatusCode::BAD_REQUEST, b"{\"error\":\"bad or missing host\"}\n"),
        ProxyError::Connect => (StatusCode::METHOD_NOT_ALLOWED, b"{\"error\":\"CONNECT is not supported\"}\n"),
        ProxyError::UnsupportedTransferCoding => {
            (StatusCode::NOT_IMPLEMENTED, b"{\"error\":\"transfer coding not supported\"}\n")
        }
        ProxyError::BadRequestBody => (StatusCode::BAD_REQUEST, b"{\"error\":\"malformed request body\"}\n"),
        ProxyError::BodyReadTimeout => (StatusCode::REQUEST_TIMEOUT, b"{\"error\":\"request body timeout\"}\n"),
        ProxyError::UnknownService => (StatusCode::NOT_FOUND, b"{\"error\":\"no route\"}\n"),
        ProxyError::NoReadyEndpoint => (StatusCode::SERVICE_UNAVAILABLE, b"{\"error\":\"no ready endpoint\"}\n"),
        ProxyError::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, b"{\"error\":\"overloaded\"}\n"),
        ProxyError::BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, b"{\"error\":\"request body too large\"}\n"),
        ProxyError::UpstreamUnavailable => (StatusCode::BAD_GATEWAY, b"{\"error\":\"upstream unavailable\"}\n"),
        ProxyError::UpstreamTimeout => (StatusCode::GATEWAY_TIMEOUT, b"{\"error\":\"upstream timeout\"}\n"),
    };
    let mut response = Response::new(ResponseBody::local(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if error == ProxyError::Connect {
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"));
    }
    // Overloaded: this connection should not stay. CONNECT: what follows its head may be
    // meant for a tunnel, never to be read as requests. The others: the request's body was not
    // read to its end, or cannot be trusted to end where it says (RFC 9110 §15.5.9: a 408
    // closes the connection).
    if matches!(
        error,
        ProxyError::Overloaded
            | ProxyError::Connect
            | ProxyError::BodyReadTimeout
            | ProxyError::BadRequestBody
            | ProxyError::UnsupportedTransferCoding
    ) {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn each_error_has_its_status() {
        let cases = [
            (ProxyError::Rejected(Rejection::UnknownHost), 404),
            (ProxyError::Rejected(Rejection::InvalidServiceSegment), 404),
            (ProxyError::Rejected(Rejection::DotSegment), 400),
            (ProxyError::Rejected(Rejection::MalformedPath), 400),
            (ProxyError::BadHost, 400),
            (ProxyError::Connect, 405),
            (ProxyError::UnsupportedTransferCoding, 501),
            (ProxyError::BadRequestBody, 400),
            (ProxyError::BodyReadTimeout, 408),
            (ProxyError::UnknownService, 404),
            (ProxyError::NoReadyEndpoint, 503),
            (ProxyError::Overloaded, 503),
            (ProxyError::BodyTooLarge, 413),
            (ProxyError::UpstreamUnavailable, 502),
            (ProxyError::UpstreamTimeout, 504),
        ];
        for (error, status) in cases {
            assert_eq!(error_response(error).status().as_u16(), status, "{error:?}");
        }
        for error in [
            ProxyError::Connect,
            ProxyError::BodyReadTimeout,
            ProxyError::BadRequestBody,
            ProxyError::UnsupportedTransferCoding,
        ] {
            assert_eq!(error_response(error).headers()[header::CONNECTION], "close", "{error:?}");
        }
    }
}

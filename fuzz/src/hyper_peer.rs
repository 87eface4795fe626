//! hyper 1 itself, reading the same bytes as the proxy's codec: its HTTP/1 server (configured
//! as gatehouse-proxy configured it before it had a codec of its own) and its HTTP/1 client,
//! each over an in-memory pipe, on one current-thread runtime.

use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

static RUNTIME: LazyLock<tokio::runtime::Runtime> =
    LazyLock::new(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime for hyper"));

/// The most bytes of a head the proxy accepts by default (`limits.max_header_bytes`).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// What hyper's server made of the first request in some bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerRead {
    /// A request reached the service.
    Request(SeenRequest),
    /// hyper answered by itself with this status.
    Refused(u16),
    /// No request and no answer (waiting for more, or the HTTP/2 preface).
    Nothing,
}

/// A request as hyper's server handed it over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRequest {
    pub method: String,
    pub authority: Option<String>,
    pub path_and_query: String,
    pub http11: bool,
    /// Lower-cased names, sorted.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, or `Err` when reading it failed (malformed, or cut short).
    pub body: Result<Vec<u8>, ()>,
}

/// Feeds `bytes` (then the end of the stream) to a hyper server and says what it read first.
pub fn server_reads(bytes: &[u8]) -> ServerRead {
    RUNTIME.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 21);
        let seen: Arc<Mutex<Option<SeenRequest>>> = Arc::default();
        let record = seen.clone();
        let service = service_fn(move |req: http::Request<Incoming>| {
            let record = record.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body.collect().await.map(|c| c.to_bytes().to_vec()).map_err(|_| ());
                let mut headers: Vec<(String, Vec<u8>)> =
                    parts.headers.iter().map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec())).collect();
                headers.sort();
                let mut first = record.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if first.is_none() {
                    *first = Some(SeenRequest {
                        method: parts.method.as_str().to_owned(),
                        authority: parts.uri.authority().map(|a| a.as_str().to_owned()),
                        path_and_query: parts.uri.path_and_query().map_or(String::new(), |p| p.as_str().to_owned()),
                        http11: parts.version == http::Version::HTTP_11,
                        headers,
                        body,
                    });
                }
                Ok::<_, std::convert::Infallible>(http::Response::new(Empty::<Bytes>::new()))
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.max_header_size(MAX_HEADER_BYTES).max_buf_size(MAX_HEADER_BYTES * 2);
        let connection = builder.serve_connection(TokioIo::new(server), service);
        let conversation = async {
            let _ = client.write_all(bytes).await;
            let _ = client.shutdown().await;
            let mut answer = Vec::new();
            let _ = client.read_to_end(&mut answer).await;
            answer
        };
        let (_, answer) = tokio::join!(
            tokio::time::timeout(Duration::from_secs(5), connection),
            tokio::time::timeout(Duration::from_secs(5), conversation)
        );
        if let Some(request) = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
            return ServerRead::Request(request);
        }
        match answer.ok().and_then(|a| status_of(&a)) {
            Some(status) => ServerRead::Refused(status),
            None => ServerRead::Nothing,
        }
    })
}

/// What hyper's client made of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientRead {
    Response {
        status: u16,
        http11: bool,
        headers: Vec<(String, Vec<u8>)>,
        body: Result<Vec<u8>, ()>,
    },
    /// hyper refused the response (or it never completed).
    Refused,
}

/// Sends a request (`HEAD` or `GET`) through a hyper client to a peer that answers with
/// `bytes`, then closes; says what the client read.
pub fn client_reads(head: bool, bytes: &[u8]) -> ClientRead {
    RUNTIME.block_on(async {
        let (client, mut server) = tokio::io::duplex(1 << 21);
        let Ok((mut sender, connection)) = hyper::client::conn::http1::handshake(TokioIo::new(client)).await else {
            return ClientRead::Refused;
        };
        let drive = tokio::spawn(async move {
            let _ = connection.with_upgrades().await;
        });
        let peer = async {
            // Read the request head, then answer.
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") {
                match server.read(&mut byte).await {
                    Ok(1) => request.push(byte[0]),
                    _ => return,
                }
            }
            let _ = server.write_all(bytes).await;
            let _ = server.shutdown().await;
            // Hold the pipe open until the client is done reading.
            let mut rest = Vec::new();
            let _ = server.read_to_end(&mut rest).await;
        };
        let method = if head { http::Method::HEAD } else { http::Method::GET };
        let request =
            http::Request::builder().method(method).uri("/").header("host", "upstream").body(Empty::<Bytes>::new());
        let Ok(request) = request else { return ClientRead::Refused };
        let exchange = async {
            let response = sender.send_request(request).await.map_err(|_| ())?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.map(|c| c.to_bytes().to_vec()).map_err(|_| ());
            let mut headers: Vec<(String, Vec<u8>)> =
                parts.headers.iter().map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec())).collect();
            headers.sort();
            Ok::<_, ()>(ClientRead::Response {
                status: parts.status.as_u16(),
                http11: parts.version == http::Version::HTTP_11,
                headers,
                body,
            })
        };
        let (read, ()) = tokio::join!(tokio::time::timeout(Duration::from_secs(5), exchange), async {
            let _ = tokio::time::timeout(Duration::from_secs(5), peer).await;
        });
        drive.abort();
        match read {
            Ok(Ok(response)) => response,
            _ => ClientRead::Refused,
        }
    })
}

/// The status code of the first response in `bytes`, if there is one.
fn status_of(bytes: &[u8]) -> Option<u16> {
    let text = bytes.strip_prefix(b"HTTP/1.1 ").or_else(|| bytes.strip_prefix(b"HTTP/1.0 "))?;
    std::str::from_utf8(text.get(..3)?).ok()?.parse().ok()
}

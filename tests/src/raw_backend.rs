//! A backend that misbehaves on purpose, over raw TCP: it parses each request head itself
//! (httparse) and answers by a script the test gives, with exactly the bytes the script says:
//! early answers that never read the body, HTTP/1.0 keep-alive, both `Content-Length` and
//! `Transfer-Encoding`, a body that stalls half-way, a `101` nobody asked for, bytes after the
//! end of a response (at once or after a pause), a reset in the middle of a response, an idle
//! connection closed under the proxy's feet.
//!
//! Like a careless real server, a script that does not read the body leaves it in the buffer,
//! and the next request is parsed from whatever comes next: if the proxy ever let another
//! client's request follow an unread body on the same connection, the backend would answer the
//! body's bytes, and the test would see that answer reach the wrong client.
//!
//! Everything is recorded: every connection (with every byte it received, every byte it sent and
//! how it ended), every request head parsed (with its place on its connection), and the most
//! connections open at once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A request head as the backend parsed it, with its body when the script read it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    /// Which connection (in accept order, from 0) it arrived on.
    pub conn: usize,
    /// Its place among the requests of that connection, from 0: above 0, the proxy reused the
    /// connection for it.
    pub nth: usize,
    pub method: String,
    pub path: String,
    pub version: u8,
    /// Names lower-cased, values as bytes turned into text (lossy), in order.
    pub headers: Vec<(String, String)>,
    /// The body, when the script asked for it to be read; `None` otherwise.
    pub body: Option<Vec<u8>>,
    /// For a chunked body that was read: how many chunks (without the last, empty one).
    pub chunks: usize,
}

impl SeenRequest {
    /// The first value of a header (name in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Every value of a header (name in lower case).
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect()
    }
}

/// How a connection ended, from the backend's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnEnd {
    /// Still open.
    Open,
    /// The peer closed it cleanly (FIN).
    Closed,
    /// The peer reset it (RST), or reading failed otherwise.
    Reset,
    /// The backend closed it (the script said so, or the bytes were not a request).
    ClosedByBackend,
    /// The backend reset it (the script said so).
    ResetByBackend,
}

/// One accepted connection.
#[derive(Debug, Clone)]
pub struct SeenConn {
    pub received: Vec<u8>,
    /// Every byte the backend wrote on it.
    pub sent: Vec<u8>,
    pub end: ConnEnd,
}

/// What the backend does with one request.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Read the request body (by its framing) before answering. A careless server does not.
    pub read_body: bool,
    /// The bytes written back, verbatim.
    pub bytes: Vec<u8>,
    /// More bytes, each written after its pause: a response that arrives in pieces, or bytes
    /// that follow the end of a response once the proxy has had time to take it as complete.
    pub later: Vec<(Duration, Vec<u8>)>,
    /// What happens after writing them all.
    pub then: Then,
}

/// What the connection does after a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Parse the next request from what follows.
    KeepAlive,
    /// Close the connection.
    Close,
    /// Do nothing more for this long (a stalled response), then close.
    Stall(Duration),
    /// Reset the connection (RST, as a crashing server's kernel sends).
    Reset,
    /// Parse the next request, but close the connection if none begins within this long (a
    /// server's keep-alive timeout, shorter than the proxy's).
    CloseIdle(Duration),
}

impl Reply {
    /// A keep-alive `HTTP/1.1 <status>` with `body` and its Content-Length, after reading the
    /// request body.
    pub fn ok(status: u16, body: &str) -> Self {
        let bytes = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes();
        Self { read_body: true, bytes, later: Vec::new(), then: Then::KeepAlive }
    }

    /// The same, answered from the head alone: the body is left unread in the buffer.
    pub fn early(status: u16, body: &str) -> Self {
        Self { read_body: false, ..Self::ok(status, body) }
    }

    /// Exactly these bytes, after reading the body, then `then`.
    pub fn raw(bytes: impl Into<Vec<u8>>, then: Then) -> Self {
        Self { read_body: true, bytes: bytes.into(), later: Vec::new(), then }
    }

    /// The same reply, and then, after `pause`, these bytes too.
    #[must_use]
    pub fn and_after(mut self, pause: Duration, bytes: impl Into<Vec<u8>>) -> Self {
        self.later.push((pause, bytes.into()));
        self
    }

    /// The same reply, written from the head alone: the body is left unread in the buffer.
    #[must_use]
    pub fn without_reading_body(self) -> Self {
        Self { read_body: false, ..self }
    }

    /// Every byte the reply writes, in order.
    pub fn all_bytes(&self) -> Vec<u8> {
        let mut all = self.bytes.clone();
        for (_, bytes) in &self.later {
            all.extend_from_slice(bytes);
        }
        all
    }
}

type Script = dyn Fn(&SeenRequest) -> Reply + Send + Sync;

#[derive(Default)]
struct State {
    requests: Mutex<Vec<SeenRequest>>,
    conns: Mutex<Vec<SeenConn>>,
    open: AtomicUsize,
    max_open: AtomicUsize,
}

/// A scripted backend on `127.0.0.1:0`; stops (with every connection) when dropped.
pub struct ScriptedBackend {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for ScriptedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedBackend").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl ScriptedBackend {
    /// Starts a backend that answers each request as `script` says. The script is asked with
    /// the head alone; when its reply reads the body, it is asked again with the body filled
    /// in, and that second reply is the one written.
    pub async fn start(script: impl Fn(&SeenRequest) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind scripted backend");
        let addr = listener.local_addr().expect("scripted backend addr");
        let state = Arc::new(State::default());
        let script: Arc<Script> = Arc::new(script);
        let task_state = state.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let id = {
                    let mut seen = task_state.conns.lock().expect("lock");
                    seen.push(SeenConn { received: Vec::new(), sent: Vec::new(), end: ConnEnd::Open });
                    seen.len() - 1
                };
                let open = task_state.open.fetch_add(1, Ordering::SeqCst) + 1;
                task_state.max_open.fetch_max(open, Ordering::SeqCst);
                conns.spawn(serve(stream, id, task_state.clone(), script.clone()));
            }
        });
        Self { addr, state, task }
    }

    /// Every request head parsed so far, in arrival order.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.state.requests.lock().expect("lock").clone()
    }

    /// Every connection accepted so far.
    pub fn conns(&self) -> Vec<SeenConn> {
        self.state.conns.lock().expect("lock").clone()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.state.conns.lock().expect("lock").len()
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.state.open.load(Ordering::SeqCst)
    }

    /// The most connections that were open at once.
    pub fn max_open(&self) -> usize {
        self.state.max_open.load(Ordering::SeqCst)
    }
}

impl Drop for ScriptedBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, id: usize, state: Arc<State>, script: Arc<Script>) {
    let mut conn = Conn { stream: &mut stream, buf: Vec::new(), id, state: &state };
    let end = conn.run(&*script).await;
    state.conns.lock().expect("lock")[id].end = end;
    state.open.fetch_sub(1, Ordering::SeqCst);
}

struct Conn<'a> {
    stream: &'a mut TcpStream,
    buf: Vec<u8>,
    id: usize,
    state: &'a State,
}

impl Conn<'_> {
    async fn run(&mut self, script: &Script) -> ConnEnd {
        let mut idle_limit = None;
        let mut nth = 0;
        loop {
            if let Some(idle) = idle_limit
                && self.buf.is_empty()
            {
                match tokio::time::timeout(idle, self.fill()).await {
                    Err(_) => return ConnEnd::ClosedByBackend,
                    Ok(Err(end)) => return end,
                    Ok(Ok(())) => {}
                }
            }
            let mut request = match self.head(nth).await {
                Ok(Some(request)) => request,
                Ok(None) => return ConnEnd::ClosedByBackend,
                Err(end) => return end,
            };
            nth += 1;
            let mut reply = script(&request);
            if reply.read_body {
                match self.body(&request).await {
                    Ok((body, chunks)) => {
                        request.body = Some(body);
                        request.chunks = chunks;
                    }
                    Err(end) => {
                        self.state.requests.lock().expect("lock").push(request);
                        return end;
                    }
                }
                // Asked again with the body known, so that an answer can depend on it.
                reply = script(&request);
            }
            self.state.requests.lock().expect("lock").push(request);
            if !self.write(&reply.bytes).await {
                return ConnEnd::Reset;
            }
            for (pause, bytes) in &reply.later {
                tokio::time::sleep(*pause).await;
                if !self.write(bytes).await {
                    return ConnEnd::Reset;
                }
            }
            idle_limit = None;
            match reply.then {
                Then::KeepAlive => {}
                Then::CloseIdle(idle) => idle_limit = Some(idle),
                Then::Close => return ConnEnd::ClosedByBackend,
                Then::Reset => {
                    // Dropped with a zero linger, the socket goes with an RST.
                    let _ = self.stream.set_zero_linger();
                    return ConnEnd::ResetByBackend;
                }
                Then::Stall(pause) => {
                    // Still reading, so that a reset or close by the proxy is seen as such.
                    return match tokio::time::timeout(pause, self.wait_for_end()).await {
                        Ok(end) => end,
                        Err(_) => ConnEnd::ClosedByBackend,
                    };
                }
            }
        }
    }

    /// Writes `bytes` and records them; `false` when the peer is gone.
    async fn write(&mut self, bytes: &[u8]) -> bool {
        if self.stream.write_all(bytes).await.is_err() {
            return false;
        }
        self.state.conns.lock().expect("lock")[self.id].sent.extend_from_slice(bytes);
        true
    }

    /// Reads more bytes; `Err` with how the connection ended when no more come.
    async fn fill(&mut self) -> Result<(), ConnEnd> {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk).await {
            Ok(0) => Err(ConnEnd::Closed),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                self.state.conns.lock().expect("lock")[self.id].received.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(_) => Err(ConnEnd::Reset),
        }
    }

    async fn wait_for_end(&mut self) -> ConnEnd {
        loop {
            if let Err(end) = self.fill().await {
                return end;
            }
        }
    }

    /// The next request head, the `nth` of the connection; `None` when the bytes are not one
    /// (the backend then closes).
    async fn head(&mut self, nth: usize) -> Result<Option<SeenRequest>, ConnEnd> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 128];
            let mut parsed = httparse::Request::new(&mut headers);
            match parsed.parse(&self.buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let request = SeenRequest {
                        conn: self.id,
                        nth,
                        method: parsed.method.unwrap_or_default().to_owned(),
                        path: parsed.path.unwrap_or_default().to_owned(),
                        version: parsed.version.unwrap_or_default(),
                        headers: parsed
                            .headers
                            .iter()
                            .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
                            .collect(),
                        body: None,
                        chunks: 0,
                    };
                    self.buf.drain(..len);
                    return Ok(Some(request));
                }
                Ok(httparse::Status::Partial) => self.fill().await?,
                Err(_) => return Ok(None),
            }
        }
    }

    /// The body by its framing, and how many chunks it came in. Chunked only on HTTP/1.1: an
    /// HTTP/1.0 request has no chunked framing, and its body is what `Content-Length` says.
    async fn body(&mut self, request: &SeenRequest) -> Result<(Vec<u8>, usize), ConnEnd> {
        let chunked = request.header("transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
        if chunked && request.version == 1 {
            return self.chunked_body().await;
        }
        let length: usize = request.header("content-length").and_then(|l| l.trim().parse().ok()).unwrap_or(0);
        while self.buf.len() < length {
            self.fill().await?;
        }
        Ok((self.buf.drain(..length).collect(), 0))
    }

    async fn chunked_body(&mut self) -> Result<(Vec<u8>, usize), ConnEnd> {
        let mut body = Vec::new();
        let mut chunks = 0;
        loop {
            let line_end = loop {
                if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break at;
                }
                self.fill().await?;
            };
            let size_text = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
            let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16) else {
                return Err(ConnEnd::ClosedByBackend);
            };
            self.buf.drain(..line_end + 2);
            if size == 0 {
                // Trailers, then the empty line.
                loop {
                    let at = loop {
                        if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                            break at;
                        }
                        self.fill().await?;
                    };
                    self.buf.drain(..at + 2);
                    if at == 0 {
                        return Ok((body, chunks));
                    }
                }
            }
            while self.buf.len() < size + 2 {
                self.fill().await?;
            }
            body.extend_from_slice(&self.buf[..size]);
            self.buf.drain(..size + 2);
            chunks += 1;
        }
    }
}

//! A lean HTTP/1.1 client for many small GETs at once: a pool of keep-alive connections
//! (one per request in flight, since HTTP/1.1 answers one at a time), each holding only
//! its socket while it waits, and answers read into a buffer sized to them, their heads
//! parsed by `httparse`.
//!
//! Why not hyper's client: it holds ~20 KB per connection before a byte is read (an 8 KiB
//! header write buffer, a request channel whose first block has 32 slots, a read buffer
//! and a spawned connection task; measured in docs/performance.md), and a consumer holds
//! a connection for each of its thousands of checks in flight.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures::FutureExt;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// An answer's first read: a status answer's head and body (~150 bytes) fit.
const FIRST_READ_BYTES: usize = 512;

/// Headers parsed in a head; more is an error.
const MAX_HEADERS: usize = 64;

/// Why a request got no whole answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot resolve {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
    #[error("connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("connection closed before the answer was complete")]
    Closed,
    #[error("the answer's head is over {0} bytes")]
    HeadTooLarge(usize),
    #[error("malformed answer head: {0}")]
    Head(String),
    #[error("the answer is over {0} bytes")]
    BodyTooLarge(usize),
    #[error("malformed chunked answer body")]
    Chunk,
}

/// A whole answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Where requests go: a host and port, over TLS or not.
#[derive(Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// The TLS client and the name the certificate must carry, for `https`.
    pub tls: Option<(TlsConnector, ServerName<'static>)>,
}

/// Keep-alive connections to one endpoint, and the limits of its answers.
pub struct Pool {
    endpoint: Endpoint,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_head_bytes: usize,
    max_body_bytes: usize,
    /// Newest last: taken from the back, expired ones dropped from the front.
    idle: Mutex<VecDeque<(Connection, Instant)>>,
    /// Whether the task that closes expired idle connections runs.
    pruning: AtomicBool,
}

enum Connection {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// How an answer's body ends (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    /// Until the server closes the connection.
    Close,
}

#[derive(Debug)]
struct Head {
    status: u16,
    len: usize,
    framing: Framing,
    keep_alive: bool,
}

/// A failed exchange, and whether it failed before any byte of an answer came (on a
/// reused connection: the server had closed it meanwhile; the request is sent again on
/// a new one).
struct Failed {
    error: HttpError,
    nothing_read: bool,
}

impl Pool {
    pub fn new(
        endpoint: Endpoint,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_head_bytes: usize,
        max_body_bytes: usize,
    ) -> Self {
        Self {
            endpoint,
            connect_timeout,
            idle_timeout,
            max_head_bytes,
            max_body_bytes,
            idle: Mutex::new(VecDeque::new()),
            pruning: AtomicBool::new(false),
        }
    }

    /// `Host` as requests carry it.
    pub fn host_header(&self) -> String {
        let default_port = if self.endpoint.tls.is_some() { 443 } else { 80 };
        let host = match self.endpoint.host.parse::<std::net::Ipv6Addr>() {
            Ok(_) => format!("[{}]", self.endpoint.host),
            Err(_) => self.endpoint.host.clone(),
        };
        if self.endpoint.port == default_port {
            host
        } else {
            format!("{host}:{}", self.endpoint.port)
        }
    }

    /// Sends `request` (a whole GET: request line, headers, blank line) and reads the
    /// answer, on an idle connection if there is one.
    pub async fn send(self: &Arc<Self>, request: &[u8]) -> Result<Answer, HttpError> {
        let idle = self
            .take_idle()
            .and_then(|mut connection| is_quiet(&mut connection).then_some(connection));
        if let Some(connection) = idle {
            match self.exchange(connection, request).await {
                Ok(answer) => return Ok(answer),
                Err(Failed {
                    nothing_read: true, ..
                }) => {}
                Err(failed) => return Err(failed.error),
            }
        }
        let connection = self.connect().await?;
        self.exchange(connection, request)
            .await
            .map_err(|failed| failed.error)
    }

    fn take_idle(&self) -> Option<Connection> {
        let mut idle = self
            .idle
            .lock()
            .expect("the idle list lock is never poisoned");
        let (connection, since) = idle.pop_back()?;
        if since.elapsed() < self.idle_timeout {
            Some(connection)
        } else {
            // The newest is past the timeout: so is every other. Closed after the lock.
            let expired = std::mem::take(&mut *idle);
            drop(idle);
            drop(expired);
            None
        }
    }

    fn put_idle(self: &Arc<Self>, connection: Connection) {
        self.idle
            .lock()
            .expect("the idle list lock is never poisoned")
            .push_back((connection, Instant::now()));
        if !self.pruning.swap(true, Ordering::Relaxed) {
            tokio::spawn(prune(Arc::downgrade(self)));
        }
    }

    /// Takes the connections idle past the timeout off the list (oldest first).
    fn expired(&self) -> Vec<Connection> {
        let mut idle = self
            .idle
            .lock()
            .expect("the idle list lock is never poisoned");
        let mut expired = Vec::new();
        while idle
            .front()
            .is_some_and(|(_, since)| since.elapsed() >= self.idle_timeout)
        {
            expired.extend(idle.pop_front().map(|(connection, _)| connection));
        }
        expired
    }

    /// A new connection, its TLS handshake included, within the connect timeout.
    async fn connect(&self) -> Result<Connection, HttpError> {
        tokio::time::timeout(self.connect_timeout, self.connect_unbounded())
            .await
            .map_err(|_| HttpError::ConnectTimeout)?
    }

    async fn connect_unbounded(&self) -> Result<Connection, HttpError> {
        let endpoint = &self.endpoint;
        let tcp = async {
            let addresses: Vec<SocketAddr> =
                tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port))
                    .await
                    .map_err(|source| HttpError::Resolve {
                        host: endpoint.host.clone(),
                        source,
                    })?
                    .collect();
            let mut last = None;
            for address in addresses {
                match TcpStream::connect(address).await {
                    Ok(tcp) => return Ok(tcp),
                    Err(err) => last = Some(err),
                }
            }
            Err(HttpError::Connect(last.unwrap_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, "no address")
            })))
        }
        .await?;
        tcp.set_nodelay(true).map_err(HttpError::Connect)?;
        match &endpoint.tls {
            None => Ok(Connection::Plain(tcp)),
            Some((connector, name)) => connector
                .connect(name.clone(), tcp)
                .await
                .map(|tls| Connection::Tls(Box::new(tls)))
                .map_err(HttpError::Tls),
        }
    }

    async fn exchange(
        self: &Arc<Self>,
        mut connection: Connection,
        request: &[u8],
    ) -> Result<Answer, Failed> {
        let result = match &mut connection {
            Connection::Plain(stream) => self.on(stream, request).await,
            Connection::Tls(stream) => self.on(stream.as_mut(), request).await,
        };
        let (answer, reusable) = result?;
        if reusable {
            self.put_idle(connection);
        }
        Ok(answer)
    }

    /// One request and its answer on `stream`; whether the connection can take another.
    async fn on<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        request: &[u8],
    ) -> Result<(Answer, bool), Failed> {
        let sent = async {
            stream.write_all(request).await?;
            stream.flush().await
        };
        sent.await.map_err(|e| Failed {
            error: HttpError::Io(e),
            nothing_read: true,
        })?;
        let mut buf = Vec::with_capacity(FIRST_READ_BYTES.min(self.max_head_bytes));
        let head = loop {
            if !buf.is_empty() {
                let parsed = parse_head(&buf).map_err(|e| Failed {
                    error: e,
                    nothing_read: false,
                })?;
                match parsed {
                    // An interim answer (100 Continue): the real one follows.
                    Some(head) if (100..200).contains(&head.status) => {
                        buf.drain(..head.len);
                        continue;
                    }
                    Some(head) => break head,
                    None => {}
                }
            }
            let nothing_read = buf.is_empty();
            let failed = |error| Failed {
                error,
                nothing_read,
            };
            if buf.len() == buf.capacity() {
                if buf.len() >= self.max_head_bytes {
                    return Err(failed(HttpError::HeadTooLarge(self.max_head_bytes)));
                }
                buf.reserve_exact(buf.len().min(self.max_head_bytes - buf.len()));
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) => return Err(failed(HttpError::Closed)),
                Ok(_) => {}
                Err(err) => return Err(failed(HttpError::Io(err))),
            }
        };
        let failed = |error| Failed {
            error,
            nothing_read: false,
        };
        buf.drain(..head.len);
        let (body, complete) = match head.framing {
            Framing::Length(length) => {
                if length > self.max_body_bytes {
                    return Err(failed(HttpError::BodyTooLarge(self.max_body_bytes)));
                }
                if buf.len() < length {
                    buf.reserve_exact(length - buf.len());
                }
                while buf.len() < length {
                    match stream.read_buf(&mut buf).await {
                        Ok(0) => return Err(failed(HttpError::Closed)),
                        Ok(_) => {}
                        Err(err) => return Err(failed(HttpError::Io(err))),
                    }
                }
                // Bytes past the body: the connection is out of step; not reused.
                let exact = buf.len() == length;
                buf.truncate(length);
                (buf, exact)
            }
            Framing::Chunked => read_chunked(stream, buf, self.max_body_bytes)
                .await
                .map_err(failed)?,
            Framing::Close => {
                loop {
                    if buf.len() > self.max_body_bytes {
                        return Err(failed(HttpError::BodyTooLarge(self.max_body_bytes)));
                    }
                    match stream.read_buf(&mut buf).await {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(err) => return Err(failed(HttpError::Io(err))),
                    }
                }
                if buf.len() > self.max_body_bytes {
                    return Err(failed(HttpError::BodyTooLarge(self.max_body_bytes)));
                }
                (buf, false)
            }
        };
        let answer = Answer {
            status: head.status,
            body,
        };
        Ok((answer, complete && head.keep_alive))
    }
}

/// Whether an idle connection has nothing to read: bytes that came while it sat idle (a
/// `408` before the server closed it, bytes past an answer's end) or its end mean it is
/// out of step or closed, so it is not used again.
fn is_quiet(connection: &mut Connection) -> bool {
    let mut byte = [0u8; 1];
    match connection {
        Connection::Plain(stream) => matches!(
            stream.try_read(&mut byte),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock
        ),
        // A TLS stream has no `try_read`: one poll of a read tells the same.
        Connection::Tls(stream) => stream.read(&mut byte).now_or_never().is_none(),
    }
}

/// Closes idle connections past the timeout, until the pool is gone.
async fn prune(pool: Weak<Pool>) {
    loop {
        let every = match pool.upgrade() {
            Some(pool) => {
                drop(pool.expired());
                (pool.idle_timeout / 4).max(Duration::from_secs(1))
            }
            None => return,
        };
        tokio::time::sleep(every).await;
    }
}

/// The head at the start of `buf`, if it is all there.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(err) => return Err(HttpError::Head(err.to_string())),
    };
    let status = response.code.unwrap_or_default();
    let http10 = response.version == Some(0);
    let mut length = None;
    let mut chunked = false;
    let mut transfer_encoded = false;
    let mut close = http10;
    for header in response.headers.iter() {
        let read = ["content-length", "transfer-encoding", "connection"]
            .iter()
            .any(|name| header.name.eq_ignore_ascii_case(name));
        if !read {
            continue;
        }
        let value = std::str::from_utf8(header.value)
            .map_err(|_| HttpError::Head(format!("{} is not text", header.name)))?;
        let tokens = || value.split(',').map(|t| t.trim().to_ascii_lowercase());
        if header.name.eq_ignore_ascii_case("content-length") {
            let digits = value.trim();
            let n: usize = digits
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| digits.parse().ok())
                .flatten()
                .ok_or_else(|| HttpError::Head(format!("Content-Length {value:?}")))?;
            if length.is_some_and(|m| m != n) {
                return Err(HttpError::Head("two Content-Lengths".into()));
            }
            length = Some(n);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoded = true;
            chunked = tokens().next_back().is_some_and(|t| t == "chunked");
        } else if header.name.eq_ignore_ascii_case("connection") {
            if tokens().any(|t| t == "close") {
                close = true;
            } else if http10 && tokens().any(|t| t == "keep-alive") {
                close = false;
            }
        }
    }
    // No body: 204, 304 (and 1xx, which the caller skips).
    let framing = if status == 204 || status == 304 || (100..200).contains(&status) {
        Framing::Length(0)
    } else if chunked {
        Framing::Chunked
    } else if transfer_encoded {
        Framing::Close
    } else {
        length.map_or(Framing::Close, Framing::Length)
    };
    Ok(Some(Head {
        status,
        len,
        framing,
        // Content-Length beside Transfer-Encoding: answered, but not trusted again.
        keep_alive: !(close || (transfer_encoded && length.is_some())),
    }))
}

/// A chunked body whose first bytes are in `buf`; whether the connection ended exactly
/// at its end.
async fn read_chunked<S: AsyncRead + Unpin>(
    stream: &mut S,
    mut buf: Vec<u8>,
    max_body_bytes: usize,
) -> Result<(Vec<u8>, bool), HttpError> {
    let mut body = Vec::new();
    let mut at = 0;
    // Buffered input is bounded by one chunk (at most `max_body_bytes`), its size line
    // (extensions included) and the trailers.
    let most_buffered = max_body_bytes + 16 * 1024;
    let mut more = async |buf: &mut Vec<u8>, at: usize| -> Result<(), HttpError> {
        if buf.len() - at > most_buffered {
            return Err(HttpError::BodyTooLarge(max_body_bytes));
        }
        buf.reserve(FIRST_READ_BYTES);
        match stream.read_buf(buf).await? {
            0 => Err(HttpError::Closed),
            _ => Ok(()),
        }
    };
    loop {
        let size = match httparse::parse_chunk_size(&buf[at..]) {
            Ok(httparse::Status::Complete((used, size))) => {
                at += used;
                usize::try_from(size).map_err(|_| HttpError::BodyTooLarge(max_body_bytes))?
            }
            Ok(httparse::Status::Partial) => {
                more(&mut buf, at).await?;
                continue;
            }
            Err(_) => return Err(HttpError::Chunk),
        };
        if size == 0 {
            // Trailers, if any, then the blank line.
            loop {
                let rest = &buf[at..];
                if rest.starts_with(b"\r\n") {
                    return Ok((body, buf.len() == at + 2));
                }
                if let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
                    return Ok((body, buf.len() == at + end + 4));
                }
                more(&mut buf, at).await?;
            }
        }
        if size > max_body_bytes - body.len() {
            return Err(HttpError::BodyTooLarge(max_body_bytes));
        }
        while buf.len() < at + size + 2 {
            more(&mut buf, at).await?;
        }
        body.extend_from_slice(&buf[at..at + size]);
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Err(HttpError::Chunk);
        }
        // What is read is dropped, so the buffer holds one chunk and its size line.
        buf.drain(..at + size + 2);
        at = 0;
    }
}

/// A TLS client for `config`, shared by every connection of a pool.
pub fn tls_connector(config: rustls::ClientConfig) -> TlsConnector {
    TlsConnector::from(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::net::TcpListener;

    /// A server that answers each request on a connection with the next of `answers`
    /// (closing the connection after one marked `true`); counts the connections.
    async fn serve(answers: Vec<(&'static [u8], bool)>) -> (u16, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        let answers = Arc::new(Mutex::new(VecDeque::from(answers)));
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                let answers = answers.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    loop {
                        let mut chunk = [0u8; 1024];
                        let n = socket.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        request.extend_from_slice(&chunk[..n]);
                        if !request.ends_with(b"\r\n\r\n") {
                            continue;
                        }
                        request.clear();
                        let next = answers.lock().unwrap().pop_front();
                        let Some((answer, close)) = next else { return };
                        // Bytes after a `|` come 100 ms later, unasked.
                        let mut parts = answer.splitn(2, |b| *b == b'|');
                        socket.write_all(parts.next().unwrap()).await.unwrap();
                        if let Some(later) = parts.next() {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            socket.write_all(later).await.unwrap();
                        }
                        if close {
                            return;
                        }
                    }
                });
            }
        });
        (port, connections)
    }

    fn pool(port: u16) -> Arc<Pool> {
        let endpoint = Endpoint {
            host: "127.0.0.1".into(),
            port,
            tls: None,
        };
        Arc::new(Pool::new(
            endpoint,
            Duration::from_secs(1),
            Duration::from_secs(90),
            4096,
            64,
        ))
    }

    const GET: &[u8] = b"GET /objects/1 HTTP/1.1\r\nHost: x\r\n\r\n";

    #[tokio::test]
    async fn answers_by_length_and_by_chunks_come_whole_on_one_kept_connection() {
        let (port, connections) = serve(vec![
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false),
            (
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n",
                false,
            ),
            (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n", false),
        ])
        .await;
        let pool = pool(port);
        let first = pool.send(GET).await.unwrap();
        assert_eq!((first.status, first.body.as_slice()), (200, &b"hello"[..]));
        let second = pool.send(GET).await.unwrap();
        assert_eq!(
            (second.status, second.body.as_slice()),
            (200, &b"abcde"[..])
        );
        let third = pool.send(GET).await.unwrap();
        assert_eq!((third.status, third.body.len()), (503, 0));
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_replaced_and_the_request_sent_again() {
        let (port, connections) = serve(vec![
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", true),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false),
            (
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
                false,
            ),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false),
        ])
        .await;
        let pool = pool(port);
        for _ in 0..4 {
            let answer = pool.send(GET).await.unwrap();
            assert_eq!(answer.body, b"ok");
        }
        // The first closed by the server after its answer (not known to the client, so
        // tried once more and replaced), the third asked to close: three connections.
        assert_eq!(connections.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_idle_connection_that_got_unasked_bytes_is_not_used_again() {
        let (port, connections) = serve(vec![
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok|HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n",
                false,
            ),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nyes", false),
        ])
        .await;
        let pool = pool(port);
        assert_eq!(pool.send(GET).await.unwrap().body, b"ok");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let second = pool.send(GET).await.unwrap();
        assert_eq!((second.status, second.body.as_slice()), (200, &b"yes"[..]));
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn oversized_heads_and_bodies_and_cut_answers_are_errors() {
        let long_head: &'static [u8] = Box::leak(
            format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "a".repeat(5000))
                .into_bytes()
                .into_boxed_slice(),
        );
        let (port, _) = serve(vec![
            (long_head, true),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 65\r\n\r\n", true),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", true),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\nffffffffffffffff\r\n",
                true,
            ),
        ])
        .await;
        let pool = pool(port);
        let errors: Vec<String> = futures_errors(&pool).await;
        assert_eq!(
            errors,
            [
                "the answer's head is over 4096 bytes",
                "the answer is over 64 bytes",
                "connection closed before the answer was complete",
                "malformed chunked answer body",
                "malformed answer head: two Content-Lengths",
                "the answer is over 64 bytes",
            ]
        );
    }

    async fn futures_errors(pool: &Arc<Pool>) -> Vec<String> {
        let mut errors = Vec::new();
        for _ in 0..6 {
            errors.push(pool.send(GET).await.unwrap_err().to_string());
        }
        errors
    }

    #[test]
    fn the_host_header_names_the_port_only_when_it_is_not_the_default() {
        let with = |host: &str, port| {
            Pool::new(
                Endpoint {
                    host: host.into(),
                    port,
                    tls: None,
                },
                Duration::from_secs(1),
                Duration::from_secs(1),
                4096,
                64,
            )
            .host_header()
        };
        assert_eq!(with("status.example", 80), "status.example");
        assert_eq!(with("127.0.0.1", 9010), "127.0.0.1:9010");
        assert_eq!(with("::1", 9010), "[::1]:9010");
    }
}

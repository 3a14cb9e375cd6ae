//! The package proxy: an HTTP proxy on `127.0.0.1:3128` inside one program's network
//! namespace (the listening socket made there by the gateway, `sys::
//! listen_in_network_namespace`, and served here, outside), through which a program
//! without the network reaches its runtime's package index and the hosts the operator
//! allowed for it, and nothing else.
//!
//! It speaks just what pip sends, one request per connection:
//!
//! - `CONNECT host:port` to a host allowed over HTTPS: a tunnel of TLS bytes the gateway
//!   cannot read (so the allow-list is by host and port; see SECURITY.md).
//! - `GET` or `HEAD http://host/path` to a host allowed over plain HTTP, without a body:
//!   passed on with `Connection: close`, `Host` set from the target, the `Proxy-*`
//!   headers dropped and nothing after the head (no second request rides along). An
//!   archive request without credentials, by a clean path, goes out in a canonical form
//!   (none of the caller's headers; fixed `User-Agent`, `Accept` and `Accept-Encoding:
//!   identity`) so that the answer is the URL's own, and a whole, plain answer is kept
//!   in the shared cache.
//!
//! Bounded: a request head of at most [`MAX_REQUEST_HEAD`] bytes in [`HEAD_TIME`];
//! [`super::CONNECTIONS_PER_PROGRAM`] connections per program, a share of
//! [`super::CONNECTIONS_PER_PRINCIPAL`] per tenant (or anonymous address) and
//! [`super::CONNECTIONS_TOTAL`] for the gateway (more are answered `503` at once); an
//! upstream connect within [`CONNECT_TIME`], an answer begun within [`RESPONSE_TIME`],
//! and no connection idle in both directions for [`IDLE_TIME`]. The proxy, and every
//! connection through it, ends when its program does ([`ProxyHandle`]). A refusal opens
//! no upstream connection; the gateway resolves only the allowed hosts' names.

use super::cache::{Cache, Pending};
use super::Packages;
use crate::admission::Principal;
use crate::config::PackageIndex;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

/// The longest request head a program may send (pip's are a few hundred bytes).
const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// The longest response head passed on from an index.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// How long a program has to send its request's head once connected.
const HEAD_TIME: Duration = Duration::from_secs(10);

/// How long connecting to an allowed host may take (name resolution included).
const CONNECT_TIME: Duration = Duration::from_secs(10);

/// How long an index may take to start its answer (the head of its response).
const RESPONSE_TIME: Duration = Duration::from_secs(60);

/// How long a tunnel or an answer may pass no byte either way before it is closed.
const IDLE_TIME: Duration = Duration::from_secs(60);

/// The proxy of one program (or one persistent interpreter): dropping it stops
/// accepting and ends every connection through it.
#[derive(Debug)]
pub(crate) struct ProxyHandle {
    owner: Arc<OnceLock<Principal>>,
    _task: AbortOnDropHandle<()>,
}

impl ProxyHandle {
    /// Says whose share its connections count against, once (a warm entry's proxy is
    /// made before it is claimed; until then its connections are refused, and its
    /// program runs no code of its own).
    pub(crate) fn attribute(&self, principal: &Principal) {
        let _ = self.owner.set(principal.clone());
    }
}

/// Serves `listener` (made inside the program's namespace) for a program of a runtime
/// with `index`, run by `owner` (or attributed later), until the returned handle is
/// dropped. Needs a Tokio runtime.
pub(crate) fn serve(
    listener: std::net::TcpListener,
    index: Arc<PackageIndex>,
    shared: Arc<Packages>,
    owner: Option<Principal>,
) -> io::Result<ProxyHandle> {
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let attributed = Arc::new(OnceLock::new());
    if let Some(owner) = owner {
        let _ = attributed.set(owner);
    }
    let task = tokio::spawn(accept(listener, index, shared, attributed.clone()));
    Ok(ProxyHandle {
        owner: attributed,
        _task: AbortOnDropHandle::new(task),
    })
}

/// Accepts connections while the program lives; each within the caps gets a task of
/// its own, ended with this one.
async fn accept(
    listener: TcpListener,
    index: Arc<PackageIndex>,
    shared: Arc<Packages>,
    owner: Arc<OnceLock<Principal>>,
) {
    let mine = Arc::new(Semaphore::new(super::CONNECTIONS_PER_PROGRAM));
    let refusing = Arc::new(Semaphore::new(REFUSALS_AT_ONCE));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(err) => {
                        // Out of descriptors, most likely: give others a moment rather
                        // than spin on the same error.
                        tracing::warn!(%err, "the package proxy could not accept");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let share = owner
                    .get()
                    .and_then(|owner| shared.per_principal.try_acquire_within(owner, None).ok());
                let permits = (
                    mine.clone().try_acquire_owned(),
                    share,
                    shared.connections.clone().try_acquire_owned(),
                );
                let (Ok(own), Some(share), Ok(total)) = permits else {
                    // Answered in a task of its own (its request read first, so that
                    // closing does not reset the connection before the answer is
                    // read), a few at a time; beyond them, just closed.
                    if let Ok(permit) = refusing.clone().try_acquire_owned() {
                        connections.spawn(async move {
                            let _permit = permit;
                            refuse_busy(stream).await;
                        });
                    }
                    continue;
                };
                let index = index.clone();
                let cache = shared.cache.clone();
                connections.spawn(async move {
                    let _permits = (own, share, total);
                    relay(stream, &index, cache.as_deref()).await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Refusals answered at once by one proxy (each within [`REFUSAL_TIME`]).
const REFUSALS_AT_ONCE: usize = 4;

/// How long answering a refusal may take.
const REFUSAL_TIME: Duration = Duration::from_secs(1);

/// Answers a connection beyond the caps with `503`, after reading its request head.
async fn refuse_busy(mut stream: TcpStream) {
    let _ = tokio::time::timeout(REFUSAL_TIME, async {
        let _ = read_head(&mut stream, MAX_REQUEST_HEAD).await;
        let answer = response(ProxyError::Busy.status(), &ProxyError::Busy.to_string());
        let _ = stream.write_all(&answer).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Why a request through the proxy was not served; each is answered with its status
/// and this text, which is what the program (pip) shows its user.
#[derive(Debug, thiserror::Error)]
enum ProxyError {
    #[error("sluice: the request was not one this proxy understands ({0})")]
    BadRequest(&'static str),
    #[error("sluice: {0} is not a host this sandbox may reach {1}: its network is limited to the package index the operator configured ({2})")]
    NotAllowed(String, &'static str, String),
    #[error("sluice: could not reach {0}: {1}")]
    Unreachable(String, String),
    #[error("sluice: the package index's answer was not understood ({0})")]
    BadResponse(&'static str),
    #[error("sluice: the package index did not answer in time")]
    Timeout,
    #[error("sluice: too many connections through the package proxy at once (this program's, your share of the gateway's, or the gateway's); try again when others have finished")]
    Busy,
}

impl ProxyError {
    fn status(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "400 Bad Request",
            Self::NotAllowed(..) => "403 Forbidden",
            Self::Unreachable(..) | Self::BadResponse(_) => "502 Bad Gateway",
            Self::Timeout => "504 Gateway Timeout",
            Self::Busy => "503 Service Unavailable",
        }
    }
}

/// A whole answer from the proxy itself.
fn response(status: &str, text: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}\n",
        text.len() + 1
    )
    .into_bytes()
}

/// One connection: its request, then the tunnel or the relayed answer. A refusal is
/// answered and logged; nothing else is opened for it.
async fn relay(mut client: TcpStream, index: &PackageIndex, cache: Option<&Cache>) {
    let _ = client.set_nodelay(true);
    if let Err(err) = serve_one(&mut client, index, cache).await {
        tracing::debug!(%err, "package proxy refused a request");
        let _ = client
            .write_all(&response(err.status(), &err.to_string()))
            .await;
    }
    let _ = client.shutdown().await;
}

/// What a request asked for.
struct Request {
    connect: bool,
    method: String,
    host: String,
    port: u16,
    /// The origin-form target (`/path?query`), for a plain HTTP request.
    path: String,
    /// Headers passed on (not `Host`, `Connection`, `Keep-Alive` or `Proxy-*`).
    headers: Vec<(String, Vec<u8>)>,
    /// It carries credentials (`Authorization`, `Cookie`): its answer is the caller's
    /// alone, never cached nor answered from the cache.
    credentials: bool,
}

impl Request {
    /// A request whose answer is the URL's own, for any caller: a `GET` of a package
    /// archive, without credentials, by a clean path (no query, no `.` or `..` or empty
    /// segment, no percent-encoding or parameters: one spelling per file).
    fn cacheable(&self) -> bool {
        let clean = self.path.starts_with('/')
            && !self.path.contains(['?', '#', '%', ';', '\\'])
            && self.path[1..]
                .split('/')
                .all(|segment| !matches!(segment, "" | "." | ".."));
        !self.connect
            && self.method == "GET"
            && !self.credentials
            && clean
            && is_archive(&self.path)
    }
}

async fn serve_one(
    client: &mut TcpStream,
    index: &PackageIndex,
    cache: Option<&Cache>,
) -> Result<(), ProxyError> {
    let (head, rest) = tokio::time::timeout(HEAD_TIME, read_head(client, MAX_REQUEST_HEAD))
        .await
        .map_err(|_| ProxyError::BadRequest("no request in time"))?
        .map_err(|_| ProxyError::BadRequest("no complete request head"))?;
    let request = parse_request(&head)?;
    if !index.allows(&request.host, request.port, request.connect) {
        let how = if request.connect {
            "through a tunnel (HTTPS)"
        } else {
            "over plain HTTP"
        };
        return Err(ProxyError::NotAllowed(
            format!("{}:{}", request.host, request.port),
            how,
            index.url.clone(),
        ));
    }
    let key = request
        .cacheable()
        .then(|| Cache::key(&request.host, request.port, &request.path));
    // A cached archive is answered without going out.
    if let (Some(cache), Some(key)) = (cache, &key) {
        if let Some((mut file, len, _reading)) = cache.get(key).await {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
            );
            if client.write_all(head.as_bytes()).await.is_ok() {
                let _ = copy_idle(&mut file, client, &AtomicU64::new(0), Instant::now()).await;
            }
            return Ok(());
        }
    }
    let bare_host = request.host.trim_start_matches('[').trim_end_matches(']');
    let mut upstream =
        tokio::time::timeout(CONNECT_TIME, TcpStream::connect((bare_host, request.port)))
            .await
            .map_err(|_| ProxyError::Unreachable(request.host.clone(), "timed out".into()))?
            .map_err(|err| ProxyError::Unreachable(request.host.clone(), err.to_string()))?;
    let _ = upstream.set_nodelay(true);
    if request.connect {
        let _ = client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await;
        if upstream.write_all(&rest).await.is_ok() {
            let _ = tunnel(client, &mut upstream).await;
        }
        return Ok(());
    }
    let mut out = format!("{} {} HTTP/1.1\r\n", request.method, request.path).into_bytes();
    let authority = match request.port {
        80 => request.host.clone(),
        port => format!("{}:{port}", request.host),
    };
    out.extend_from_slice(format!("Host: {authority}\r\nConnection: close\r\n").as_bytes());
    let canonical = key.is_some();
    if canonical {
        // None of the caller's headers: the answer must be the URL's own.
        out.extend_from_slice(
            b"User-Agent: sluice-package-proxy\r\nAccept: */*\r\nAccept-Encoding: identity\r\n",
        );
    }
    for (name, value) in request.headers.iter().filter(|_| !canonical) {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    upstream
        .write_all(&out)
        .await
        .map_err(|err| ProxyError::Unreachable(request.host.clone(), err.to_string()))?;
    let pending = match (cache, key) {
        (Some(cache), Some(key)) => Some((cache, key)),
        _ => None,
    };
    relay_response(&mut upstream, client, pending).await
}

/// Passes bytes both ways until both ends are done, or neither has moved a byte for
/// [`IDLE_TIME`].
async fn tunnel(client: &mut TcpStream, upstream: &mut TcpStream) -> io::Result<()> {
    let last = AtomicU64::new(0);
    let start = Instant::now();
    let (mut client_read, mut client_write) = client.split();
    let (mut upstream_read, mut upstream_write) = upstream.split();
    tokio::try_join!(
        copy_idle(&mut client_read, &mut upstream_write, &last, start),
        copy_idle(&mut upstream_read, &mut client_write, &last, start),
    )?;
    Ok(())
}

/// Copies `from` to `to` until `from` ends (then shuts `to` for writing), noting each
/// move in `last` (milliseconds since `start`, shared with the other direction); fails
/// once neither direction has moved for [`IDLE_TIME`].
async fn copy_idle(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    last: &AtomicU64,
    start: Instant,
) -> io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    let idle_for = || {
        let now = start.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(last.load(Ordering::Relaxed)))
    };
    let moved = || last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    loop {
        let n = match tokio::time::timeout(IDLE_TIME, from.read(&mut buf)).await {
            Ok(read) => read?,
            Err(_) if idle_for() >= IDLE_TIME => return Err(io::ErrorKind::TimedOut.into()),
            Err(_) => continue,
        };
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        moved();
        tokio::time::timeout(IDLE_TIME, to.write_all(&buf[..n]))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        moved();
    }
}

/// Passes the index's answer on with `Connection: close`, storing an archive's body in
/// the cache as it goes when the answer is the URL's own and whole: `200`, a length, no
/// transfer or content coding, nothing that says it is private or varies.
async fn relay_response(
    upstream: &mut TcpStream,
    client: &mut TcpStream,
    pending: Option<(&Cache, String)>,
) -> Result<(), ProxyError> {
    let (head, rest) = tokio::time::timeout(RESPONSE_TIME, read_head(upstream, MAX_RESPONSE_HEAD))
        .await
        .map_err(|_| ProxyError::Timeout)?
        .map_err(|_| ProxyError::BadResponse("no complete response head"))?;
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut parsed = httparse::Response::new(&mut headers);
    match parsed.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(ProxyError::BadResponse("malformed head")),
    }
    let code = parsed.code.unwrap_or(0);
    let mut out = format!("HTTP/1.1 {code} {}\r\n", parsed.reason.unwrap_or("")).into_bytes();
    let mut length = None;
    let mut storable = code == 200;
    for header in parsed.headers.iter() {
        let name = header.name.to_ascii_lowercase();
        if matches!(
            name.as_str(),
            "connection" | "keep-alive" | "proxy-connection"
        ) {
            continue;
        }
        let value = String::from_utf8_lossy(header.value).to_ascii_lowercase();
        match name.as_str() {
            "content-length" => {
                // Two lengths (or one that is not a number): passed on, never kept.
                storable &= length.is_none();
                length = value.trim().parse::<u64>().ok();
                storable &= length.is_some();
            }
            "transfer-encoding" | "set-cookie" | "vary" => storable = false,
            "content-encoding" => storable &= value.trim() == "identity",
            "cache-control" => {
                storable &= !(value.contains("private") || value.contains("no-store"))
            }
            _ => {}
        }
        out.extend_from_slice(header.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(header.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    let mut storing: Option<Pending<'_>> = match (pending, length, storable) {
        (Some((cache, key)), Some(len), true) => cache.begin(&key, len),
        _ => None,
    };
    if client.write_all(&out).await.is_err() {
        return Ok(());
    }
    let mut chunk = rest;
    loop {
        if chunk.is_empty() {
            chunk.resize(64 * 1024, 0);
            let n = match tokio::time::timeout(IDLE_TIME, upstream.read(&mut chunk)).await {
                Ok(Ok(n)) => n,
                Ok(Err(_)) | Err(_) => return Ok(()),
            };
            chunk.truncate(n);
            if n == 0 {
                break;
            }
        }
        if let Some(store) = &mut storing {
            if store.write(&chunk).await.is_err() {
                storing = None;
            }
        }
        match tokio::time::timeout(IDLE_TIME, client.write_all(&chunk)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return Ok(()),
        }
        chunk.clear();
    }
    if let Some(store) = storing {
        store.finish().await;
    }
    let _ = client.flush().await;
    Ok(())
}

/// Reads until the end of an HTTP head (`\r\n\r\n`), at most `most` bytes: the head
/// and whatever came after it.
async fn read_head(
    stream: &mut (impl AsyncRead + Unpin),
    most: usize,
) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let searched_from = buf.len().saturating_sub(3);
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = memchr::memmem::find(&buf[searched_from..], b"\r\n\r\n") {
            let end = searched_from + at + 4;
            if end > most {
                return Err(io::ErrorKind::InvalidData.into());
            }
            let rest = buf.split_off(end);
            return Ok((buf, rest));
        }
        if buf.len() > most {
            return Err(io::ErrorKind::InvalidData.into());
        }
    }
}

/// The request line and headers of a proxy request. A plain HTTP request must be a
/// `GET` or `HEAD` without a body.
fn parse_request(head: &[u8]) -> Result<Request, ProxyError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(ProxyError::BadRequest("an incomplete head")),
        Err(_) => return Err(ProxyError::BadRequest("a malformed head")),
    }
    let method = parsed.method.unwrap_or_default().to_owned();
    let target = parsed.path.unwrap_or_default();
    let connect = method == "CONNECT";
    if !connect && !matches!(method.as_str(), "GET" | "HEAD") {
        return Err(ProxyError::BadRequest(
            "only GET and HEAD over plain HTTP, and CONNECT for HTTPS",
        ));
    }
    let (authority, path) = if connect {
        (target, "")
    } else {
        let rest = target.strip_prefix("http://").ok_or(ProxyError::BadRequest(
            "a plain HTTP request names its target as http://host/path (HTTPS goes through CONNECT)",
        ))?;
        match rest.find('/') {
            Some(at) => rest.split_at(at),
            None => (rest, "/"),
        }
    };
    let default_port = if connect { 443 } else { 80 };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (
            host,
            port.parse::<u16>()
                .map_err(|_| ProxyError::BadRequest("a port that is not a number"))?,
        ),
        _ => (authority, default_port),
    };
    if host.is_empty() || host.contains('@') {
        return Err(ProxyError::BadRequest(
            "no host, or credentials in the target",
        ));
    }
    let mut credentials = false;
    let mut kept = Vec::new();
    for header in parsed.headers.iter() {
        let name = header.name.to_ascii_lowercase();
        let body = name == "transfer-encoding"
            || name == "content-length" && header.value.iter().any(|b| *b != b'0' && *b != b' ');
        if body && !connect {
            return Err(ProxyError::BadRequest("a request with a body"));
        }
        credentials |= matches!(name.as_str(), "authorization" | "cookie");
        let dropped = matches!(name.as_str(), "host" | "connection" | "keep-alive")
            || name.starts_with("proxy-");
        if !dropped {
            kept.push((header.name.to_owned(), header.value.to_vec()));
        }
    }
    Ok(Request {
        connect,
        method,
        host: host.to_ascii_lowercase(),
        port,
        path: path.to_owned(),
        headers: kept,
        credentials,
    })
}

/// Whether a path names a package archive (what the cache keeps): not an index page.
fn is_archive(path: &str) -> bool {
    [".whl", ".tar.gz", ".zip", ".tar.bz2", ".tgz"]
        .iter()
        .any(|ext| path.ends_with(ext))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_parsed_and_their_proxy_headers_dropped() {
        let head = b"GET http://Index.Local:8080/simple/x/ HTTP/1.1\r\nHost: elsewhere\r\nProxy-Authorization: x\r\nAccept: */*\r\nConnection: keep-alive\r\n\r\n";
        let request = parse_request(head).expect("parsed");
        assert!(!request.connect);
        assert_eq!((request.host.as_str(), request.port), ("index.local", 8080));
        assert_eq!(request.path, "/simple/x/");
        assert_eq!(request.headers.len(), 1);
        assert_eq!(request.headers[0].0, "Accept");
        let request = parse_request(b"CONNECT pypi.org:443 HTTP/1.1\r\n\r\n").expect("parsed");
        assert!(request.connect);
        assert_eq!((request.host.as_str(), request.port), ("pypi.org", 443));
        for bad in [
            &b"GET /simple/ HTTP/1.1\r\n\r\n"[..],
            b"GET http://u@h/ HTTP/1.1\r\n\r\n",
            b"GET http://h:x/ HTTP/1.1\r\n\r\n",
            b"GARBAGE\r\n\r\n",
            b"POST http://h/ HTTP/1.1\r\n\r\n",
            b"GET http://h/ HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
            b"GET http://h/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(
                parse_request(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn only_plain_archive_requests_are_cached() {
        let request = |head: &[u8]| parse_request(head).expect("parsed");
        assert!(request(b"GET http://h/x-1.0-py3-none-any.whl HTTP/1.1\r\n\r\n").cacheable());
        assert!(
            request(b"GET http://h/x-1.0.tar.gz HTTP/1.1\r\nAccept-Encoding: gzip\r\n\r\n")
                .cacheable()
        );
        for not in [
            &b"GET http://h/simple/x/ HTTP/1.1\r\n\r\n"[..],
            b"GET http://h/x.whl?v=1 HTTP/1.1\r\n\r\n",
            b"GET http://h/a/../x.whl HTTP/1.1\r\n\r\n",
            b"GET http://h//x.whl HTTP/1.1\r\n\r\n",
            b"GET http://h/./x.whl HTTP/1.1\r\n\r\n",
            b"GET http://h/%78.whl HTTP/1.1\r\n\r\n",
            b"GET http://h/x;v=1.whl HTTP/1.1\r\n\r\n",
            b"HEAD http://h/x.whl HTTP/1.1\r\n\r\n",
            b"GET http://h/x.whl HTTP/1.1\r\nAuthorization: Basic eA==\r\n\r\n",
            b"GET http://h/x.whl HTTP/1.1\r\nCookie: a=b\r\n\r\n",
        ] {
            assert!(
                !request(not).cacheable(),
                "{}",
                String::from_utf8_lossy(not)
            );
        }
    }

    #[tokio::test]
    async fn heads_end_at_the_blank_line_and_are_bounded() {
        let mut input: &[u8] = b"HEAD\r\nA: b\r\n\r\nbody";
        let (head, rest) = read_head(&mut input, 100).await.expect("head");
        assert_eq!(head, b"HEAD\r\nA: b\r\n\r\n");
        assert_eq!(rest, b"body");
        let long = vec![b'a'; 200];
        let mut input: &[u8] = &long;
        assert!(read_head(&mut input, 100).await.is_err());
    }
}

//! The package proxy: an HTTP proxy on `127.0.0.1:3128` inside one program's network
//! namespace (the listening socket made there by the gateway, `sys::
//! listen_in_network_namespace`, and served here, outside), through which a program
//! without the network reaches its runtime's package index and the hosts the operator
//! allowed for it, and nothing else.
//!
//! It speaks just what pip (and any client honouring a proxy) sends: `CONNECT
//! host:port` for HTTPS, tunnelled as it is, and absolute-form requests
//! (`GET http://host/path`) for plain HTTP, passed on with `Connection: close`, the
//! request's `Host` set from its target and its `Proxy-*` headers dropped; one request
//! per connection. Plain HTTP archive downloads go through the shared cache.
//!
//! Bounded: a request head of at most [`MAX_REQUEST_HEAD`] bytes in
//! [`HEAD_TIME`], [`super::CONNECTIONS_PER_PROGRAM`] connections per program and
//! [`super::CONNECTIONS_TOTAL`] for the gateway (more are refused at once, with `503`),
//! an upstream connect within [`CONNECT_TIME`]; the proxy, and every connection through
//! it, ends when its program does ([`ProxyHandle`]). A refusal opens no upstream
//! connection. The gateway resolves only the allowed hosts' names.

use super::cache::{Cache, Pending};
use super::Packages;
use crate::config::PackageIndex;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
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

/// The proxy of one program (or one persistent interpreter): dropping it stops
/// accepting and ends every connection through it.
#[derive(Debug)]
pub(crate) struct ProxyHandle {
    _task: AbortOnDropHandle<()>,
}

/// Serves `listener` (made inside the program's namespace) for a program of a runtime
/// with `index`, until the returned handle is dropped. Needs a Tokio runtime.
pub(crate) fn serve(
    listener: std::net::TcpListener,
    index: Arc<PackageIndex>,
    shared: Arc<Packages>,
) -> io::Result<ProxyHandle> {
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let task = tokio::spawn(accept(listener, index, shared));
    Ok(ProxyHandle {
        _task: AbortOnDropHandle::new(task),
    })
}

/// Accepts connections while the program lives; each within the caps gets a task of
/// its own, ended with this one.
async fn accept(listener: TcpListener, index: Arc<PackageIndex>, shared: Arc<Packages>) {
    let mine = Arc::new(Semaphore::new(super::CONNECTIONS_PER_PROGRAM));
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
                let permits = (
                    mine.clone().try_acquire_owned(),
                    shared.connections.clone().try_acquire_owned(),
                );
                let (Ok(own), Ok(total)) = permits else {
                    // Written without waiting: a full socket buffer just loses it.
                    let _ = stream.try_write(&response(
                        ProxyError::Busy.status(),
                        &ProxyError::Busy.to_string(),
                    ));
                    continue;
                };
                let index = index.clone();
                let cache = shared.cache.clone();
                connections.spawn(async move {
                    let _permits = (own, total);
                    relay(stream, &index, cache.as_deref()).await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Why a request through the proxy was not served; each is answered with its status
/// and this text, which is what the program (pip) shows its user.
#[derive(Debug, thiserror::Error)]
enum ProxyError {
    #[error("sluice: the request was not one this proxy understands ({0})")]
    BadRequest(&'static str),
    #[error("sluice: {0} is not a host this sandbox may reach: its network is limited to the package index the operator configured ({1})")]
    NotAllowed(String, String),
    #[error("sluice: could not reach {0}: {1}")]
    Unreachable(String, String),
    #[error("sluice: the package index's answer was not understood ({0})")]
    BadResponse(&'static str),
    #[error("sluice: the package index did not answer in time")]
    Timeout,
    #[error("sluice: too many connections through the package proxy at once")]
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
    let allowed = index
        .hosts
        .iter()
        .any(|(host, port)| *host == request.host && *port == request.port);
    if !allowed {
        return Err(ProxyError::NotAllowed(
            format!("{}:{}", request.host, request.port),
            index.url.clone(),
        ));
    }
    // A cached archive is answered without going out.
    let key = (!request.connect && request.method == "GET" && is_archive(&request.path))
        .then(|| Cache::key(&request.host, request.port, &request.path));
    if let (Some(cache), Some(key)) = (cache, &key) {
        if let Some((mut file, len)) = cache.get(key).await {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
            );
            if client.write_all(head.as_bytes()).await.is_ok() {
                let _ = tokio::io::copy(&mut file, client).await;
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
            let _ = tokio::io::copy_bidirectional(client, &mut upstream).await;
        }
        return Ok(());
    }
    let mut out = format!("{} {} HTTP/1.1\r\n", request.method, request.path).into_bytes();
    let authority = match request.port {
        80 => request.host.clone(),
        port => format!("{}:{port}", request.host),
    };
    out.extend_from_slice(format!("Host: {authority}\r\nConnection: close\r\n").as_bytes());
    for (name, value) in &request.headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&rest);
    upstream
        .write_all(&out)
        .await
        .map_err(|err| ProxyError::Unreachable(request.host.clone(), err.to_string()))?;
    let pending = match (cache, key) {
        (Some(cache), Some(key)) => Some((cache, key)),
        _ => None,
    };
    let (mut client_read, mut client_write) = client.split();
    let (mut upstream_read, mut upstream_write) = upstream.split();
    // The request's body (if any) goes on as it comes; the answer decides the end.
    let upload = async {
        let _ = tokio::io::copy(&mut client_read, &mut upstream_write).await;
        let _ = upstream_write.shutdown().await;
        std::future::pending::<()>().await
    };
    tokio::select! {
        relayed = relay_response(&mut upstream_read, &mut client_write, pending) => relayed,
        () = upload => Ok(()),
    }
}

/// Passes the index's answer on with `Connection: close`, storing an archive's body in
/// the cache as it goes when it is whole (`200`, a length, no transfer coding).
async fn relay_response(
    upstream: &mut (impl AsyncRead + Unpin),
    client: &mut (impl AsyncWrite + Unpin),
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
    let mut coded = false;
    for header in parsed.headers.iter() {
        let name = header.name.to_ascii_lowercase();
        if matches!(
            name.as_str(),
            "connection" | "keep-alive" | "proxy-connection"
        ) {
            continue;
        }
        if name == "content-length" {
            length = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
        }
        coded |= name == "transfer-encoding";
        out.extend_from_slice(header.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(header.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    let mut storing: Option<Pending<'_>> = match (pending, length, code, coded) {
        (Some((cache, key)), Some(len), 200, false) => cache.begin(&key, len),
        _ => None,
    };
    if client.write_all(&out).await.is_err() {
        return Ok(());
    }
    let mut chunk = rest;
    loop {
        if chunk.is_empty() {
            chunk.resize(64 * 1024, 0);
            let n = upstream.read(&mut chunk).await.unwrap_or(0);
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
        if client.write_all(&chunk).await.is_err() {
            return Ok(());
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

/// The request line and headers of a proxy request.
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
    let headers = parsed
        .headers
        .iter()
        .filter(|h| {
            let name = h.name.to_ascii_lowercase();
            !(name == "host"
                || name == "connection"
                || name == "keep-alive"
                || name.starts_with("proxy-"))
        })
        .map(|h| (h.name.to_owned(), h.value.to_vec()))
        .collect();
    Ok(Request {
        connect,
        method,
        host: host.to_ascii_lowercase(),
        port,
        path: path.to_owned(),
        headers,
    })
}

/// Whether a path names a package archive (what the cache keeps): not an index page.
fn is_archive(path: &str) -> bool {
    let path = path.split(['?', '#']).next().unwrap_or_default();
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
        ] {
            assert!(
                parse_request(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn only_archives_are_cached() {
        assert!(is_archive("/packages/x-1.0-py3-none-any.whl"));
        assert!(is_archive("/x-1.0.tar.gz?sig=1"));
        assert!(!is_archive("/simple/x/"));
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

//! The playground page (issue 14): `GET /` and its two assets are the files built into
//! the binary, with their content types, `cache-control`, an entity tag and a content
//! security policy that keeps the page to its own scripts and its own gateway; a page of
//! the gateway's own address may open a socket without `--allow-origin`; and with the
//! playground off (`--no-playground`, `Config::playground`) all of it is gone: HTTP 404
//! and the origin refused. The page itself is tested in Chromium (`playground/test.sh`).

use anyhow::{ensure, Context as _, Result};
use sluice_gateway::Config;
use sluice_tests::{http_get, refused_upgrade, RawSocket, TestGateway};
use std::collections::HashMap;
use std::net::SocketAddr;

const INDEX: &[u8] = include_bytes!("../../../gateway/assets/playground/index.html");
const SCRIPT: &[u8] = include_bytes!("../../../gateway/assets/playground/playground.js");
const STYLE: &[u8] = include_bytes!("../../../gateway/assets/playground/playground.css");

/// An HTTP answer: status, headers (names in lower case; the last of a repeated one) and body.
struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Result<&str> {
        self.headers
            .get(name)
            .map(String::as_str)
            .with_context(|| format!("no {name} header in {:?}", self.headers))
    }
}

/// `GET path` with `headers`, read to the end (the gateway sends a length, no chunks).
async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<Answer> {
    let response = sluice_tests::http_get_raw(addr, path, headers).await?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of the head")?;
    let head = std::str::from_utf8(&response[..split])?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no status line in {head:?}"))?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Ok(Answer {
        status,
        headers,
        body: response[split + 4..].to_vec(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_its_assets_are_served_with_their_types_and_policy() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    for (path, bytes, content_type) in [
        ("/", INDEX, "text/html; charset=utf-8"),
        ("/playground.js", SCRIPT, "text/javascript; charset=utf-8"),
        ("/playground.css", STYLE, "text/css; charset=utf-8"),
    ] {
        let answer = get(gateway.addr(), path, &[]).await?;
        ensure!(answer.status == 200, "GET {path}: {}", answer.status);
        ensure!(!bytes.is_empty(), "{path}: the committed asset is empty");
        ensure!(answer.body == bytes, "GET {path}: not the committed asset");
        assert_eq!(answer.header("content-type")?, content_type, "{path}");
        assert_eq!(answer.header("cache-control")?, "no-cache", "{path}");
        assert_eq!(answer.header("x-content-type-options")?, "nosniff");
        let policy = answer.header("content-security-policy")?;
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            ensure!(
                policy.split(';').any(|d| d.trim() == directive),
                "{path}: {directive:?} missing from {policy:?}"
            );
        }
        // A browser that has it revalidates and gets no body.
        let etag = answer.header("etag")?.to_owned();
        let again = get(gateway.addr(), path, &[("If-None-Match", &etag)]).await?;
        assert_eq!(again.status, 304, "{path} with its etag");
        ensure!(again.body.is_empty(), "a 304 with a body");
        let stale = get(gateway.addr(), path, &[("If-None-Match", "\"old\"")]).await?;
        assert_eq!(stale.status, 200, "{path} with another etag");
    }
    let html = String::from_utf8_lossy(INDEX);
    for reference in ["src=\"/playground.js\"", "href=\"/playground.css\""] {
        ensure!(html.contains(reference), "the page loads {reference}");
    }
    // Paths beyond the three are still the gateway's 404.
    let (status, _) = http_get(gateway.addr(), "/playground.map").await?;
    assert_eq!(status, 404);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_the_gateways_own_address_may_open_a_socket() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let own = format!("http://{}", gateway.addr());
    let mut socket = RawSocket::connect_with_origin(&gateway.url(), &own).await?;
    socket.assert_still_works().await?;
    let runtimes = get(
        gateway.addr(),
        sluice_protocol::RUNTIMES_PATH,
        &[("Origin", &own)],
    )
    .await?;
    assert_eq!(runtimes.status, 200);
    // Another port on the same address, another address, or the same port under a
    // name, is another origin.
    let port = gateway.addr().port();
    for foreign in [
        format!("http://127.0.0.1:{}", port.wrapping_add(1)),
        format!("http://127.0.0.2:{port}"),
        format!("http://localhost:{port}"),
    ] {
        let (status, _) = refused_upgrade(&gateway.url(), &[("Origin", &foreign)]).await?;
        assert_eq!(status, 403, "{foreign}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_playground_there_is_no_page_and_no_own_origin() -> Result<()> {
    let gateway = TestGateway::spawn_with(Config {
        playground: false,
        ..Config::default()
    })
    .await;
    for path in ["/", "/playground.js", "/playground.css"] {
        let (status, body) = http_get(gateway.addr(), path).await?;
        assert_eq!(status, 404, "GET {path}: {body}");
    }
    let (status, _) = http_get(gateway.addr(), "/healthz").await?;
    assert_eq!(status, 200);
    let own = format!("http://{}", gateway.addr());
    let (status, _) = refused_upgrade(&gateway.url(), &[("Origin", &own)]).await?;
    assert_eq!(
        status, 403,
        "the gateway's own origin needs --allow-origin again"
    );
    Ok(())
}

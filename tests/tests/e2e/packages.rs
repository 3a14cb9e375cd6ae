//! Package environments (issue 15): a session's own package layer, filled by `%pip
//! install` from the operator's index (a local one here: a wheel served on loopback by
//! this test), reached by jailed programs without the network through the gateway's
//! proxy and nothing else, with the archive cached for every session.

use crate::isolation::jail_available;
use anyhow::{ensure, Context as _, Result};
use sluice_gateway::{Config, Isolation, PackageIndex, RuntimeSpec};
use sluice_protocol::ExecuteRequest;
use sluice_tests::{cell, forced_isolation, request, run, TestGateway};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const WHEEL_NAME: &str = "sluicedemo-1.0-py3-none-any.whl";

/// A wheel of one module, `sluicedemo` (`VALUE = "from the index"`), made with the
/// standard library's zipfile.
fn build_wheel() -> Result<Vec<u8>> {
    let script = r#"
import base64, hashlib, io, sys, zipfile
files = {
    "sluicedemo/__init__.py": b"VALUE = 'from the index'\n",
    "sluicedemo-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: sluicedemo\nVersion: 1.0\n",
    "sluicedemo-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: sluice-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = ""
for name, data in files.items():
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record += f"{name},sha256={digest},{len(data)}\n"
record += "sluicedemo-1.0.dist-info/RECORD,,\n"
out = io.BytesIO()
with zipfile.ZipFile(out, "w") as wheel:
    for name, data in files.items():
        wheel.writestr(name, data)
    wheel.writestr("sluicedemo-1.0.dist-info/RECORD", record)
sys.stdout.buffer.write(out.getvalue())
"#;
    let output = std::process::Command::new("python3")
        .args(["-c", script])
        .output()
        .context("python3 to build the test wheel")?;
    ensure!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output.stdout)
}

/// A package index on loopback: `/simple/sluicedemo/` links the wheel, served at
/// `/files/`; counts the wheel's downloads.
struct Index {
    port: u16,
    downloads: Arc<AtomicUsize>,
    /// The heads of the wheel's downloads, as the index received them.
    heads: Arc<std::sync::Mutex<Vec<String>>>,
    _server: tokio::task::JoinHandle<()>,
}

impl Index {
    async fn start(wheel: Vec<u8>) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let downloads = Arc::new(AtomicUsize::new(0));
        let counted = downloads.clone();
        let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = heads.clone();
        let wheel = Arc::new(wheel);
        let server = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (wheel, counted, seen) = (wheel.clone(), counted.clone(), seen.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && head.len() < 16384 {
                        match stream.read(&mut byte).await {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let head = String::from_utf8_lossy(&head);
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let (status, body): (&str, Vec<u8>) = if path == "/simple/sluicedemo/" {
                        let page = format!(
                            "<!DOCTYPE html><html><body><a href=\"/files/{WHEEL_NAME}\">{WHEEL_NAME}</a></body></html>"
                        );
                        ("200 OK", page.into_bytes())
                    } else if path == format!("/files/{WHEEL_NAME}") {
                        counted.fetch_add(1, Ordering::SeqCst);
                        if let Ok(mut seen) = seen.lock() {
                            seen.push(head.to_string());
                        }
                        ("200 OK", wheel.to_vec())
                    } else {
                        ("404 Not Found", b"not here".to_vec())
                    };
                    let answer = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: text/html\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                    let _ = stream.write_all(&body).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Ok(Self {
            port,
            downloads,
            heads,
            _server: server,
        })
    }
}

/// A local index and a jailed gateway whose python installs from it; `None` (the test
/// skipped) where the proxy cannot run: it listens in namespaces a root gateway makes.
async fn jailed_gateway_with_index() -> Result<Option<(Index, TestGateway)>> {
    if forced_isolation().is_some_and(|i| i != Isolation::Namespaces) {
        return Ok(None);
    }
    if !sluice_tests::running_as_root() || !jail_available() {
        sluice_tests::skip("the package proxy listens in namespaces a root gateway makes");
        return Ok(None);
    }
    let index = Index::start(build_wheel()?).await?;
    let mut runtimes = RuntimeSpec::defaults();
    for spec in runtimes.iter_mut().filter(|s| s.name == "python") {
        spec.package_index = Some(
            PackageIndex::parse(&format!("http://127.0.0.1:{}/simple/", index.port))
                .map_err(anyhow::Error::msg)?,
        );
    }
    let gateway = TestGateway::spawn_with(Config {
        isolation: Isolation::Namespaces,
        runtimes,
        ..Config::default()
    })
    .await;
    Ok(Some((index, gateway)))
}

/// A program or cell of the session `session`, which keeps a workspace.
fn in_session(session: &str, id: &str, code: &str, persistent: bool) -> ExecuteRequest {
    ExecuteRequest {
        workspace: true,
        persistent,
        ..cell(session, id, code)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pip_install_fills_the_sessions_layer_through_the_proxy_and_nothing_else() -> Result<()> {
    let Some((index, gateway)) = jailed_gateway_with_index().await? else {
        return Ok(());
    };
    let pip = std::process::Command::new("python3")
        .args(["-m", "pip", "--version"])
        .output()
        .context("python3 -m pip")?;
    ensure!(pip.status.success(), "the tests need pip (python3 -m pip)");
    // Discovery says where the runtime installs from.
    let (status, text) =
        sluice_tests::http_get(gateway.addr(), sluice_protocol::RUNTIMES_PATH).await?;
    ensure!(status == 200, "{status} {text}");
    let catalog: sluice_protocol::Catalog = serde_json::from_str(&text)?;
    let python = catalog.runtimes.iter().find(|r| r.language == "python");
    ensure!(
        python.and_then(|r| r.package_index.as_deref())
            == Some(format!("http://127.0.0.1:{}/simple/", index.port).as_str()),
        "{python:?}"
    );
    let client = gateway.client().await?;

    // Session a: `%pip install` in a cell; the next cell imports it.
    let install = run(
        &client,
        in_session("pkg-a", "a1", "%pip install sluicedemo", true),
    )
    .await?;
    ensure!(
        install.success()
            && install
                .stdout
                .contains("Successfully installed sluicedemo-1.0"),
        "install: {:?}\nstdout: {}\nstderr: {}",
        install.terminal,
        install.stdout,
        install.stderr
    );
    let probe = "import sluicedemo\nprint(sluicedemo.VALUE)";
    let imported = run(&client, in_session("pkg-a", "a2", probe, true)).await?;
    ensure!(
        imported.stdout == "from the index\n",
        "the next cell: {:?} {}",
        imported.terminal,
        imported.stderr
    );
    // A later program (not a cell) of the same session sees it too.
    let program = run(&client, in_session("pkg-a", "a3", probe, false)).await?;
    ensure!(
        program.stdout == "from the index\n",
        "a program of the session: {:?} {}",
        program.terminal,
        program.stderr
    );
    ensure!(index.downloads.load(Ordering::SeqCst) == 1);
    // A `%pip` line inside a string is the string's, not a magic.
    let text = "s = '''\n%pip install x\n'''\nprint(repr(s))";
    let kept = run(&client, in_session("pkg-a", "a4", text, true)).await?;
    ensure!(
        kept.stdout == "'\\n%pip install x\\n'\n",
        "{:?} {}",
        kept.terminal,
        kept.stdout
    );

    // A `!command` line runs in a shell, with the cell's output.
    let shell = "!echo from the shell\nprint('and Python')";
    let ran = run(&client, in_session("pkg-a", "a5", shell, true)).await?;
    ensure!(
        ran.stdout == "from the shell\nand Python\n",
        "{:?} {}",
        ran.terminal,
        ran.stdout
    );

    // Session b does not have it, until it installs it: from the gateway's cache.
    let absent = run(&client, in_session("pkg-b", "b1", probe, true)).await?;
    ensure!(
        absent
            .exception()
            .is_some_and(|e| e.ename == "ModuleNotFoundError"),
        "another session: {:?} {}",
        absent.terminal,
        absent.stdout
    );
    let again = run(
        &client,
        in_session("pkg-b", "b2", "%pip install sluicedemo", true),
    )
    .await?;
    ensure!(
        again.success()
            && again
                .stdout
                .contains("Successfully installed sluicedemo-1.0"),
        "{:?} {} {}",
        again.terminal,
        again.stdout,
        again.stderr
    );
    let imported = run(&client, in_session("pkg-b", "b3", probe, true)).await?;
    ensure!(
        imported.stdout == "from the index\n",
        "{:?}",
        imported.terminal
    );
    ensure!(
        index.downloads.load(Ordering::SeqCst) == 1,
        "the second session's download came from the gateway's cache"
    );

    // The proxy reaches the index's host and no other; the program has no network of
    // its own.
    let reach = r#"
import os, urllib.request, urllib.error
proxy = os.environ["PIP_PROXY"]
opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy, "https": proxy}))
try:
    opener.open("http://10.1.2.3:8080/simple/", timeout=10)
    print("reached")
except urllib.error.HTTPError as e:
    print(e.code, "not a host this sandbox may reach" in e.read().decode())
try:
    urllib.request.build_opener(urllib.request.ProxyHandler({})).open("http://10.1.2.3:8080/", timeout=5)
    print("direct reached")
except OSError as e:
    print("direct refused")
print(proxy)
"#;
    let outcome = run(&client, request("reach", "python", reach)).await?;
    ensure!(
        outcome.stdout == "403 True\ndirect refused\nhttp://127.0.0.1:3128\n",
        "{:?} {} {}",
        outcome.terminal,
        outcome.stdout,
        outcome.stderr
    );
    client.close().await?;
    gateway.shutdown().await?;
    Ok(())
}

/// What the outside review found, each refused or made harmless: a request whose headers
/// could change the answer is not cached (nor sent as it was, for a cacheable one), a
/// tunnel to a plain-HTTP index is refused, and so are requests with a body and methods
/// pip does not use; a program's ninth connection at once is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_keeps_the_cache_canonical_and_refuses_what_pip_never_sends() -> Result<()> {
    let Some((index, gateway)) = jailed_gateway_with_index().await? else {
        return Ok(());
    };
    let client = gateway.client().await?;
    let port = index.port;
    let probe = format!(
        r#"
import socket
def ask(head):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=10)
    s.sendall(head.encode())
    answer = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        answer += chunk
    return answer.split(b"\r\n", 1)[0].decode()
wheel = "http://127.0.0.1:{port}/files/{WHEEL_NAME}"
# Headers that could change the answer: sent canonically, so the cached copy is the URL's own.
print(ask(f"GET {{wheel}} HTTP/1.1\r\nAccept-Encoding: gzip\r\nX-Injected: evil\r\n\r\n"))
# Credentials: passed on, never cached nor answered from the cache.
print(ask(f"GET {{wheel}} HTTP/1.1\r\nAuthorization: Basic eDp5\r\n\r\n"))
# From the cache now.
print(ask(f"GET {{wheel}} HTTP/1.1\r\n\r\n"))
print(ask("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n"))
print(ask(f"POST {{wheel}} HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"))
print(ask(f"GET {{wheel}} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"))
held = [socket.create_connection(("127.0.0.1", 3128), timeout=10) for _ in range(8)]
print(ask(f"GET {{wheel}} HTTP/1.1\r\n\r\n"))
"#
    );
    let outcome = run(&client, request("probe", "python", &probe)).await?;
    let lines: Vec<&str> = outcome.stdout.lines().collect();
    ensure!(
        lines
            == [
                "HTTP/1.1 200 OK",
                "HTTP/1.1 200 OK",
                "HTTP/1.1 200 OK",
                "HTTP/1.1 403 Forbidden",
                "HTTP/1.1 400 Bad Request",
                "HTTP/1.1 400 Bad Request",
                "HTTP/1.1 503 Service Unavailable",
            ],
        "{:?}\n{}\n{}",
        outcome.terminal,
        outcome.stdout,
        outcome.stderr
    );
    // Two went out (the canonical one, then the one with credentials); the third came
    // from the cache.
    ensure!(index.downloads.load(Ordering::SeqCst) == 2);
    let heads = index.heads.lock().map(|h| h.clone()).unwrap_or_default();
    ensure!(heads.len() == 2, "{heads:?}");
    let canonical = heads[0].to_ascii_lowercase();
    ensure!(
        canonical.contains("accept-encoding: identity")
            && !canonical.contains("gzip")
            && !canonical.contains("x-injected"),
        "{canonical}"
    );
    ensure!(
        heads[1].contains("Authorization: Basic eDp5"),
        "{}",
        heads[1]
    );
    client.close().await?;
    gateway.shutdown().await?;
    Ok(())
}

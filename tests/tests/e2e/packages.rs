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

/// A package index (or npm registry) on loopback: fixed answers by path; counts the
/// requests for one of them, the archive, and keeps their heads.
struct Index {
    port: u16,
    downloads: Arc<AtomicUsize>,
    /// The heads of the archive's downloads, as the index received them.
    heads: Arc<std::sync::Mutex<Vec<String>>>,
    _server: tokio::task::JoinHandle<()>,
}

impl Index {
    /// pip's view: `/simple/sluicedemo/` links the wheel, served at `/files/`.
    async fn pip(wheel: Vec<u8>) -> Result<Self> {
        let page = format!(
            "<!DOCTYPE html><html><body><a href=\"/files/{WHEEL_NAME}\">{WHEEL_NAME}</a></body></html>"
        );
        let archive = format!("/files/{WHEEL_NAME}");
        Self::start(
            |_| vec![("/simple/sluicedemo/".to_owned(), page.into_bytes())],
            (archive, wheel),
        )
        .await
    }

    /// Serves `pages(port)` and the counted `archive` (path, bytes).
    async fn start(
        pages: impl FnOnce(u16) -> Vec<(String, Vec<u8>)>,
        archive: (String, Vec<u8>),
    ) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let downloads = Arc::new(AtomicUsize::new(0));
        let counted = downloads.clone();
        let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = heads.clone();
        let pages: Arc<std::collections::HashMap<String, Vec<u8>>> =
            Arc::new(pages(port).into_iter().collect());
        let archive = Arc::new(archive);
        let server = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (pages, archive) = (pages.clone(), archive.clone());
                let (counted, seen) = (counted.clone(), seen.clone());
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
                    let (status, body): (&str, Vec<u8>) = if path == archive.0 {
                        counted.fetch_add(1, Ordering::SeqCst);
                        if let Ok(mut seen) = seen.lock() {
                            seen.push(head.to_string());
                        }
                        ("200 OK", archive.1.clone())
                    } else if let Some(page) = pages.get(&path) {
                        ("200 OK", page.clone())
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

/// Whether the package proxy can run here: it listens in namespaces a root gateway
/// makes for the jail (the test is skipped, saying so, where not).
fn proxy_available() -> bool {
    if forced_isolation().is_some_and(|i| i != Isolation::Namespaces) {
        return false;
    }
    if !sluice_tests::running_as_root() || !jail_available() {
        sluice_tests::skip("the package proxy listens in namespaces a root gateway makes");
        return false;
    }
    true
}

/// A jailed gateway whose `language` installs from `index_url`.
async fn jailed_gateway(language: &str, index_url: &str) -> Result<TestGateway> {
    let mut runtimes = RuntimeSpec::defaults();
    for spec in runtimes.iter_mut().filter(|s| s.name == language) {
        spec.package_index = Some(PackageIndex::parse(index_url).map_err(anyhow::Error::msg)?);
    }
    Ok(TestGateway::spawn_with(Config {
        isolation: Isolation::Namespaces,
        runtimes,
        ..Config::default()
    })
    .await)
}

/// A local index and a jailed gateway whose python installs from it; `None` (the test
/// skipped) where the proxy cannot run.
async fn jailed_gateway_with_index() -> Result<Option<(Index, TestGateway)>> {
    if !proxy_available() {
        return Ok(None);
    }
    let index = Index::pip(build_wheel()?).await?;
    let url = format!("http://127.0.0.1:{}/simple/", index.port);
    let gateway = jailed_gateway("python", &url).await?;
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
        // The bare form, as IPython's automagic takes it.
        in_session("pkg-b", "b2", "pip install sluicedemo", true),
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

/// An npm package `sluicedemo` 1.0.0 (`module.exports = {value: 'from the registry'}`)
/// as a registry serves it: its tarball, and the metadata document naming it at
/// `registry` with its integrity.
fn build_npm_package(registry: &str) -> Result<(Vec<u8>, Vec<u8>)> {
    let script = r#"
import base64, hashlib, io, json, sys, tarfile
files = {
    "package/package.json": json.dumps({"name": "sluicedemo", "version": "1.0.0", "main": "index.js"}).encode(),
    "package/index.js": b"module.exports = { value: 'from the registry' };\n",
}
out = io.BytesIO()
with tarfile.open(fileobj=out, mode="w:gz") as tar:
    for name, data in files.items():
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))
tgz = out.getvalue()
registry = sys.argv[1]
meta = {
    "name": "sluicedemo",
    "dist-tags": {"latest": "1.0.0"},
    "versions": {"1.0.0": {
        "name": "sluicedemo", "version": "1.0.0", "main": "index.js",
        "dist": {
            "tarball": registry + "sluicedemo/-/sluicedemo-1.0.0.tgz",
            "shasum": hashlib.sha1(tgz).hexdigest(),
            "integrity": "sha512-" + base64.b64encode(hashlib.sha512(tgz).digest()).decode(),
        },
    }},
}
print(json.dumps({"tgz": base64.b64encode(tgz).decode(), "meta": json.dumps(meta)}))
"#;
    let output = std::process::Command::new("python3")
        .args(["-c", script, registry])
        .output()
        .context("python3 to build the test npm package")?;
    ensure!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let built: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    use base64::Engine as _;
    let tgz =
        base64::engine::general_purpose::STANDARD.decode(built["tgz"].as_str().context("tgz")?)?;
    let meta = built["meta"].as_str().context("meta")?.as_bytes().to_vec();
    Ok((tgz, meta))
}

/// npm's turn: a Node runtime offered an npm registry (a local one) installs through the
/// proxy into the session's workspace (`node_modules`, as npm always does), where later
/// programs and cells of the session find it and other sessions do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_installs_into_the_sessions_workspace_through_the_proxy() -> Result<()> {
    if !proxy_available() {
        return Ok(());
    }
    let npm = std::process::Command::new("npm").arg("--version").output();
    ensure!(
        npm.is_ok_and(|out| out.status.success()),
        "the tests need npm (installed with node)"
    );
    // The metadata names the tarball by the registry's address, known once it listens.
    let placeholder = "http://registry.invalid/";
    let (tgz, meta) = build_npm_package(placeholder)?;
    let meta = String::from_utf8(meta)?;
    let index = Index::start(
        |port| {
            let meta = meta.replace(placeholder, &format!("http://127.0.0.1:{port}/"));
            vec![("/sluicedemo".to_owned(), meta.into_bytes())]
        },
        ("/sluicedemo/-/sluicedemo-1.0.0.tgz".to_owned(), tgz),
    )
    .await?;
    let gateway = jailed_gateway("node", &format!("http://127.0.0.1:{}/", index.port)).await?;
    let client = gateway.client().await?;
    let node = |session: &str, id: &str, code: &str, persistent: bool| ExecuteRequest {
        language: "node".into(),
        ..in_session(session, id, code, persistent)
    };
    let install = "const { execSync } = require('child_process');\nprocess.stdout.write(execSync('npm install sluicedemo 2>&1').toString());";
    let installed = run(&client, node("npm-a", "n1", install, false)).await?;
    ensure!(
        installed.success() && installed.stdout.contains("added 1 package"),
        "npm install: {:?}\n{}\n{}",
        installed.terminal,
        installed.stdout,
        installed.stderr
    );
    let probe = "console.log(require('sluicedemo').value)";
    let program = run(&client, node("npm-a", "n2", probe, false)).await?;
    ensure!(
        program.stdout == "from the registry\n",
        "a later program: {:?} {}",
        program.terminal,
        program.stderr
    );
    let cell = run(&client, node("npm-a", "n3", probe, true)).await?;
    ensure!(
        cell.stdout == "from the registry\n",
        "a cell: {:?} {}",
        cell.terminal,
        cell.stderr
    );
    let elsewhere = run(&client, node("npm-b", "n4", probe, false)).await?;
    ensure!(
        !elsewhere.success() && elsewhere.stderr.contains("Cannot find module 'sluicedemo'"),
        "another session: {:?} {}",
        elsewhere.terminal,
        elsewhere.stderr
    );
    ensure!(index.downloads.load(Ordering::SeqCst) == 1);
    client.close().await?;
    gateway.shutdown().await?;
    Ok(())
}

//! Attacks by an outsider with a socket on authentication, tenants and admission (issue
//! 12's red team): each test is one attack that got through once, kept so that it never
//! gets through again. The attempts that held are listed in the red-team report.

use anyhow::{ensure, Context as _, Result};
use serde_json::json;
use sluice_gateway::{AuthConfig, Config};
use sluice_protocol::{ErrorCode, Event, EventKind, ExecuteRequest, Limits};
use sluice_tests::{request, text_of, unique_marker, RawSocket, TestGateway};
use std::path::PathBuf;

/// The HS256 secret the test gateways accept.
const SECRET: &str = "a red-team secret that is long enough for HS256 tokens, 48+ bytes";

/// A directory for one test's key files, removed when dropped.
struct KeyDir(PathBuf);

impl KeyDir {
    fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("sluice-rt-{}", unique_marker("rt")));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for KeyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A gateway accepting HS256 tokens signed with [`SECRET`].
async fn gateway_with_tokens(dir: &KeyDir, tune: impl FnOnce(&mut Config)) -> Result<TestGateway> {
    let secret = dir.0.join("secret");
    std::fs::write(&secret, SECRET)?;
    let mut config = Config {
        auth: AuthConfig {
            jwt_secret_file: Some(secret),
            ..AuthConfig::default()
        },
        ..Config::default()
    };
    tune(&mut config);
    Ok(TestGateway::spawn_with(config).await)
}

/// An HS256 token with `claims` and an hour's `exp`.
fn token(mut claims: serde_json::Value) -> Result<String> {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 3600;
    claims["exp"] = json!(exp);
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes())?;
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &key,
    )?)
}

/// A raw socket presenting a token with `claims`.
async fn connect_with(gateway: &TestGateway, claims: serde_json::Value) -> Result<RawSocket> {
    let bearer = format!("Bearer {}", token(claims)?);
    RawSocket::connect_with_headers(&gateway.url(), &[("Authorization", &bearer)]).await
}

async fn run_on(socket: &mut RawSocket, request: ExecuteRequest) -> Result<Vec<Event>> {
    let id = request.id.clone();
    socket.execute(request).await?;
    socket.events_until_terminal(&id).await
}

fn in_session(session: &str, request: ExecuteRequest) -> ExecuteRequest {
    ExecuteRequest {
        session: Some(session.into()),
        ..request
    }
}

fn cell(session: &str, id: &str, code: &str) -> ExecuteRequest {
    ExecuteRequest {
        persistent: true,
        ..in_session(session, request(id, "python", code))
    }
}

/// A grant narrowed to some session names must not read another session of its tenant
/// by resending an `execute` it knows (same id and code): the resend path answered from
/// the session before the `sessions` claim was checked, replaying the other session's
/// output, and a different request got `duplicate_id`, which told that the session
/// and the id exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narrowed_grant_cannot_read_a_forbidden_session_by_resending_an_execute() -> Result<()> {
    let dir = KeyDir::new()?;
    let gateway = gateway_with_tokens(&dir, |_| {}).await?;
    let marker = unique_marker("secret");
    // User 43 of tenant acme runs something in their own session.
    let mut victim = connect_with(&gateway, json!({"sub": "acme", "sessions": ["u43/*"]})).await?;
    let theirs = in_session("u43/nb", request("setup", "sh", &format!("echo {marker}")));
    let events = run_on(&mut victim, theirs.clone()).await?;
    ensure!(
        text_of(&events, EventKind::Stdout).contains(&marker),
        "{events:?}"
    );
    // User 42 of the same tenant may only use u42/*.
    let mut other = connect_with(&gateway, json!({"sub": "acme", "sessions": ["u42/*"]})).await?;
    let events = run_on(&mut other, theirs).await?;
    let last = events.last().context("no events")?;
    ensure!(
        !text_of(&events, EventKind::Stdout).contains(&marker),
        "a grant without u43/* read session u43/nb: {events:?}"
    );
    ensure!(
        last.kind == EventKind::Error && last.code == Some(ErrorCode::NotPermitted),
        "{last:?}"
    );
    // Another request with that id: the same refusal, no hint that the id exists.
    let probe = in_session("u43/nb", request("setup", "sh", "true"));
    let events = run_on(&mut other, probe).await?;
    let last = events.last().context("no events")?;
    ensure!(
        last.kind == EventKind::Error && last.code == Some(ErrorCode::NotPermitted),
        "{last:?}"
    );
    gateway.shutdown().await
}

/// A persistent interpreter keeps the limits it started with. A grant whose ceilings
/// are lower must not run cells in one that another grant of its tenant started with
/// more: here the descriptor limit (RLIMIT_NOFILE, which every host enforces).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_cannot_inherit_limits_above_its_grants_ceilings() -> Result<()> {
    let dir = KeyDir::new()?;
    let gateway = gateway_with_tokens(&dir, |_| {}).await?;
    let show = "import resource; print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])";
    let mut wide = connect_with(&gateway, json!({"sub": "acme"})).await?;
    let wide_cell = ExecuteRequest {
        limits: Limits {
            open_files: Some(2_000),
            ..Limits::default()
        },
        ..cell("shared", "w", show)
    };
    let events = run_on(&mut wide, wide_cell).await?;
    ensure!(
        text_of(&events, EventKind::Stdout) == "2000\n",
        "{events:?}"
    );
    let mut narrow = connect_with(
        &gateway,
        json!({"sub": "acme", "limits": {"open_files": 64}}),
    )
    .await?;
    let events = run_on(&mut narrow, cell("shared", "n", show)).await?;
    let stdout = text_of(&events, EventKind::Stdout);
    let last = events.last().context("no events")?;
    ensure!(
        stdout != "2000\n",
        "a cell of a grant capped at 64 descriptors ran with 2000: {events:?}"
    );
    ensure!(
        last.kind == EventKind::Error && last.code == Some(ErrorCode::NotPermitted),
        "{last:?}"
    );
    gateway.shutdown().await
}

/// Likewise the network: a grant with `network: false` must not run cells in an
/// interpreter another grant of its tenant started with the network.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_without_network_cannot_use_an_interpreter_that_has_it() -> Result<()> {
    if sluice_tests::host_report().network.is_none() {
        sluice_tests::skip("no way to take the network away on this host (see `sluice doctor`)");
        return Ok(());
    }
    let dir = KeyDir::new()?;
    let gateway = gateway_with_tokens(&dir, |config| {
        for spec in config.runtimes.iter_mut().filter(|s| s.name == "python") {
            spec.network = true;
        }
    })
    .await?;
    let port = gateway.addr().port();
    let probe = format!(
        "import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), 5).close(); print('connected')\nexcept OSError:\n    print('refused')"
    );
    let mut with = connect_with(&gateway, json!({"sub": "acme"})).await?;
    let events = run_on(&mut with, cell("shared", "w", &probe)).await?;
    ensure!(
        text_of(&events, EventKind::Stdout) == "connected\n",
        "{events:?}"
    );
    let mut without = connect_with(&gateway, json!({"sub": "acme", "network": false})).await?;
    let events = run_on(&mut without, cell("shared", "n", &probe)).await?;
    ensure!(
        text_of(&events, EventKind::Stdout) != "connected\n",
        "a grant without the network reached it from a shared interpreter: {events:?}"
    );
    let last = events.last().context("no events")?;
    ensure!(
        last.kind == EventKind::Error && last.code == Some(ErrorCode::NotPermitted),
        "{last:?}"
    );
    gateway.shutdown().await
}

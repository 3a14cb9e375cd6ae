//! Helpers the credential tests share (`auth`, `redteam`): a directory for key files,
//! tokens signed with the test secret, sockets that present a credential, and running
//! one request to its end. Not tests itself.

use anyhow::{ensure, Context as _, Result};
use serde_json::json;
use sluice_protocol::{ErrorCode, Event, EventKind, ExecuteRequest};
use sluice_tests::{request, unique_marker, RawSocket, TestGateway};
use std::path::PathBuf;

/// The HS256 secret the test gateways accept.
pub(crate) const SECRET: &str = "a test secret that is long enough for HS256 tokens, 48+ bytes";

/// A directory for one test's key files, removed when dropped.
pub(crate) struct KeyDir(pub(crate) PathBuf);

impl KeyDir {
    pub(crate) fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(unique_marker("credentials"));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }

    /// Writes `text` to the file `name` in the directory; its path.
    pub(crate) fn write(&self, name: &str, text: &str) -> Result<PathBuf> {
        let path = self.0.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

impl Drop for KeyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Seconds since the epoch.
pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// An HS256 token of [`SECRET`] with `claims` (an hour's `exp` unless they set one).
pub(crate) fn token(claims: serde_json::Value) -> Result<String> {
    sign(
        claims,
        jsonwebtoken::Algorithm::HS256,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes())?,
    )
}

/// A token with `claims` (an hour's `exp` unless they set one) signed with `key`.
pub(crate) fn sign(
    mut claims: serde_json::Value,
    algorithm: jsonwebtoken::Algorithm,
    key: &jsonwebtoken::EncodingKey,
) -> Result<String> {
    if claims.get("exp").is_none() {
        claims["exp"] = json!(now() + 3600);
    }
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(algorithm),
        &claims,
        key,
    )?)
}

/// A raw socket presenting `credential` as a bearer token.
pub(crate) async fn connect_as(gateway: &TestGateway, credential: &str) -> Result<RawSocket> {
    let bearer = format!("Bearer {credential}");
    RawSocket::connect_with_headers(&gateway.url(), &[("Authorization", &bearer)]).await
}

/// A raw socket presenting a token with `claims`.
pub(crate) async fn connect_with(
    gateway: &TestGateway,
    claims: serde_json::Value,
) -> Result<RawSocket> {
    connect_as(gateway, &token(claims)?).await
}

/// Sends `request` on `socket` and returns its events up to its terminal one.
pub(crate) async fn run_on(socket: &mut RawSocket, request: ExecuteRequest) -> Result<Vec<Event>> {
    let id = request.id.clone();
    socket.execute(request).await?;
    socket.events_until_terminal(&id).await
}

/// `request`, in the named session `session`.
pub(crate) fn in_session(session: &str, request: ExecuteRequest) -> ExecuteRequest {
    ExecuteRequest {
        session: Some(session.into()),
        ..request
    }
}

/// A persistent python cell `id` in `session`.
pub(crate) fn cell(session: &str, id: &str, code: &str) -> ExecuteRequest {
    ExecuteRequest {
        persistent: true,
        ..in_session(session, request(id, "python", code))
    }
}

/// Checks that `events` end with an `error` of `code`; its message.
pub(crate) fn assert_refused(events: &[Event], code: ErrorCode) -> Result<String> {
    let last = events.last().context("no events")?;
    ensure!(
        last.kind == EventKind::Error && last.code == Some(code),
        "expected {code}, got {last:?}"
    );
    Ok(last.data.clone())
}

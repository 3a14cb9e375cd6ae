//! Attacks by an outsider with a socket on authentication, tenants and admission (issue
//! 12's red team): the attacks that got through once, kept so that they never get
//! through again (each test failed before its fix), and a table of forged and ill-typed
//! credentials that must all get 401.

use crate::credentials::{
    assert_refused, cell, connect_with, in_session, run_on, token, KeyDir, SECRET,
};
use anyhow::{ensure, Context as _, Result};
use serde_json::json;
use sluice_gateway::{AuthConfig, Config};
use sluice_protocol::{ErrorCode, EventKind, ExecuteRequest, Limits};
use sluice_tests::{request, text_of, unique_marker, RawSocket, TestGateway};

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
    assert_refused(&events, ErrorCode::NotPermitted)?;
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
    assert_refused(&events, ErrorCode::NotPermitted)?;
    gateway.shutdown().await
}

/// Likewise the language: a cell of a language the grant allows must not run in an
/// interpreter another grant of its tenant started for a language it does not (both
/// of one kind, so a cell of either would run in it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_cannot_use_an_interpreter_of_a_language_its_grant_does_not_allow() -> Result<()> {
    let dir = KeyDir::new()?;
    let gateway = gateway_with_tokens(&dir, |config| {
        let python = config.runtimes.iter().find(|s| s.name == "python").cloned();
        if let Some(mut other) = python {
            other.name = "py-other".into();
            config.runtimes.push(other);
        }
    })
    .await?;
    let mut any = connect_with(&gateway, json!({"sub": "acme"})).await?;
    let events = run_on(&mut any, cell("shared", "a", "x = 1\nprint(x)")).await?;
    ensure!(text_of(&events, EventKind::Stdout) == "1\n", "{events:?}");
    let mut narrow =
        connect_with(&gateway, json!({"sub": "acme", "languages": ["py-other"]})).await?;
    let mut other = cell("shared", "b", "print(x)");
    other.language = "py-other".into();
    let events = run_on(&mut narrow, other).await?;
    let last = events.last().context("no events")?;
    ensure!(
        last.kind == EventKind::Error && last.code == Some(ErrorCode::NotPermitted),
        "a py-other grant ran a cell in a python interpreter: {events:?}"
    );
    gateway.shutdown().await
}

/// An Ed25519 public key (the one `auth.rs` uses), for algorithm confusion: an HS256
/// token whose "secret" is this PEM text must not pass as signed by its owner.
const ED25519_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEA3p7UbIsyJhYSnWeRxWaS1snYCqW/2DJ0DTTgqrFJN4w=
-----END PUBLIC KEY-----
";

/// base64url without padding, as JWTs use.
fn b64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// A token with exactly this header and payload text (duplicate keys, odd types),
/// signed with `key` as `alg`; `None`: an empty signature.
fn forge(
    header: &str,
    payload: &str,
    signer: Option<(&jsonwebtoken::EncodingKey, jsonwebtoken::Algorithm)>,
) -> Result<String> {
    let message = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let signature = match signer {
        None => String::new(),
        Some((key, alg)) => jsonwebtoken::crypto::sign(message.as_bytes(), key, alg)?,
    };
    Ok(format!("{message}.{signature}"))
}

/// Forged, confused or ill-typed credentials: every one gets HTTP 401 before the
/// upgrade, and none of them is echoed in the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_confused_and_ill_typed_credentials_are_refused() -> Result<()> {
    use jsonwebtoken::{Algorithm, EncodingKey};
    let dir = KeyDir::new()?;
    let public = dir.0.join("ed25519.pub");
    std::fs::write(&public, ED25519_PUBLIC)?;
    let keys = dir.0.join("keys");
    let key = "sluice_redteam-key";
    std::fs::write(
        &keys,
        format!("acme {}\n", sluice_gateway::auth::keys::hash_key(key)),
    )?;
    let gateway = gateway_with_tokens(&dir, |config| {
        config.auth.jwt_public_key_file = Some(public.clone());
        config.auth.api_keys_file = Some(keys.clone());
    })
    .await?;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 3600;
    let secret = EncodingKey::from_secret(SECRET.as_bytes())?;
    let hs256 = Some((&secret, Algorithm::HS256));
    let claims = |extra: &str| format!(r#"{{"sub":"acme","exp":{exp}{extra}}}"#);
    let pem_as_secret = EncodingKey::from_secret(ED25519_PUBLIC.as_bytes())?;
    let attackers = EncodingKey::from_secret(b"the attacker's own secret, long enough to sign")?;
    let typ = r#"{"alg":"HS256","typ":"JWT"}"#;
    let mut cases: Vec<(&str, String)> = vec![
        (
            "alg none",
            forge(r#"{"alg":"none","typ":"JWT"}"#, &claims(""), None)?,
        ),
        ("alg None", forge(r#"{"alg":"None"}"#, &claims(""), None)?),
        ("HS256 without a signature", forge(typ, &claims(""), None)?),
        (
            "HS256 keyed with the Ed25519 public key",
            forge(typ, &claims(""), Some((&pem_as_secret, Algorithm::HS256)))?,
        ),
        (
            "HS512 with the right secret",
            forge(
                r#"{"alg":"HS512"}"#,
                &claims(""),
                Some((&secret, Algorithm::HS512)),
            )?,
        ),
        (
            "HS256 signed by the attacker, with kid and jku",
            forge(
                r#"{"alg":"HS256","kid":"../../secret","jku":"http://127.0.0.1:1/jwks"}"#,
                &claims(""),
                Some((&attackers, Algorithm::HS256)),
            )?,
        ),
        (
            "EdDSA header over an HS256 signature",
            forge(r#"{"alg":"EdDSA"}"#, &claims(""), hs256)?,
        ),
    ];
    // Validly signed, but with a tenant name or claims that must fail closed.
    let signed: Vec<(&str, String)> = vec![
        ("an empty sub", format!(r#"{{"sub":"","exp":{exp}}}"#)),
        ("no sub", format!(r#"{{"exp":{exp}}}"#)),
        ("a numeric sub", format!(r#"{{"sub":7,"exp":{exp}}}"#)),
        (
            "a sub with a newline",
            format!(r#"{{"sub":"acme\nevil","exp":{exp}}}"#),
        ),
        (
            "a Cyrillic look-alike sub",
            format!(r#"{{"sub":"аcme","exp":{exp}}}"#),
        ),
        (
            "a 65-character sub",
            format!(r#"{{"sub":"{}","exp":{exp}}}"#, "a".repeat(65)),
        ),
        (
            "a sub with a slash",
            format!(r#"{{"sub":"acme/../beta","exp":{exp}}}"#),
        ),
        (
            "exp as a string",
            r#"{"sub":"acme","exp":"99999999999"}"#.to_owned(),
        ),
        ("exp in the past beyond the leeway", {
            let past = exp - 3600 - 120;
            format!(r#"{{"sub":"acme","exp":{past}}}"#)
        }),
        ("languages as a string", claims(r#","languages":"sh""#)),
        ("network as a string", claims(r#","network":"false""#)),
        ("a negative quota", claims(r#","max_executions":-1"#)),
        ("a fractional quota", claims(r#","max_sessions":1.5"#)),
        ("a quota as a string", claims(r#","max_kernels":"1""#)),
        (
            "a limit as a string",
            claims(r#","limits":{"timeout_ms":"5"}"#),
        ),
        ("sessions as a string", claims(r#","sessions":"u42/*""#)),
        ("limits as a list", claims(r#","limits":[1]"#)),
        // A typo must not leave the limit without the ceiling its issuer meant.
        ("an unknown limit", claims(r#","limits":{"timeout":5}"#)),
    ];
    for (what, payload) in signed {
        cases.push((what, forge(typ, &payload, hs256)?));
    }
    for (what, credential) in &cases {
        let bearer = format!("Bearer {credential}");
        let answer = sluice_tests::refused_upgrade(&gateway.url(), &[("Authorization", &bearer)])
            .await
            .with_context(|| format!("{what}: upgraded"));
        let (status, body) = answer?;
        ensure!(status == 401, "{what}: status {status} ({body:?})");
        ensure!(!body.contains(credential.as_str()), "{what}: echoed");
    }
    // Two Authorization headers with different credentials, and a key with a trailing
    // space and newline glued on by percent-encoding, are refused too.
    let url = gateway.url();
    let doubled = [
        ("Authorization", "Bearer sluice_a"),
        ("Authorization", "Bearer sluice_b"),
    ];
    let (status, _) = sluice_tests::refused_upgrade(&url, &doubled).await?;
    ensure!(status == 401, "two Authorization headers: {status}");
    let (status, _) = sluice_tests::refused_upgrade(&format!("{url}?token={key}%0A"), &[]).await?;
    ensure!(status == 401, "a key with an encoded newline: {status}");
    let (status, _) =
        sluice_tests::refused_upgrade(&format!("{url}?token={key}&token=sluice_other"), &[])
            .await?;
    ensure!(status == 401, "two token parameters: {status}");
    // The real key, and a validly signed token with unknown extra claims, are served.
    let mut by_key =
        RawSocket::connect_with_headers(&url, &[("Authorization", &format!("Bearer {key}"))])
            .await?;
    let events = run_on(&mut by_key, request("k", "sh", "echo ok")).await?;
    ensure!(text_of(&events, EventKind::Stdout) == "ok\n", "{events:?}");
    gateway.shutdown().await
}

/// With `jwt_issuer` and `jwt_audience` configured, a token must carry both: one that
/// leaves `iss` or `aud` out (minted for something else by the same issuer, or by
/// another holder of the key) was accepted, as the JWT library checks those claims
/// only when they are present.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_issuer_and_audience_must_be_in_the_token() -> Result<()> {
    let dir = KeyDir::new()?;
    let gateway = gateway_with_tokens(&dir, |config| {
        config.auth.jwt_issuer = Some("https://idp.example".into());
        config.auth.jwt_audience = Some("sluice".into());
    })
    .await?;
    let iss = "https://idp.example";
    let cases = [
        ("no iss and no aud", json!({"sub": "acme"})),
        ("no aud", json!({"sub": "acme", "iss": iss})),
        ("no iss", json!({"sub": "acme", "aud": "sluice"})),
        (
            "another aud",
            json!({"sub": "acme", "iss": iss, "aud": "billing"}),
        ),
        (
            "another iss",
            json!({"sub": "acme", "iss": "https://evil", "aud": "sluice"}),
        ),
    ];
    for (what, claims) in cases {
        let bearer = format!("Bearer {}", token(claims)?);
        let (status, body) =
            sluice_tests::refused_upgrade(&gateway.url(), &[("Authorization", &bearer)])
                .await
                .with_context(|| format!("{what}: upgraded"))?;
        ensure!(status == 401, "{what}: status {status} ({body:?})");
    }
    let mut served = connect_with(
        &gateway,
        json!({"sub": "acme", "iss": iss, "aud": "sluice"}),
    )
    .await?;
    let events = run_on(&mut served, request("ok", "sh", "echo ok")).await?;
    ensure!(text_of(&events, EventKind::Stdout) == "ok\n", "{events:?}");
    gateway.shutdown().await
}

/// A credential's `cpu_ms` ceiling holds for programs; persistent cells check `cpu_ms`,
/// but a credential's ceiling is not trusted to that check yet, so such a credential gets
/// no cell at all (`not_permitted`) rather than one that might burn past its ceiling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_stays_within_its_credentials_cpu_ceiling() -> Result<()> {
    let dir = KeyDir::new()?;
    let gateway = gateway_with_tokens(&dir, |_| {}).await?;
    let mut socket =
        connect_with(&gateway, json!({"sub": "acme", "limits": {"cpu_ms": 1000}})).await?;
    let burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 3: pass\nprint('burned')";
    let events = run_on(&mut socket, request("p", "python", burn)).await?;
    let last = events.last().context("no events")?;
    ensure!(last.kind == EventKind::ResourceLimit, "a program: {last:?}");
    let events = run_on(&mut socket, cell("cpu", "c", burn)).await?;
    let last = events.last().context("no events")?;
    ensure!(
        last.code == Some(ErrorCode::NotPermitted),
        "a cell ran under a cpu_ms ceiling cells cannot enforce: {last:?}"
    );
    // Nor a query to an interpreter another grant of the tenant started.
    let mut other = connect_with(&gateway, json!({"sub": "acme"})).await?;
    let events = run_on(&mut other, cell("shared", "c", "x = 1")).await?;
    let last = events.last().context("no events")?;
    ensure!(last.kind == EventKind::Completed, "{last:?}");
    socket.attach("shared", None).await?;
    socket
        .next_event_where(|e| e.kind == EventKind::Attached)
        .await?;
    socket
        .send_json(&json!({"type": "complete", "request": "q", "session": "shared", "code": "x", "cursor_pos": 1}))
        .await?;
    let answer = socket
        .next_event_where(|e| e.request.as_deref() == Some("q"))
        .await?;
    ensure!(
        answer.code == Some(ErrorCode::NotPermitted),
        "a query ran under a cpu_ms ceiling: {answer:?}"
    );
    gateway.shutdown().await
}

/// A credential with a `sessions` claim comes back to its own gateway-made session after
/// a reconnect: the claim names the sessions it may open, and the random id of one it
/// opened is no name a rule could match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narrowed_grant_can_resume_its_own_gateway_made_session() -> Result<()> {
    let dir = KeyDir::new()?;
    let gateway = gateway_with_tokens(&dir, |_| {}).await?;
    let claims = json!({"sub": "acme", "sessions": ["u42/*"]});
    let mut first = connect_with(&gateway, claims.clone()).await?;
    first
        .execute(request("e", "sh", "echo up; read line; echo $line"))
        .await?;
    let events = first.wait_for_stdout("e", "up").await?;
    let session = events
        .iter()
        .find_map(|e| e.session.clone())
        .context("no session")?;
    let mut again = connect_with(&gateway, claims).await?;
    again.attach(&session, None).await?;
    let attached = again
        .next_event_where(|e| e.session.is_some() || e.kind == EventKind::Error)
        .await?;
    ensure!(
        attached.kind != EventKind::Error,
        "the reconnected client was refused its own session: {attached:?}"
    );
    first.stdin("e", Some("bye\n"), false).await?;
    first.events_until_terminal("e").await?;
    gateway.shutdown().await
}

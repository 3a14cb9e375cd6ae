//! Authentication and tenants over real sockets: credentials checked before the upgrade
//! (HTTP 401), claims that narrow what a caller may do, tenants that cannot see each
//! other's sessions, per-tenant quotas, and the refusal to serve a public address
//! without authentication.

use crate::credentials::{assert_refused, connect_as, now, run_on, sign, token, KeyDir, SECRET};
use anyhow::{ensure, Context as _, Result};
use serde_json::json;
use sluice_gateway::{AuthConfig, Config};
use sluice_protocol::{ErrorCode, EventKind, ExecuteRequest, Limits};
use sluice_tests::{refused_upgrade, request, unique_marker, RawSocket, TestGateway};
use std::path::Path;

/// An Ed25519 key pair made for these tests only (`openssl genpkey -algorithm ed25519`).
const ED25519_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIB31qzdWiN2lCPpEKV8tOUO6+3RhD3Am1QCCilqQLRNp
-----END PRIVATE KEY-----
";
const ED25519_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEA3p7UbIsyJhYSnWeRxWaS1snYCqW/2DJ0DTTgqrFJN4w=
-----END PUBLIC KEY-----
";

/// Request headers of one refused-upgrade case.
type Headers = Vec<(&'static str, String)>;

/// A gateway accepting the tokens of [`SECRET`], the Ed25519 key's and the API keys in
/// `keys` (tenant, key) pairs.
async fn gateway_with_auth(
    dir: &KeyDir,
    keys: &[(&str, &str)],
    tune: impl FnOnce(&mut Config),
) -> Result<TestGateway> {
    let mut file = String::from("# test keys\n");
    for (tenant, key) in keys {
        file.push_str(&format!(
            "{tenant} {}\n",
            sluice_gateway::auth::keys::hash_key(key)
        ));
    }
    let mut config = Config {
        auth: AuthConfig {
            api_keys_file: Some(dir.write("keys", &file)?),
            jwt_secret_file: Some(dir.write("secret", &format!("{SECRET}\n"))?),
            jwt_public_key_file: Some(dir.write("ed25519.pub", ED25519_PUBLIC)?),
            ..AuthConfig::default()
        },
        ..Config::default()
    };
    tune(&mut config);
    Ok(TestGateway::spawn_with(config).await)
}

fn hello(id: &str) -> ExecuteRequest {
    request(id, "sh", "echo hello")
}

fn assert_completed(events: &[sluice_protocol::Event], stdout: &str) -> Result<()> {
    let last = events.last().context("no events")?;
    ensure!(last.kind == EventKind::Completed, "ended with {last:?}");
    ensure!(
        sluice_tests::text_of(events, EventKind::Stdout) == stdout,
        "stdout {:?}",
        sluice_tests::text_of(events, EventKind::Stdout)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_wrong_expired_and_early_credentials_get_401_before_the_upgrade() -> Result<()> {
    let dir = KeyDir::new()?;
    let key = "sluice_test-key-of-acme";
    let gateway = gateway_with_auth(&dir, &[("acme", key)], |_| {}).await?;
    let url = gateway.url();
    let wrong_secret = sign(
        json!({"sub": "acme"}),
        jsonwebtoken::Algorithm::HS256,
        &jsonwebtoken::EncodingKey::from_secret(
            b"another secret, also long enough to be accepted",
        )?,
    )?;
    let expired = token(json!({"sub": "acme", "exp": now() - 3600}))?;
    let early = token(json!({"sub": "acme", "nbf": now() + 3600}))?;
    let no_exp = {
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes())?;
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &json!({"sub": "acme"}),
            &key,
        )?
    };
    let cases: Vec<(&str, Headers, &str)> = vec![
        ("no credential", vec![], "credential is required"),
        (
            "a wrong key",
            vec![("Authorization", "Bearer sluice_wrong".into())],
            "not valid",
        ),
        (
            "a token of another secret",
            vec![("Authorization", format!("Bearer {wrong_secret}"))],
            "not valid",
        ),
        (
            "an expired token",
            vec![("Authorization", format!("Bearer {expired}"))],
            "expired",
        ),
        (
            "a token not valid yet",
            vec![("Authorization", format!("Bearer {early}"))],
            "not valid yet",
        ),
        (
            "a token without exp",
            vec![("Authorization", format!("Bearer {no_exp}"))],
            "not valid",
        ),
        (
            "not a bearer header",
            vec![("Authorization", format!("Basic {key}"))],
            "malformed",
        ),
        (
            "two different credentials",
            vec![("Authorization", format!("Bearer {key}"))],
            "more than one",
        ),
    ];
    for (what, headers, reason) in cases {
        let mut url = url.clone();
        if what == "two different credentials" {
            url.push_str("?token=sluice_other");
        }
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let (status, body) = refused_upgrade(&url, &headers).await?;
        ensure!(status == 401, "{what}: status {status} ({body:?})");
        ensure!(
            body.contains(reason),
            "{what}: the reason {body:?} lacks {reason:?}"
        );
        // Nothing of the credential comes back.
        ensure!(
            !body.contains("sluice_") && !body.contains("eyJ"),
            "{what}: {body:?}"
        );
    }
    // The same gateway serves each valid credential, by each carrier.
    let mut by_key = connect_as(&gateway, key).await?;
    assert_completed(&run_on(&mut by_key, hello("k")).await?, "hello\n")?;
    let valid = token(json!({"sub": "acme"}))?;
    let offer = format!("{}, sluice.token.{valid}", sluice_protocol::SUBPROTOCOL);
    let mut by_subprotocol =
        RawSocket::connect_with_headers(&url, &[("Sec-WebSocket-Protocol", &offer)]).await?;
    ensure!(
        by_subprotocol.subprotocol() == Some(sluice_protocol::SUBPROTOCOL),
        "the gateway must select sluice.v1, never echo the token: {:?}",
        by_subprotocol.subprotocol()
    );
    assert_completed(&run_on(&mut by_subprotocol, hello("s")).await?, "hello\n")?;
    let mut by_query = RawSocket::connect(&format!("{url}?token={valid}"), None).await?;
    assert_completed(&run_on(&mut by_query, hello("q")).await?, "hello\n")?;
    let ed_key = jsonwebtoken::EncodingKey::from_ed_pem(ED25519_PRIVATE.as_bytes())?;
    let ed_token = sign(
        json!({"sub": "acme"}),
        jsonwebtoken::Algorithm::EdDSA,
        &ed_key,
    )?;
    let mut by_ed25519 = connect_as(&gateway, &ed_token).await?;
    assert_completed(&run_on(&mut by_ed25519, hello("e")).await?, "hello\n")?;
    // Health checks need no credential.
    let (status, _) = sluice_tests::http_get(gateway.addr(), "/healthz").await?;
    ensure!(status == 200, "/healthz answered {status}");
    // Every refusal was counted, and no credential reached the metrics.
    let (status, metrics) = sluice_tests::http_get(gateway.addr(), "/metrics").await?;
    ensure!(status == 200, "/metrics answered {status}");
    ensure!(
        metrics
            .lines()
            .any(|l| l == "sluice_upgrades_refused_total{reason=\"unauthenticated\"} 8"),
        "{metrics}"
    );
    ensure!(!metrics.contains("sluice_test-key") && !metrics.contains("eyJ"));
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tokens_claims_narrow_languages_limits_and_session_names() -> Result<()> {
    let dir = KeyDir::new()?;
    let gateway = gateway_with_auth(&dir, &[], |_| {}).await?;
    let narrow = token(json!({
        "sub": "student",
        "languages": ["sh"],
        "limits": {"timeout_ms": 1000, "output_bytes": 5},
        "sessions": ["course-7/*", "scratch"],
    }))?;
    let mut socket = connect_as(&gateway, &narrow).await?;
    let refused = run_on(&mut socket, request("py", "python", "print(1)")).await?;
    let message = assert_refused(&refused, ErrorCode::NotPermitted)?;
    ensure!(
        message.contains("sh"),
        "the refusal should say what is allowed: {message}"
    );
    let above = ExecuteRequest {
        limits: Limits {
            timeout_ms: Some(5_000),
            ..Limits::default()
        },
        ..hello("above")
    };
    let message = assert_refused(&run_on(&mut socket, above).await?, ErrorCode::InvalidLimit)?;
    ensure!(message.contains("1000"), "{message}");
    // With no limit named, the ceilings are the defaults: 5 bytes of output, 1 s.
    let cut = run_on(&mut socket, request("cut", "sh", "echo 0123456789")).await?;
    let last = cut.last().context("no events")?;
    ensure!(last.kind == EventKind::ResourceLimit, "{last:?}");
    ensure!(sluice_tests::text_of(&cut, EventKind::Stdout) == "01234");
    let slow = run_on(&mut socket, request("slow", "sh", "sleep 30")).await?;
    let last = slow.last().context("no events")?;
    ensure!(
        last.kind == EventKind::ResourceLimit
            && last.limit == Some(sluice_protocol::LimitKind::Timeout),
        "{last:?}"
    );
    // Session names: a prefix rule and an exact one.
    let inside = ExecuteRequest {
        session: Some("course-7/alice".into()),
        ..request("in", "sh", "echo in")
    };
    assert_completed(&run_on(&mut socket, inside).await?, "in\n")?;
    for name in ["course-8/alice", "scratch2", "course-7"] {
        let outside = ExecuteRequest {
            session: Some(name.into()),
            ..request(&format!("out-{name}"), "sh", "echo out")
        };
        assert_refused(
            &run_on(&mut socket, outside).await?,
            ErrorCode::NotPermitted,
        )?;
        socket.attach(name, None).await?;
        let error = socket.next_socket_error().await?;
        ensure!(error.code == Some(ErrorCode::NotPermitted), "{error:?}");
    }
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_network_takes_it_from_a_runtime_that_has_it() -> Result<()> {
    if sluice_tests::host_report().network.is_none() {
        sluice_tests::skip("no way to take the network away on this host (see `sluice doctor`)");
        return Ok(());
    }
    let dir = KeyDir::new()?;
    let gateway = gateway_with_auth(&dir, &[], |config| {
        for spec in config.runtimes.iter_mut().filter(|s| s.name == "bash") {
            spec.network = true;
        }
    })
    .await?;
    let port = gateway.addr().port();
    let probe =
        format!("if exec 3<>/dev/tcp/127.0.0.1/{port}; then echo connected; else echo refused; fi");
    let mut with = connect_as(&gateway, &token(json!({"sub": "a"}))?).await?;
    assert_completed(
        &run_on(&mut with, request("n", "bash", &probe)).await?,
        "connected\n",
    )?;
    let mut without = connect_as(&gateway, &token(json!({"sub": "a", "network": false}))?).await?;
    let events = run_on(&mut without, request("n", "bash", &probe)).await?;
    ensure!(
        sluice_tests::text_of(&events, EventKind::Stdout) == "refused\n",
        "{events:?}"
    );
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenant_cannot_see_attach_feed_or_cancel_a_session() -> Result<()> {
    let dir = KeyDir::new()?;
    let gateway = gateway_with_auth(
        &dir,
        &[("alice", "sluice_alice"), ("bob", "sluice_bob")],
        |_| {},
    )
    .await?;
    let mut alice = connect_as(&gateway, "sluice_alice").await?;
    let mut bob = connect_as(&gateway, "sluice_bob").await?;
    let marker = unique_marker("auth");
    // Alice's program waits for input in her session "shared".
    let waiting = ExecuteRequest {
        session: Some("shared".into()),
        ..request(
            "w",
            "sh",
            &format!("echo {marker}; read line; echo got $line"),
        )
    };
    alice.execute(waiting).await?;
    alice.wait_for_stdout("w", &marker).await?;
    // Bob: attach, stdin and cancel naming it are refused as if it did not exist.
    bob.attach("shared", None).await?;
    let error = bob.next_socket_error().await?;
    ensure!(error.code == Some(ErrorCode::UnknownSession), "{error:?}");
    bob.send_json(&json!({"type": "stdin", "id": "w", "session": "shared", "data": "bob\n"}))
        .await?;
    let error = bob.next_socket_error().await?;
    ensure!(error.code == Some(ErrorCode::UnknownSession), "{error:?}");
    bob.send_json(&json!({"type": "cancel", "id": "w", "session": "shared"}))
        .await?;
    let error = bob.next_socket_error().await?;
    ensure!(error.code == Some(ErrorCode::UnknownSession), "{error:?}");
    // Bob executing in "shared" gets a session of his own: same name, never met.
    let his = ExecuteRequest {
        session: Some("shared".into()),
        ..request("w", "sh", "echo bobs")
    };
    assert_completed(&run_on(&mut bob, his).await?, "bobs\n")?;
    // Alice's program is untouched: it still waits, and gets her input.
    alice.stdin("w", Some("alice\n"), false).await?;
    let events = alice.events_until_terminal("w").await?;
    // (Her marker was taken by the wait above.)
    assert_completed(&events, "got alice\n")?;
    ensure!(
        !alice.received().iter().any(|e| e.data.contains("bobs")),
        "alice saw bob's output"
    );
    // A gateway-made session's id is no key across tenants either.
    alice
        .execute(request("lone", "sh", "echo lone; sleep 30"))
        .await?;
    let started = alice.wait_for_stdout("lone", "lone").await?;
    let session = started
        .iter()
        .find_map(|e| e.session.clone())
        .context("no session on alice's events")?;
    bob.attach(&session, None).await?;
    let error = bob.next_socket_error().await?;
    ensure!(error.code == Some(ErrorCode::UnknownSession), "{error:?}");
    alice.cancel("lone").await?;
    alice.events_until_terminal("lone").await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_quotas_refuse_cleanly_and_leave_other_tenants_served() -> Result<()> {
    let dir = KeyDir::new()?;
    let gateway = gateway_with_auth(&dir, &[("quiet", "sluice_quiet")], |config| {
        config.max_executions = 8;
        config.max_executions_per_peer = Some(4);
    })
    .await?;
    // A token asking for more than the gateway's per-tenant cap gets the cap (4); one
    // asking for less gets its own.
    let greedy = token(json!({"sub": "greedy", "max_executions": 100}))?;
    let mut noisy = connect_as(&gateway, &greedy).await?;
    for n in 0..4 {
        noisy
            .execute(request(
                &format!("spin{n}"),
                "sh",
                "echo up; while :; do :; done",
            ))
            .await?;
        noisy.wait_for_stdout(&format!("spin{n}"), "up").await?;
    }
    let refused = run_on(&mut noisy, hello("fifth")).await?;
    let message = assert_refused(&refused, ErrorCode::TooManyExecutions)?;
    ensure!(
        message.contains("tenant greedy") && message.contains('4'),
        "{message}"
    );
    // Sessions: a claim of one session open at a time.
    let few = token(json!({"sub": "few", "max_sessions": 1}))?;
    let mut few = connect_as(&gateway, &few).await?;
    let first = ExecuteRequest {
        session: Some("first".into()),
        ..request("held", "sh", "echo up; sleep 30")
    };
    few.execute(first).await?;
    few.wait_for_stdout("held", "up").await?;
    let second = ExecuteRequest {
        session: Some("second".into()),
        ..hello("second")
    };
    let message = assert_refused(&run_on(&mut few, second).await?, ErrorCode::TooManySessions)?;
    ensure!(message.contains("tenant few has 1 sessions"), "{message}");
    // Another tenant is served while the first holds its whole quota.
    let mut quiet = connect_as(&gateway, "sluice_quiet").await?;
    assert_completed(&run_on(&mut quiet, hello("quiet")).await?, "hello\n")?;
    // A narrower claim holds its tenant below the gateway's cap.
    let one = token(json!({"sub": "single", "max_executions": 1}))?;
    let mut single = connect_as(&gateway, &one).await?;
    single
        .execute(request("a", "sh", "echo up; sleep 30"))
        .await?;
    single.wait_for_stdout("a", "up").await?;
    assert_refused(
        &run_on(&mut single, hello("b")).await?,
        ErrorCode::TooManyExecutions,
    )?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_address_without_authentication_refuses_to_start() -> Result<()> {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await?;
    let result = sluice_gateway::run(listener, Config::default(), std::future::pending()).await;
    let err = result
        .err()
        .context("the gateway served 0.0.0.0 without authentication")?;
    let message = err.to_string();
    ensure!(
        message.contains("without authentication")
            && message.contains("--api-keys")
            && message.contains("--insecure-no-auth"),
        "{message}"
    );
    // Told so explicitly, it serves.
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await?;
    let addr = listener.local_addr()?;
    let config = Config {
        auth: AuthConfig {
            insecure_no_auth: true,
            ..AuthConfig::default()
        },
        ..Config::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(sluice_gateway::run(listener, config, async move {
        let _ = stopped.await;
    }));
    let url = format!("ws://127.0.0.1:{}{}", addr.port(), sluice_protocol::WS_PATH);
    let mut socket = RawSocket::connect(&url, None).await?;
    assert_completed(&run_on(&mut socket, hello("h")).await?, "hello\n")?;
    socket.close().await?;
    let _ = stop.send(());
    served.await??;
    // Nor metrics beyond loopback without their token.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let config = Config {
        metrics_listen: Some("0.0.0.0:0".parse()?),
        ..Config::default()
    };
    let err = sluice_gateway::run(listener, config, std::future::pending())
        .await
        .err()
        .context("metrics were served on 0.0.0.0 without a token")?;
    ensure!(err.to_string().contains("--metrics-token-file"), "{err}");
    // A key file that does not load stops the start with its path.
    let missing = Path::new("/nonexistent/sluice-keys");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let config = Config {
        auth: AuthConfig {
            api_keys_file: Some(missing.to_owned()),
            ..AuthConfig::default()
        },
        ..Config::default()
    };
    let err = sluice_gateway::run(listener, config, std::future::pending())
        .await
        .err()
        .context("a missing key file was accepted")?;
    ensure!(
        err.to_string().contains("/nonexistent/sluice-keys"),
        "{err}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_closes_when_its_token_expires_and_its_session_lives_on() -> Result<()> {
    let dir = KeyDir::new()?;
    let gateway = gateway_with_auth(&dir, &[], |_| {}).await?;
    // Expired 20 s ago: still inside the 30 s leeway, for 10 s more (room for a slow
    // machine to connect and start the program before the close).
    let nearly = token(json!({"sub": "acme", "exp": now() - 20}))?;
    let mut socket = connect_as(&gateway, &nearly).await?;
    let waiting = ExecuteRequest {
        session: Some("kept".into()),
        ..request("w", "sh", "echo up; read line; echo got $line")
    };
    socket.execute(waiting).await?;
    socket.wait_for_stdout("w", "up").await?;
    let close = socket.closed().await?.context("no close frame")?;
    ensure!(
        u16::from(close.code) == 1008 && close.reason.contains("expired"),
        "{close:?}"
    );
    // The same token no longer opens a socket; a fresh one finds the session running.
    let url = gateway.url();
    let (status, body) =
        refused_upgrade(&url, &[("Authorization", &format!("Bearer {nearly}"))]).await?;
    ensure!(status == 401 && body.contains("expired"), "{status} {body}");
    let mut fresh = connect_as(&gateway, &token(json!({"sub": "acme"}))?).await?;
    fresh.attach("kept", None).await?;
    fresh.wait_for_stdout("w", "up").await?;
    let stdin = json!({"type": "stdin", "id": "w", "session": "kept", "data": "again\n"});
    fresh.send_json(&stdin).await?;
    let events = fresh.events_until_terminal("w").await?;
    assert_completed(&events, "got again\n")?;
    gateway.shutdown().await
}

/// The count of `sluice_credential_reloads_total{result="RESULT"}` on `/metrics`.
async fn reloads(addr: std::net::SocketAddr, result: &str) -> Result<u64> {
    let (_, metrics) = sluice_tests::http_get(addr, "/metrics").await?;
    let series = format!("sluice_credential_reloads_total{{result=\"{result}\"}} ");
    Ok(metrics
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0))
}

/// Waits until `/metrics` counts `count` reloads with `result`.
async fn until_reloads(addr: std::net::SocketAddr, result: &str, count: u64) -> Result<()> {
    sluice_tests::poll_until("the reload is counted", async || {
        Ok((reloads(addr, result).await? >= count).then_some(()))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_revokes_a_removed_key_and_a_broken_file_keeps_the_old_ones() -> Result<()> {
    let dir = KeyDir::new()?;
    let line = |tenant: &str, key: &str| {
        format!("{tenant} {}\n", sluice_gateway::auth::keys::hash_key(key))
    };
    let keys = dir.write("keys", &line("alice", "sluice_alice"))?;
    let mut config = Config {
        auth: AuthConfig {
            api_keys_file: Some(keys.clone()),
            ..AuthConfig::default()
        },
        ..Config::default()
    };
    if let Some(level) = sluice_tests::forced_isolation() {
        config.isolation = level;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let url = format!("ws://{addr}{}", sluice_protocol::WS_PATH);
    let (signals, stream) = futures::channel::mpsc::unbounded();
    let served = tokio::spawn(sluice_gateway::run_with_signals(listener, config, stream));
    let bearer = |key: &str| format!("Bearer {key}");
    let mut alice =
        RawSocket::connect_with_headers(&url, &[("Authorization", &bearer("sluice_alice"))])
            .await?;
    assert_completed(&run_on(&mut alice, hello("a1")).await?, "hello\n")?;

    // Alice's key removed, Bob's added: new connections see the new file.
    std::fs::write(&keys, line("bob", "sluice_bob"))?;
    signals.unbounded_send(sluice_gateway::Signal::Reload)?;
    until_reloads(addr, "ok", 1).await?;
    let (status, _) = refused_upgrade(&url, &[("Authorization", &bearer("sluice_alice"))]).await?;
    ensure!(status == 401, "a removed key still connects: {status}");
    let mut bob =
        RawSocket::connect_with_headers(&url, &[("Authorization", &bearer("sluice_bob"))]).await?;
    assert_completed(&run_on(&mut bob, hello("b1")).await?, "hello\n")?;
    // A socket opened before keeps the grant it was given.
    assert_completed(&run_on(&mut alice, hello("a2")).await?, "hello\n")?;

    // A file that does not load leaves the credentials as they were.
    std::fs::write(&keys, "bob not-a-hash\n")?;
    signals.unbounded_send(sluice_gateway::Signal::Reload)?;
    until_reloads(addr, "failed", 1).await?;
    let mut again =
        RawSocket::connect_with_headers(&url, &[("Authorization", &bearer("sluice_bob"))]).await?;
    assert_completed(&run_on(&mut again, hello("b2")).await?, "hello\n")?;

    signals.unbounded_send(sluice_gateway::Signal::Stop)?;
    sluice_tests::within("the gateway to stop", served)
        .await?
        .context("the gateway task panicked")?
        .context("the gateway returned an error")
}

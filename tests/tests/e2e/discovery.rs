//! Runtime discovery (issue 14): the `runtimes` frame and `GET /v1/runtimes` list every
//! language the caller may run, with its interpreter's version, its source file, whether
//! it runs persistently or on a terminal, and each limit's default and maximum, narrowed
//! to the caller's credential; the Rust client's `runtimes()` returns the same.

use crate::credentials::{connect_as, token, KeyDir, SECRET};
use anyhow::{ensure, Context as _, Result};
use serde_json::json;
use sluice_gateway::{AuthConfig, Config};
use sluice_protocol::{Catalog, ClientFrame, EventKind, LimitRange, RuntimesFrame};
use sluice_tests::{http_get, http_get_with, request, RawSocket, TestGateway};

/// Sends a `runtimes` frame and returns the catalog its answer carries.
async fn ask(socket: &mut RawSocket) -> Result<Catalog> {
    socket
        .send_frame(&ClientFrame::Runtimes(RuntimesFrame {}))
        .await?;
    let event = socket
        .next_event_where(|e| e.kind == EventKind::Runtimes)
        .await?;
    ensure!(event.id.is_none() && event.session.is_none(), "{event:?}");
    event
        .catalog()
        .context("a runtimes event without its catalog")
}

fn body(text: &str) -> Result<Catalog> {
    serde_json::from_str(text).with_context(|| format!("GET /v1/runtimes answered {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_language_is_listed_with_its_version_file_and_limits() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    // Asked while an execution runs on the same socket: its events go on.
    socket
        .execute(request("busy", "sh", "read line; echo \"got $line\""))
        .await?;
    socket
        .next_event_where(|e| e.kind == EventKind::Started)
        .await?;
    let catalog = ask(&mut socket).await?;
    socket.stdin("busy", Some("x\n"), true).await?;
    let events = socket.events_until_terminal("busy").await?;
    assert_eq!(sluice_tests::text_of(&events, EventKind::Stdout), "got x\n");

    let names: Vec<&str> = catalog
        .runtimes
        .iter()
        .map(|r| r.language.as_str())
        .collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted, "sorted by name");
    for language in ["bash", "python", "sh"] {
        ensure!(
            names.contains(&language),
            "{language} missing from {names:?}"
        );
    }
    let python = catalog
        .runtimes
        .iter()
        .find(|r| r.language == "python")
        .context("python")?;
    assert_eq!(
        (python.file_name.as_str(), python.extension.as_str()),
        ("main.py", "py")
    );
    // Offline by default where the gateway can take the network: in the jail, and
    // with cgroups alone as root (an empty network namespace before the exec); with
    // isolation off a program keeps the host's.
    let offline = match sluice_tests::forced_isolation() {
        Some(sluice_gateway::Isolation::None) => false,
        Some(sluice_gateway::Isolation::Cgroups) => sluice_tests::host_report().root,
        _ => true,
    };
    ensure!(
        python.persistent && python.tty && python.network != offline,
        "{python:?}"
    );
    let version = python.version.as_deref().unwrap_or_default();
    ensure!(
        version.starts_with("Python 3."),
        "python's version {version:?}"
    );
    let sh = catalog
        .runtimes
        .iter()
        .find(|r| r.language == "sh")
        .context("sh")?;
    ensure!(!sh.persistent && sh.extension == "sh", "{sh:?}");
    // Every limit a request may name, with the gateway's ranges.
    let limits = Config::default().limits;
    assert_eq!(catalog.limits.len(), 8, "{:?}", catalog.limits);
    assert_eq!(
        catalog.limits["timeout_ms"],
        LimitRange {
            default: limits.timeout_ms.default,
            max: limits.timeout_ms.max,
        }
    );
    assert_eq!(catalog.limits["memory_bytes"].max, limits.memory_bytes.max);

    // The same over HTTP and through the Rust client.
    let (status, text) = http_get(gateway.addr(), sluice_protocol::RUNTIMES_PATH).await?;
    assert_eq!(status, 200, "{text}");
    assert_eq!(body(&text)?, catalog);
    let client = gateway.client().await?;
    assert_eq!(client.runtimes().await?, catalog);
    client.close().await?;
    // Asked again, the answer is the same (versions are asked of each interpreter once).
    assert_eq!(ask(&mut socket).await?, catalog);
    sluice_tests::assert_stream_ok(socket.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_narrows_what_is_listed_and_http_needs_it_too() -> Result<()> {
    let dir = KeyDir::new()?;
    let gateway = TestGateway::spawn_with(Config {
        auth: AuthConfig {
            jwt_secret_file: Some(dir.write("secret", &format!("{SECRET}\n"))?),
            ..AuthConfig::default()
        },
        ..Config::default()
    })
    .await;
    let narrow = token(json!({
        "sub": "student",
        "languages": ["sh", "cobol"],
        "network": false,
        "limits": {"timeout_ms": 5000, "memory_bytes": 67108864},
    }))?;
    let mut socket = connect_as(&gateway, &narrow).await?;
    let catalog = ask(&mut socket).await?;
    let names: Vec<&str> = catalog
        .runtimes
        .iter()
        .map(|r| r.language.as_str())
        .collect();
    assert_eq!(names, ["sh"], "only the granted languages the gateway has");
    assert_eq!(
        catalog.limits["timeout_ms"],
        LimitRange {
            default: 5000,
            max: 5000
        }
    );
    assert_eq!(catalog.limits["memory_bytes"].max, 64 << 20);
    let defaults = Config::default().limits;
    assert_eq!(catalog.limits["cpu_ms"].max, defaults.cpu_ms.max);

    // HTTP asks for the same credential as the socket.
    let path = sluice_protocol::RUNTIMES_PATH;
    let (status, text) = http_get(gateway.addr(), path).await?;
    assert_eq!(status, 401, "{text}");
    let bearer = format!("Bearer {narrow}");
    let (status, text) =
        http_get_with(gateway.addr(), path, &[("Authorization", bearer.as_str())]).await?;
    assert_eq!(status, 200, "{text}");
    assert_eq!(body(&text)?, catalog);
    let wide = token(json!({"sub": "teacher"}))?;
    let mut teacher = connect_as(&gateway, &wide).await?;
    ensure!(
        ask(&mut teacher).await?.runtimes.len() > 1,
        "the wide token sees more"
    );
    gateway.shutdown().await
}

//! Outside review of runtime discovery (the `runtimes` frame, `GET /v1/runtimes`): an
//! interpreter whose `--version` leaves a child holding its output, version text with
//! terminal escapes, the `network` a caller is told, and the origin check on the HTTP
//! route.

use anyhow::{ensure, Context as _, Result};
use sluice_gateway::{Config, Isolation, Network, RuntimeSpec};
use sluice_protocol::{Catalog, ClientFrame, EventKind, RuntimeInfo, RuntimesFrame};
use sluice_tests::{http_get_with, request, unique_marker, RawSocket, TestGateway};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// A directory of interpreter scripts for one test, removed when dropped (after any
/// child still blocked on its FIFO is let go).
struct Scripts {
    dir: PathBuf,
}

impl Scripts {
    fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(unique_marker("review-discovery"));
        std::fs::create_dir_all(&dir)?;
        // Readable by whichever user the versions are asked as.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        Ok(Self { dir })
    }

    /// An executable shell script `name` holding `body`; its path.
    fn script(&self, name: &str, body: &str) -> Result<PathBuf> {
        let path = self.dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n"))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        Ok(path)
    }

    /// A FIFO `name` (a child blocked opening it waits until [`Scripts::release`]).
    fn fifo(&self, name: &str) -> Result<PathBuf> {
        let path = self.dir.join(name);
        let status = std::process::Command::new("mkfifo")
            .arg("-m")
            .arg("0666")
            .arg(&path)
            .status()?;
        ensure!(status.success(), "mkfifo {}", path.display());
        Ok(path)
    }

    /// Lets every child blocked reading a FIFO of this directory go (an end of file).
    fn release(&self) {
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "fifo") {
                // Non-blocking: with no reader left, this fails at once (ENXIO).
                let _ = std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc_o_nonblock())
                    .open(&path);
            }
        }
    }
}

impl Drop for Scripts {
    fn drop(&mut self) {
        self.release();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `O_NONBLOCK` on Linux.
const fn libc_o_nonblock() -> i32 {
    0o4000
}

/// A configured (not optional) runtime `name` run by `program`.
fn runtime(name: &str, program: &Path) -> RuntimeSpec {
    RuntimeSpec {
        name: name.into(),
        program: program.to_string_lossy().into_owned(),
        args: vec![sluice_gateway::FILE_PLACEHOLDER.into()],
        file_name: "main.sh".into(),
        env: Vec::new(),
        locate: None,
        optional: false,
        network: false,
        package_index: None,
    }
}

/// Sends a `runtimes` frame and returns the catalog its answer carries.
async fn ask(socket: &mut RawSocket) -> Result<Catalog> {
    socket
        .send_frame(&ClientFrame::Runtimes(RuntimesFrame {}))
        .await?;
    socket
        .next_event_where(|e| e.kind == EventKind::Runtimes)
        .await?
        .catalog()
        .context("a runtimes event without its catalog")
}

fn find<'a>(catalog: &'a Catalog, language: &str) -> Result<&'a RuntimeInfo> {
    catalog
        .runtimes
        .iter()
        .find(|r| r.language == language)
        .with_context(|| format!("{language} missing from {:?}", catalog.runtimes))
}

/// Found: an interpreter whose `--version` prints its version and exits, leaving a
/// child (in its process group, or one that left it) that keeps stdout open. The 2 s
/// deadline covered only the wait for the exit, not reading the output: the answer
/// waited for the child, holding the versions' lock meanwhile, so this socket's reader
/// stopped (its `cancel` was never read) and every other caller's `runtimes` (frame or
/// `GET /v1/runtimes`) hung too, each holding a blocking thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_whose_child_keeps_the_output_open_does_not_stall_the_socket() -> Result<()> {
    let scripts = Scripts::new()?;
    let held = scripts.fifo("held.fifo")?;
    let escaped = scripts.fifo("escaped.fifo")?;
    let ready = scripts.fifo("ready.fifo")?;
    let lingering = scripts.script(
        "lingering",
        &format!(
            "if [ \"$1\" = --version ]; then echo 'Lingering 1.0'; cat {} & exit 0; fi\nexec sh \"$@\"",
            held.display()
        ),
    )?;
    let escaping = scripts.script(
        "escaping",
        &format!(
            // The child says it has left the group before the program exits.
            "if [ \"$1\" = --version ]; then echo 'Escaping 2.0'; setsid sh -c 'echo >{ready}; exec cat {escaped}' & read x <{ready}; exit 0; fi\nexec sh \"$@\"",
            ready = ready.display(),
            escaped = escaped.display()
        ),
    )?;
    let mut runtimes = RuntimeSpec::defaults();
    runtimes.push(runtime("lingering", &lingering));
    runtimes.push(runtime("escaping", &escaping));
    let gateway = TestGateway::spawn_with(Config {
        runtimes,
        ..Config::default()
    })
    .await;
    let result = async {
        let mut socket = gateway.raw().await?;
        socket
            .execute(request("waiting", "sh", "read line; echo never"))
            .await?;
        socket
            .next_event_where(|e| e.kind == EventKind::Started)
            .await?;
        socket
            .send_frame(&ClientFrame::Runtimes(RuntimesFrame {}))
            .await?;
        socket.cancel("waiting").await?;
        let answer = socket
            .next_event_where(|e| e.kind == EventKind::Runtimes)
            .await?;
        let events = socket.events_until_terminal("waiting").await?;
        let terminal = events.last().context("no terminal")?;
        assert_eq!(terminal.kind, EventKind::Cancelled, "{terminal:?}");
        let catalog = answer.catalog().context("no catalog")?;
        // What each printed before it exited still counts.
        assert_eq!(
            find(&catalog, "lingering")?.version.as_deref(),
            Some("Lingering 1.0")
        );
        assert_eq!(
            find(&catalog, "escaping")?.version.as_deref(),
            Some("Escaping 2.0")
        );
        // Another caller is not held up either.
        let (status, text) =
            http_get_with(gateway.addr(), sluice_protocol::RUNTIMES_PATH, &[]).await?;
        assert_eq!(status, 200, "{text}");
        anyhow::Ok(())
    }
    .await;
    // Whatever happened, let the children go before the gateway stops.
    scripts.release();
    gateway.shutdown().await?;
    result
}

/// Found: a version line is handed on as the interpreter printed it, terminal escapes
/// and control characters included (into every client, and onto the operator's
/// terminal through `sluice doctor`); and output that is not UTF-8 lost the version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_carries_no_terminal_escapes_or_control_characters() -> Result<()> {
    let scripts = Scripts::new()?;
    let colourful = scripts.script(
        "colourful",
        "printf '\\033]0;owned\\007\\033[1;31mColour\\033[0m 3.1\\r\\033[2K\\tbeta\\001\\n'",
    )?;
    let latin1 = scripts.script("latin1", "printf 'Latin \\251 1.0\\n'")?;
    let mut runtimes = RuntimeSpec::defaults();
    runtimes.push(runtime("colourful", &colourful));
    runtimes.push(runtime("latin1", &latin1));
    let gateway = TestGateway::spawn_with(Config {
        runtimes,
        ..Config::default()
    })
    .await;
    let mut socket = gateway.raw().await?;
    let catalog = ask(&mut socket).await;
    gateway.shutdown().await?;
    let catalog = catalog?;
    let version = find(&catalog, "colourful")?
        .version
        .clone()
        .context("no version")?;
    ensure!(
        !version.chars().any(char::is_control),
        "control characters in {version:?}"
    );
    assert_eq!(version, "Colour 3.1 beta");
    assert_eq!(
        find(&catalog, "latin1")?.version.as_deref(),
        Some("Latin \u{fffd} 1.0")
    );
    Ok(())
}

/// Found: `network` said `false` for every runtime of a gateway whose programs all keep
/// the host's network (`--network on`), where PROTOCOL.md says it tells whether "its
/// programs may reach the network".
/// The network interfaces a `sh` program sees (`/proc/net/dev`).
async fn interfaces_seen(socket: &mut RawSocket) -> Result<u32> {
    socket
        .execute(request("net", "sh", "tail -n +3 /proc/net/dev | wc -l"))
        .await?;
    let events = socket.events_until_terminal("net").await?;
    Ok(sluice_tests::text_of(&events, EventKind::Stdout)
        .trim()
        .parse()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_says_what_the_programs_get() -> Result<()> {
    let gateway = TestGateway::spawn_with(Config {
        network: Network::On,
        ..Config::default()
    })
    .await;
    let result = async {
        let mut socket = gateway.raw().await?;
        let catalog = ask(&mut socket).await?;
        // What a program sees: more interfaces than the loopback one.
        let interfaces = interfaces_seen(&mut socket).await?;
        anyhow::Ok((catalog, interfaces))
    }
    .await;
    gateway.shutdown().await?;
    let (catalog, interfaces) = result?;
    if interfaces < 2 {
        sluice_tests::skip("this host has no network beyond loopback");
        return Ok(());
    }
    let sh = find(&catalog, "sh")?;
    ensure!(
        sh.network,
        "programs have the network, the catalog says {sh:?}"
    );
    Ok(())
}

/// Found: `GET /v1/runtimes` ignored `Origin`, which the WebSocket endpoint checks: a
/// page of any origin could ask (and, with the credential in `?token=`, be answered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_origin_is_refused_on_the_http_route_as_on_the_socket() -> Result<()> {
    let gateway = TestGateway::spawn_with(Config {
        allowed_origins: vec!["https://ide.example".into()],
        ..Config::default()
    })
    .await;
    let path = sluice_protocol::RUNTIMES_PATH;
    let foreign = http_get_with(gateway.addr(), path, &[("Origin", "https://evil.example")]).await;
    let twice = http_get_with(
        gateway.addr(),
        path,
        &[
            ("Origin", "https://ide.example"),
            ("Origin", "https://evil.example"),
        ],
    )
    .await;
    let allowed = http_get_with(gateway.addr(), path, &[("Origin", "https://ide.example")]).await;
    gateway.shutdown().await?;
    let (status, text) = foreign?;
    assert_eq!(status, 403, "{text}");
    ensure!(!text.contains("runtimes\""), "{text}");
    assert_eq!(twice?.0, 400);
    let (status, text) = allowed?;
    assert_eq!(status, 200, "{text}");
    Ok(())
}

/// Found (Medium, older than discovery, fixed): a credential's `network: false` did not
/// take the network away on a gateway started with `--network on`: the launch only
/// dropped a runtime's own `--allow-network`, and the jail (or the unjailed start) kept
/// the host's network for every program. SECURITY.md says such a tenant gets "no
/// network". Now the program gets a network namespace of its own, jailed or (as root)
/// not, in a plain execution and in a persistent cell; discovery says `network: false`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_without_network_gets_none_under_network_on() -> Result<()> {
    for isolation in [Isolation::Namespaces, Isolation::None] {
        if isolation == Isolation::Namespaces && !crate::isolation::jail_available() {
            continue;
        }
        if isolation == Isolation::None && !sluice_tests::host_report().root {
            // Without root and the jail a program's network cannot be taken away: such
            // a credential runs nothing there (the next test's case).
            continue;
        }
        offline_under_network_on(isolation).await?;
    }
    Ok(())
}

async fn offline_under_network_on(isolation: Isolation) -> Result<()> {
    use crate::credentials::{connect_as, token, KeyDir, SECRET};
    let dir = KeyDir::new()?;
    let gateway = TestGateway::spawn_with(Config {
        network: Network::On,
        isolation,
        auth: sluice_gateway::AuthConfig {
            jwt_secret_file: Some(dir.write("secret", &format!("{SECRET}\n"))?),
            ..sluice_gateway::AuthConfig::default()
        },
        ..Config::default()
    })
    .await;
    let result = async {
        let offline = token(serde_json::json!({"sub": "offline", "network": false}))?;
        let mut socket = connect_as(&gateway, &offline).await?;
        let catalog = ask(&mut socket).await?;
        let interfaces = interfaces_seen(&mut socket).await?;
        // A persistent cell's interpreter too.
        socket
            .execute(sluice_protocol::ExecuteRequest {
                session: Some("offline-cell".into()),
                persistent: true,
                ..request(
                    "cell",
                    "python",
                    "print(len(open('/proc/net/dev').read().splitlines()) - 2)",
                )
            })
            .await?;
        let events = socket.events_until_terminal("cell").await?;
        let cell: u32 = sluice_tests::text_of(&events, EventKind::Stdout)
            .trim()
            .parse()
            .with_context(|| format!("{events:?}"))?;
        anyhow::Ok((catalog, interfaces, cell))
    }
    .await;
    gateway.shutdown().await?;
    let (catalog, interfaces, cell) = result?;
    assert_eq!(interfaces, 1, "{isolation:?}: only the loopback interface");
    assert_eq!(
        cell, 1,
        "{isolation:?}: a cell has only the loopback interface"
    );
    ensure!(!find(&catalog, "sh")?.network, "{:?}", catalog.runtimes);
    Ok(())
}

//! Outside review of a credential's `network: false` on a gateway that gives programs
//! the host's network (`--network on`): the warm pools and a session's persistent
//! interpreter, which a request of such a credential can reach besides its own start.
//! Each program reports its network namespace, compared with the test process's own
//! (the host's): a count of interfaces would prove nothing on a host with loopback only.

use crate::credentials::{assert_refused, cell, connect_with, run_on, KeyDir, SECRET};
use anyhow::{ensure, Context as _, Result};
use serde_json::json;
use sluice_gateway::{AuthConfig, Config, Isolation, Network};
use sluice_protocol::{ErrorCode, EventKind};
use sluice_tests::{request, text_of, TestGateway};

/// The host's network namespace, as `/proc/self/ns/net` names it.
fn host_namespace() -> Result<String> {
    Ok(std::fs::read_link("/proc/self/ns/net")?
        .to_string_lossy()
        .into_owned())
}

const SHOW_SH: &str = "readlink /proc/self/ns/net";
const SHOW_PY: &str = "import os\nprint(os.readlink('/proc/self/ns/net'))";

/// A `--network on` gateway taking HS256 tokens of [`SECRET`], tuned by `tune`.
async fn network_on(dir: &KeyDir, tune: impl FnOnce(&mut Config)) -> Result<TestGateway> {
    let mut config = Config {
        network: Network::On,
        auth: AuthConfig {
            jwt_secret_file: Some(dir.write("secret", &format!("{SECRET}\n"))?),
            ..AuthConfig::default()
        },
        ..Config::default()
    };
    tune(&mut config);
    Ok(TestGateway::spawn_with(config).await)
}

/// Finding (high): the warm pools start their entries with the gateway's network (the
/// host's, under `--network on`), and a claim compared only the runtime's `network`,
/// which a credential without the network leaves `false` as it was: such a request
/// claimed a waiting entry and ran with the host's network, Python (a warm interpreter)
/// and every other runtime (a waiting jail) alike. The review's own test ran with the
/// pools off (the test gateways' default), the production default being two per runtime
/// in the jail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_credential_never_claims_a_networked_warm_entry() -> Result<()> {
    if !crate::isolation::jail_available() {
        return Ok(());
    }
    let dir = KeyDir::new()?;
    let gateway = network_on(&dir, |config| {
        config.isolation = Isolation::Namespaces;
        config.warm_pool = Some(1);
        config.warm_runtimes = Some(vec!["python".into(), "sh".into()]);
    })
    .await?;
    let result = async {
        let host = host_namespace()?;
        crate::warm::pool_ready(&gateway, 2.0).await?;
        let mut offline = connect_with(&gateway, json!({"sub": "acme", "network": false})).await?;
        let mut seen = Vec::new();
        for (id, language, code) in [("py", "python", SHOW_PY), ("sh", "sh", SHOW_SH)] {
            let events = run_on(&mut offline, request(id, language, code)).await?;
            let namespace = text_of(&events, EventKind::Stdout).trim().to_owned();
            ensure!(namespace.starts_with("net:["), "{language}: {events:?}");
            seen.push((language, namespace, crate::warm::started_warm(&events)));
        }
        // The pools do serve this gateway's networked callers.
        crate::warm::pool_ready(&gateway, 2.0).await?;
        let mut online = connect_with(&gateway, json!({"sub": "acme"})).await?;
        let events = run_on(&mut online, request("on", "python", SHOW_PY)).await?;
        ensure!(
            text_of(&events, EventKind::Stdout).trim() == host,
            "a networked caller did not get the host's network: {events:?}"
        );
        ensure!(crate::warm::started_warm(&events), "not warm: {events:?}");
        anyhow::Ok((host, seen))
    }
    .await;
    gateway.shutdown().await?;
    let (host, seen) = result?;
    for (language, namespace, warm) in seen {
        assert_ne!(
            namespace, host,
            "{language}: a credential without the network ran in the host's network namespace (warm start: {warm})"
        );
    }
    Ok(())
}

/// Finding (high): a session's interpreter remembered the network as its runtime's
/// `--allow-network` only, so one started under `--network on` by a grant with the
/// network was recorded as without it, and a grant of the same tenant without the
/// network ran its cells there, in the host's network namespace, jailed or not (with
/// cgroups or without).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_cell_cannot_use_an_interpreter_started_with_the_hosts_network() -> Result<()> {
    let host = sluice_tests::host_report();
    for isolation in [Isolation::Namespaces, Isolation::Cgroups, Isolation::None] {
        if isolation == Isolation::Namespaces && !crate::isolation::jail_available() {
            continue;
        }
        // Unjailed, only root can take the network (else such a credential runs nothing).
        if isolation != Isolation::Namespaces && !host.root {
            continue;
        }
        if isolation == Isolation::Cgroups && host.kill_tree.is_none() {
            continue;
        }
        offline_cell_in_a_networked_interpreter(isolation).await?;
    }
    Ok(())
}

async fn offline_cell_in_a_networked_interpreter(isolation: Isolation) -> Result<()> {
    let dir = KeyDir::new()?;
    let gateway = network_on(&dir, |config| config.isolation = isolation).await?;
    let result = async {
        let host = host_namespace()?;
        let mut online = connect_with(&gateway, json!({"sub": "acme"})).await?;
        let events = run_on(&mut online, cell("shared", "on", SHOW_PY)).await?;
        ensure!(
            text_of(&events, EventKind::Stdout).trim() == host,
            "the interpreter did not get the host's network: {events:?}"
        );
        let mut offline = connect_with(&gateway, json!({"sub": "acme", "network": false})).await?;
        let events = run_on(&mut offline, cell("shared", "off", SHOW_PY)).await?;
        let stdout = text_of(&events, EventKind::Stdout);
        ensure!(
            stdout.trim() != host,
            "a cell without the network ran in an interpreter with the host's: {events:?}"
        );
        assert_refused(&events, ErrorCode::NotPermitted)?;
        // Its own session gets an interpreter of its own, without the network.
        let events = run_on(&mut offline, cell("mine", "own", SHOW_PY)).await?;
        let own = text_of(&events, EventKind::Stdout);
        ensure!(own.starts_with("net:[") && own.trim() != host, "{events:?}");
        // The session's owner still runs there, with its state.
        let events = run_on(&mut online, cell("shared", "again", SHOW_PY)).await?;
        ensure!(
            text_of(&events, EventKind::Stdout).trim() == host,
            "{events:?}"
        );
        anyhow::Ok(())
    }
    .await
    .with_context(|| format!("{isolation:?}"));
    gateway.shutdown().await?;
    result
}

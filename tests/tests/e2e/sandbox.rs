//! Hostile programs against the limits that cover a whole process tree (memory,
//! processes) and against escaping the end of an execution. Each needs a writable
//! cgroup; on a host without one the test says so and is skipped (see `sluice doctor`).

use anyhow::{Context as _, Result};
use sluice_gateway::{Config, LimitBound, LimitsConfig};
use sluice_protocol::{EventKind, ExecuteRequest, LimitKind, Limits};
use sluice_tests::{
    assert_stream_ok, processes_with, request, run, unique_marker, wait_until_gone,
    wait_until_running, within, TestGateway,
};

/// `None` (and a line on stderr saying why) when the host cannot enforce `layer`.
fn layer(name: &str, how: Option<String>) -> Option<String> {
    if how.is_none() {
        let lacking = if name == "network" {
            "no way to take the network away (`unshare`, or permission for network namespaces)"
        } else {
            "no writable cgroup"
        };
        sluice_tests::skip(format!(
            "no {name} limit here ({lacking} on this host, or SLUICE_TEST_ISOLATION turned it off; see `sluice doctor`)"
        ));
    }
    how
}

fn with_limits(request: ExecuteRequest, limits: Limits) -> ExecuteRequest {
    ExecuteRequest { limits, ..request }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_hog_ends_with_resource_limit_memory() -> Result<()> {
    if layer("memory", sluice_tests::host_report().memory).is_none() {
        return Ok(());
    }
    let gateway = TestGateway::spawn().await;
    let client = gateway.client().await?;
    // Allocate and touch 4 GiB with a 256 MiB limit.
    let hog =
        "chunks = []\nfor _ in range(64):\n    chunks.append(b'x' * (64 << 20))\nprint('survived')";
    let outcome = run(
        &client,
        with_limits(
            request("hog", "python", hog),
            Limits {
                memory_bytes: Some(256 << 20),
                ..Limits::default()
            },
        ),
    )
    .await?;
    assert_stream_ok(&outcome.events);
    assert_eq!(
        (outcome.kind(), outcome.limit()),
        (EventKind::ResourceLimit, Some(LimitKind::Memory)),
        "{:?}",
        outcome.terminal
    );
    assert_eq!(outcome.terminal.limit_value, Some(256 << 20));
    assert!(!outcome.stdout.contains("survived"));
    let usage = outcome.usage().context("no usage")?;
    assert!(
        usage.peak_memory_bytes <= 300 << 20,
        "peak {} bytes with a 256 MiB limit",
        usage.peak_memory_bytes
    );
    client.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_ends_with_resource_limit_processes_and_leaves_nothing() -> Result<()> {
    if layer("processes", sluice_tests::host_report().processes).is_none() {
        return Ok(());
    }
    let gateway = TestGateway::spawn_with(Config {
        limits: LimitsConfig {
            processes: LimitBound {
                default: 32,
                max: 64,
            },
            ..LimitsConfig::default()
        },
        ..Config::default()
    })
    .await;
    let bomber = gateway.client().await?;
    let bystander = gateway.client().await?;
    let marker = unique_marker("bomb");
    // Every copy carries the marker in its command line, so the test can count them.
    // The classic bomb, in a shell that stays alive while its copies multiply.
    let bomb = format!(
        "bomb() {{ bomb | bomb & }}\nexec -a {marker} bash -c \"$(declare -f bomb); bomb; while :; do sleep 1; done\""
    );
    let bombing = tokio::spawn({
        let bomber = bomber.clone();
        async move { run(&bomber, request("bomb", "bash", &bomb)).await }
    });
    // Another socket's execution, started during the bomb, completes normally.
    let calm = run(&bystander, request("calm", "sh", "echo calm")).await?;
    assert_eq!(calm.stdout, "calm\n");
    assert_eq!(calm.exit_code(), Some(0));
    let outcome = bombing.await??;
    assert_eq!(
        (outcome.kind(), outcome.limit()),
        (EventKind::ResourceLimit, Some(LimitKind::Processes)),
        "{:?}",
        outcome.terminal
    );
    assert_eq!(outcome.terminal.limit_value, Some(32));
    wait_until_gone(&marker).await?;
    bomber.close().await?;
    bystander.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_left_the_group_is_gone_when_the_execution_ends() -> Result<()> {
    if layer("process-tree", sluice_tests::host_report().kill_tree).is_none() {
        return Ok(());
    }
    let gateway = TestGateway::spawn().await;
    let client = gateway.client().await?;
    let marker = unique_marker("escapee");
    // A double fork into a new session: no longer in the execution's process group.
    // It waits until the escapee runs, so the test cannot pass for want of one.
    let code = format!(
        "setsid bash -c 'exec -a {marker} sleep 1000' < /dev/null > /dev/null 2>&1 &\nuntil pgrep -f {marker} > /dev/null; do sleep 0.01; done\necho forked"
    );
    let outcome = run(&client, request("escape", "bash", &code)).await?;
    assert_eq!(outcome.stdout, "forked\n");
    assert_eq!(outcome.exit_code(), Some(0));
    wait_until_gone(&marker).await?;
    assert!(processes_with(&marker).is_empty());
    client.close().await?;
    gateway.shutdown().await
}

/// The directory (`sluice-<pid>-<n>`) of the test gateway that runs process `pid`, read
/// from the process's cgroup paths. Gateways of other tests run in this process at the
/// same time, each with a directory of its own.
fn gateway_dir_of(pid: u32) -> Option<String> {
    let prefix = format!("sluice-{}-", std::process::id());
    let own_leaf = format!("{prefix}gateway");
    let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    membership.lines().find_map(|line| {
        let path = line.splitn(3, ':').nth(2)?;
        path.split('/')
            .find(|part| part.starts_with(&prefix) && *part != own_leaf)
            .map(str::to_owned)
    })
}

/// Execution cgroups of the test gateway whose directory is `gateway_dir`, in the
/// hierarchies that count processes: cgroup v1 `pids` and the v2 (unified) one, each under
/// this process's own cgroup there (or the parent of the leaf a gateway moved it into, on
/// v2).
fn execution_cgroups(gateway_dir: &str) -> usize {
    let prefix = format!("sluice-{}-", std::process::id());
    let own_leaf = format!("{prefix}gateway");
    let membership = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let own_path = |controllers: &str| {
        membership.lines().find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, listed, path) = (fields.next()?, fields.next()?, fields.next()?);
            (listed == controllers).then(|| path.trim_start_matches('/').to_owned())
        })
    };
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let homes = mounts.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let dash = fields.iter().position(|f| *f == "-")?;
        let (mount_point, kind, options) =
            (fields.get(4)?, fields.get(dash + 1)?, fields.get(dash + 3)?);
        let controllers = match *kind {
            "cgroup2" => "",
            "cgroup" if options.split(',').any(|o| o == "pids") => "pids",
            _ => return None,
        };
        let home = std::path::Path::new(mount_point).join(own_path(controllers)?);
        Some(match home.file_name() {
            Some(name) if name.to_string_lossy() == own_leaf => home.parent()?.to_path_buf(),
            _ => home,
        })
    });
    let children = |dir: &std::path::Path| {
        std::fs::read_dir(dir)
            .map(|children| children.flatten().filter(|c| c.path().is_dir()).count())
            .unwrap_or(0)
    };
    homes
        .filter_map(|home| std::fs::read_dir(home).ok())
        .flat_map(|entries| entries.flatten())
        .filter(|e| e.file_name().to_string_lossy() == gateway_dir)
        .map(|e| children(&e.path()))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_limit_of_one_runs_the_program_alone_and_failed_starts_leak_nothing() -> Result<()>
{
    if layer("processes", sluice_tests::host_report().processes).is_none() {
        return Ok(());
    }
    let gateway = TestGateway::spawn().await;
    let client = gateway.client().await?;
    let alone = run(
        &client,
        with_limits(
            request("alone", "sh", "echo alone"),
            Limits {
                processes: Some(1),
                ..Limits::default()
            },
        ),
    )
    .await?;
    assert_eq!(
        (alone.stdout.as_str(), alone.exit_code()),
        ("alone\n", Some(0)),
        "{:?}",
        alone.terminal
    );
    // This gateway's directory, found from where one of its programs runs.
    let marker = unique_marker("where");
    let holder = client
        .execute(request(
            "where",
            "bash",
            &format!("exec -a {marker} sleep 1000"),
        ))
        .await?;
    wait_until_running(&marker).await?;
    let gateway_dir = processes_with(&marker)
        .iter()
        .find_map(|(pid, _)| gateway_dir_of(*pid))
        .context("the program's cgroup is not in a directory of a test gateway")?;
    holder.cancel().await?;
    let held = within("the holder to end", holder.wait()).await??;
    assert_eq!(held.kind(), EventKind::Cancelled, "{:?}", held.terminal);
    // Programs that cannot start (an argument the kernel refuses: E2BIG) leave no
    // cgroup behind: the gateway keeps as many (empty, for reuse) as before.
    let before = execution_cgroups(&gateway_dir);
    let huge = "x".repeat(200_000);
    for n in 0..5 {
        let refused = run(
            &client,
            ExecuteRequest {
                args: vec![huge.clone()],
                ..request(&format!("big-arg-{n}"), "sh", "true")
            },
        )
        .await?;
        assert_eq!(refused.kind(), EventKind::Error, "{:?}", refused.terminal);
    }
    sluice_tests::eventually(
        sluice_tests::patience(),
        "as many execution cgroups as before",
        || execution_cgroups(&gateway_dir) <= before,
    )
    .await?;
    client.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_past_its_interpreters_memory_limit_is_reported_as_memory() -> Result<()> {
    if layer("memory", sluice_tests::host_report().memory).is_none() {
        return Ok(());
    }
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let cell = |id: &str, code: &str| ExecuteRequest {
        session: Some("hungry".into()),
        persistent: true,
        limits: Limits {
            memory_bytes: Some(256 << 20),
            ..Limits::default()
        },
        ..request(id, "python", code)
    };
    // The execute that starts the interpreter sets its limits.
    socket.execute(cell("start", "kept = 1")).await?;
    socket.events_until_terminal("start").await?;
    socket
        .execute(cell(
            "hog",
            "chunks = [b'x' * (64 << 20) for _ in range(64)]",
        ))
        .await?;
    let events = socket.events_until_terminal("hog").await?;
    let last = events.last().context("no terminal")?;
    assert_eq!(
        (last.kind, last.limit),
        (EventKind::ResourceLimit, Some(LimitKind::Memory)),
        "{last:?}"
    );
    assert!(last.data.contains("fresh interpreter"), "{}", last.data);
    socket
        .execute(cell("after", "print('kept' in globals())"))
        .await?;
    let after = socket.events_until_terminal("after").await?;
    assert_eq!(sluice_tests::text_of(&after, EventKind::Stdout), "False\n");
    gateway.shutdown().await
}

/// Python that tries to reach `port` on loopback and prints what happened.
fn connect_to(port: u16) -> String {
    format!(
        "import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=5).close()\n    print('connected')\nexcept OSError as e:\n    print('refused', e.errno)\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_network_a_program_cannot_reach_the_gateway_or_anything_else() -> Result<()> {
    if layer("network", sluice_tests::host_report().network).is_none() {
        return Ok(());
    }
    let gateway = TestGateway::spawn().await;
    let client = gateway.client().await?;
    let port = gateway.addr().port();
    let cut_off = run(&client, request("net", "python", &connect_to(port))).await?;
    assert!(
        cut_off.stdout.starts_with("refused"),
        "a program reached the gateway's port: {:?}",
        cut_off.stdout
    );
    let outside = run(
        &client,
        request(
            "dns",
            "python",
            "import socket\ntry:\n    socket.create_connection(('1.1.1.1', 53), timeout=5).close()\n    print('connected')\nexcept OSError as e:\n    print('refused', e.errno)\n",
        ),
    )
    .await?;
    assert!(
        outside.stdout.starts_with("refused"),
        "{:?}",
        outside.stdout
    );
    client.close().await?;
    gateway.shutdown().await?;

    // With the network on, the same program connects: the test above cannot pass for
    // a reason other than the namespace.
    let open = TestGateway::spawn_with(Config {
        network: sluice_gateway::Network::On,
        ..Config::default()
    })
    .await;
    let client = open.client().await?;
    let port = open.addr().port();
    let reached = run(&client, request("net", "python", &connect_to(port))).await?;
    assert_eq!(reached.stdout, "connected\n");
    client.close().await?;
    open.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_allowed_the_network_keeps_it_while_the_others_lose_it() -> Result<()> {
    if layer("network", sluice_tests::host_report().network).is_none() {
        return Ok(());
    }
    let mut runtimes = sluice_gateway::RuntimeSpec::defaults();
    for spec in runtimes.iter_mut().filter(|s| s.name == "bash") {
        spec.network = true;
    }
    let gateway = TestGateway::spawn_with(Config {
        runtimes,
        ..Config::default()
    })
    .await;
    let client = gateway.client().await?;
    let port = gateway.addr().port();
    let python = run(&client, request("py", "python", &connect_to(port))).await?;
    assert!(python.stdout.starts_with("refused"), "{:?}", python.stdout);
    let bash =
        format!("if exec 3<>/dev/tcp/127.0.0.1/{port}; then echo connected; else echo refused; fi");
    let bash = run(&client, request("sh", "bash", &bash)).await?;
    assert_eq!(bash.stdout, "connected\n", "stderr: {}", bash.stderr);
    client.close().await?;
    gateway.shutdown().await
}

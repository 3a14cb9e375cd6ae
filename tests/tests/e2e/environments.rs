//! A runtime whose interpreter is a virtual environment's (issue 15): used as given, not
//! resolved to the base interpreter, for programs and persistent cells, jailed and not,
//! and its packages listed by discovery.
//! (One under a directory others may write is refused: `runtime.rs`'s unit test.)

use crate::isolation::jail_available;
use anyhow::{ensure, Context as _, Result};
use sluice_gateway::{Config, Isolation, RuntimeSpec};
use sluice_tests::{cell, forced_isolation, request, run, TestGateway};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

/// A fresh virtual environment under `/var/lib` (where only root writes) with a module
/// of its own in its site-packages; removed on drop.
struct Environment(PathBuf);

impl Environment {
    fn create() -> Result<Self> {
        Self::create_as("probe")
    }

    /// As [`Environment::create`], under a name of its own (`tag`): tests run at once in
    /// one process.
    fn create_as(tag: &str) -> Result<Self> {
        let dir = PathBuf::from(format!(
            "/var/lib/sluice-test-venv-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        // The system's interpreter, which every user can start (a pyenv one under
        // /root is not, for unjailed programs).
        let base = ["/usr/bin/python3", "python3"]
            .into_iter()
            .find(|p| !p.starts_with('/') || Path::new(p).exists())
            .unwrap_or("python3");
        let made = std::process::Command::new(base)
            .args(["-m", "venv", "--without-pip"])
            .arg(&dir)
            .status()
            .context("python3 -m venv")?;
        ensure!(made.success(), "python3 -m venv failed");
        let env = Self(dir);
        let site = env.site_packages()?;
        std::fs::write(site.join("sluice_env_probe.py"), "VALUE = 42\n")?;
        // What an installed distribution leaves: the catalog lists it.
        let dist_info = site.join("sluice_env_probe-4.2.0.dist-info");
        std::fs::create_dir_all(&dist_info)?;
        std::fs::write(
            dist_info.join("METADATA"),
            "Metadata-Version: 2.1\nName: sluice-env-probe\nVersion: 4.2.0\n",
        )?;
        // Readable by the user unjailed programs run as.
        open_up(&env.0)?;
        Ok(env)
    }

    /// The environment's site-packages.
    fn site_packages(&self) -> Result<PathBuf> {
        std::fs::read_dir(self.0.join("lib"))?
            .flatten()
            .map(|entry| entry.path().join("site-packages"))
            .find(|path| path.is_dir())
            .context("the environment's site-packages")
    }

    /// Makes every start of an interpreter of the environment that runs with a `TMPDIR`
    /// (as the gateway starts them; its package listing has none) slow: it adds the
    /// process's pid to `$TMPDIR/starts`, then sleeps `seconds`.
    fn slow_start(&self, seconds: f64) -> Result<()> {
        self.start_hook(&format!(
            "open(os.path.join(os.environ['TMPDIR'], 'starts'), 'a').write(str(os.getpid()) + chr(10)), time.sleep({seconds})"
        ))
    }

    /// Runs `expression` (a Python expression, with `os` and `time` imported) at every
    /// start of an interpreter of the environment that has a `TMPDIR`, from a `.pth`
    /// file (run by `site` at start, before any code of the gateway's).
    fn start_hook(&self, expression: &str) -> Result<()> {
        let line = format!("import os, time; 'TMPDIR' in os.environ and ({expression})\n");
        let pth = self.site_packages()?.join("sluice_start_hook.pth");
        std::fs::write(&pth, line)?;
        open_up(&pth)?;
        Ok(())
    }

    /// A gateway at `isolation` with the environment's runtime (`envpy`) beside the
    /// built-in ones.
    async fn gateway(&self, isolation: Isolation) -> TestGateway {
        let mut runtimes = RuntimeSpec::defaults();
        runtimes.push(self.spec());
        TestGateway::spawn_with(Config {
            isolation,
            runtimes,
            ..Config::default()
        })
        .await
    }

    fn spec(&self) -> RuntimeSpec {
        let python = RuntimeSpec::defaults()
            .into_iter()
            .find(|spec| spec.name == "python")
            .expect("the built-in python runtime");
        RuntimeSpec {
            name: "envpy".into(),
            program: self
                .0
                .join("bin")
                .join("python")
                .to_string_lossy()
                .into_owned(),
            optional: false,
            ..python
        }
    }
}

impl Drop for Environment {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Unjailed with cgroups, and jailed where this host can.
fn isolation_levels() -> Vec<Isolation> {
    let mut levels = vec![Isolation::Cgroups];
    if jail_available() {
        levels.push(Isolation::Namespaces);
    }
    levels
}

fn open_up(dir: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(dir)?;
    if meta.is_dir() {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        for entry in std::fs::read_dir(dir)?.flatten() {
            open_up(&entry.path())?;
        }
    } else if meta.is_file() {
        let mode = meta.permissions().mode() | 0o444;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virtual_environment_runtime_runs_in_its_environment_jailed_and_unjailed() -> Result<()> {
    if forced_isolation().is_some() {
        return Ok(());
    }
    if !sluice_tests::running_as_root() {
        sluice_tests::skip("the test's environment goes under /var/lib, where only root writes");
        return Ok(());
    }
    let env = Environment::create()?;
    let levels = isolation_levels();
    let probe = "import sys, sluice_env_probe\nprint(sys.prefix != sys.base_prefix, sluice_env_probe.VALUE)";
    for isolation in levels {
        let gateway = env.gateway(isolation).await;
        // Discovery lists the environment's packages, and not under the base runtime.
        let (status, text) =
            sluice_tests::http_get(gateway.addr(), sluice_protocol::RUNTIMES_PATH).await?;
        ensure!(status == 200, "{status} {text}");
        let catalog: sluice_protocol::Catalog = serde_json::from_str(&text)?;
        let packages = |language: &str| {
            catalog
                .runtimes
                .iter()
                .find(|r| r.language == language)
                .and_then(|r| r.packages.clone())
        };
        let probe_package = sluice_protocol::PackageInfo {
            name: "sluice-env-probe".into(),
            version: "4.2.0".into(),
        };
        ensure!(
            packages("envpy").is_some_and(|p| p.contains(&probe_package)),
            "{isolation:?}: {:?}",
            packages("envpy")
        );
        ensure!(
            packages("python").is_some_and(|p| !p.contains(&probe_package)),
            "{:?}",
            packages("python")
        );
        ensure!(packages("sh").is_none());
        let client = gateway.client().await?;
        let outcome = run(&client, request("program", "envpy", probe)).await?;
        ensure!(
            outcome.stdout_bytes()? == b"True 42\n",
            "{isolation:?}: a program of the environment: {:?}",
            outcome.terminal
        );
        let cell = cell("env-session", "cell", probe);
        let outcome = run(
            &client,
            sluice_protocol::ExecuteRequest {
                language: "envpy".into(),
                ..cell
            },
        )
        .await?;
        ensure!(
            outcome.stdout_bytes()? == b"True 42\n",
            "{isolation:?}: a cell of the environment: {:?}",
            outcome.terminal
        );
        // The built-in python is not the environment.
        let outcome = run(
            &client,
            request(
                "base",
                "python",
                "import sys\nprint(sys.prefix != sys.base_prefix)",
            ),
        )
        .await?;
        ensure!(
            outcome.stdout_bytes()? == b"False\n",
            "{:?}",
            outcome.terminal
        );
        client.close().await?;
        gateway.shutdown().await?;
    }
    Ok(())
}

/// A cell cancelled while its session's interpreter is still starting (here its start
/// takes seconds: a `.pth` file of the environment sleeps) ends `cancelled` at once,
/// its code never runs, and the same interpreter, once started, runs the next cell.
/// Before the gateway waited for the interpreter to say it had started, the code was
/// sent at once, the cancel's interrupt could not stop a start, and the interpreter was
/// killed after the grace (a second interpreter ran the next cell).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_cancelled_while_its_interpreter_starts_never_runs_and_the_interpreter_stays(
) -> Result<()> {
    if forced_isolation().is_some() {
        return Ok(());
    }
    if !sluice_tests::running_as_root() {
        sluice_tests::skip(
            "the environment goes under /var/lib and the session keeps a workspace: both need root",
        );
        return Ok(());
    }
    let env = Environment::create_as("slow")?;
    env.slow_start(2.0)?;
    let levels = isolation_levels();
    for isolation in levels {
        let gateway = env.gateway(isolation).await;
        let mut socket = gateway.raw().await?;
        // A workspace: the interpreter's TMPDIR, where its start leaves `starts`.
        socket.attach_workspace("boot").await?;
        let envpy = |id: &str, code: &str| sluice_protocol::ExecuteRequest {
            language: "envpy".into(),
            ..cell("boot", id, code)
        };
        socket.execute(envpy("c1", "x = 1\nprint('ran')")).await?;
        // The interpreter is starting once its start wrote `starts` (then it sleeps).
        let listed = |event: &sluice_protocol::Event| {
            event
                .entries
                .as_ref()
                .is_some_and(|entries| entries.iter().any(|entry| entry.name == "starts"))
        };
        let deadline = std::time::Instant::now() + sluice_tests::patience();
        let mut asked = 0;
        loop {
            asked += 1;
            let request = format!("list{asked}");
            socket
                .send_json(&serde_json::json!({"type": "list_files", "request": request, "session": "boot"}))
                .await?;
            let answer = socket
                .next_event_where(|e| e.request.as_deref() == Some(request.as_str()))
                .await?;
            if listed(&answer) {
                break;
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "{isolation:?}: the interpreter never started: {answer:?}"
            );
        }
        socket.cancel("c1").await?;
        let first = socket.events_until_terminal("c1").await?;
        let end = first.last().context("no terminal event")?;
        ensure!(
            end.kind == sluice_protocol::EventKind::Cancelled
                && end.data.contains("before it started"),
            "{isolation:?}: the cell cancelled while its interpreter started: {first:?}"
        );
        let c1_events = sluice_tests::events_of(socket.received(), "c1");
        ensure!(
            c1_events.len() == 1,
            "{isolation:?}: the cancelled cell did more than end: {c1_events:?}"
        );
        // Its code never ran, and one interpreter (one pid in `starts`) runs the next.
        socket
            .execute(envpy(
                "c2",
                "import os\nstarts = set(open(os.path.join(os.environ['TMPDIR'], 'starts')).read().split())\nprint('x' in globals(), starts == {str(os.getpid())})",
            ))
            .await?;
        let second = socket.events_until_terminal("c2").await?;
        let stdout = sluice_tests::text_of(&second, sluice_protocol::EventKind::Stdout);
        ensure!(
            stdout == "False True\n",
            "{isolation:?}: the next cell: {second:?}"
        );
        socket.close().await?;
        gateway.shutdown().await?;
    }
    Ok(())
}

/// What an interpreter's start uses counts as its first cell's: CPU time burnt by code
/// run at the start (here a `.pth` of the environment; a session's own sitecustomize
/// would do the same) ends the cell at its `cpu_ms` with `resource_limit` while the
/// start still runs (here it would burn 3 s), and the interpreter is killed (an outside
/// review found it free: the cell's CPU was counted only from the end of the start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interpreters_start_counts_against_its_first_cells_cpu_time() -> Result<()> {
    if forced_isolation().is_some() {
        return Ok(());
    }
    if !sluice_tests::running_as_root() {
        sluice_tests::skip("the test's environment goes under /var/lib, where only root writes");
        return Ok(());
    }
    let env = Environment::create_as("busy")?;
    // About 3 s of CPU at every start.
    // (A lambda sees no name the .pth line imported: `site` runs it in a function.)
    env.start_hook("[None for _ in iter(lambda: __import__('time').process_time() < 3, False)]")?;
    let levels = isolation_levels();
    for isolation in levels {
        let gateway = env.gateway(isolation).await;
        let client = gateway.client().await?;
        let mut first = cell("busy", "c1", "print('ran')");
        first.language = "envpy".into();
        first.limits.cpu_ms = Some(300);
        first.limits.timeout_ms = Some(30_000);
        let outcome = run(&client, first).await?;
        let end = &outcome.terminal;
        ensure!(
            end.kind == sluice_protocol::EventKind::ResourceLimit
                && end.limit == Some(sluice_protocol::LimitKind::Cpu)
                && end.limit_observed.is_some_and(|used| used >= 300)
                && end.data.contains("while the interpreter started")
                && end.usage.as_ref().is_some_and(|usage| usage.cpu_ms >= 300.0),
            "{isolation:?}: the start's CPU time was not the cell's, or the start was not stopped at the limit: {end:?}"
        );
        ensure!(
            outcome.stdout_bytes()?.is_empty(),
            "{isolation:?}: {:?}",
            outcome.stdout
        );
        client.close().await?;
        gateway.shutdown().await?;
    }
    Ok(())
}

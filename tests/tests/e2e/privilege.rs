//! What a request carries never reaches a process with more privilege than the program
//! itself (issue 10, finding 1): the environment of an `execute` (loader variables such
//! as `LD_PRELOAD` and `LD_AUDIT` among it) is applied only in the program's own
//! `execve`, never in the jail or any other helper the gateway runs first as root; the
//! request's arguments do not appear on a privileged process's command line; and the
//! jail's init shows nothing of the gateway (`/proc/1/cmdline`). These run at every
//! isolation level: without the jail, a root gateway's programs drop to the sandbox user
//! before their own exec, which is the only exec that sees the request.

use anyhow::{ensure, Context as _, Result};
use sluice_protocol::{EventKind, ExecuteRequest};
use sluice_tests::{assert_stream_ok, request, run, unique_marker, TestGateway};
use std::path::PathBuf;
use std::process::Command;

/// A shared object, readable by everyone, that leaves a file in `markers` each time a
/// process whose effective uid is 0 loads it (as a preload or as an audit library).
struct Tripwire {
    library: PathBuf,
    markers: PathBuf,
    dir: PathBuf,
}

impl Tripwire {
    /// Builds the library with the host's C compiler; `None` (saying why) without one.
    fn build(name: &str) -> Option<Self> {
        use std::os::unix::fs::PermissionsExt as _;
        // A file every process on the host can reach (a jailed program has a /tmp of
        // its own).
        let dir = sluice_tests::host_shared_dir(&format!("tripwire-{name}")).ok()?;
        let markers = dir.join("markers");
        std::fs::create_dir_all(&markers).ok()?;
        std::fs::set_permissions(&markers, std::fs::Permissions::from_mode(0o755)).ok()?;
        let source = dir.join("tripwire.c");
        let library = dir.join("tripwire.so");
        std::fs::write(
            &source,
            format!(
                r#"#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void loaded(void) {{
    if (geteuid() == 0) {{
        char path[4096];
        snprintf(path, sizeof path, "{}/loaded-as-root-by-%d", (int)getpid());
        int fd = open(path, O_CREAT | O_WRONLY, 0644);
        if (fd >= 0) close(fd);
    }}
}}
/* What the loader asks an audit library (LD_AUDIT) before it keeps it. */
unsigned int la_version(unsigned int version) {{ return version; }}
"#,
                markers.display()
            ),
        )
        .ok()?;
        let built = Command::new("cc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(&library)
            .arg(&source)
            .output();
        match built {
            Ok(output) if output.status.success() => {}
            Ok(output) => {
                sluice_tests::skip(format!(
                    "cc could not build the tripwire library: {}",
                    String::from_utf8_lossy(&output.stderr)
                ));
                return None;
            }
            Err(err) => {
                sluice_tests::skip(format!(
                    "no C compiler (cc) to build the tripwire library: {err}"
                ));
                return None;
            }
        }
        std::fs::set_permissions(&library, std::fs::Permissions::from_mode(0o755)).ok()?;
        Some(Self {
            library,
            markers,
            dir,
        })
    }

    /// Every process that loaded the library as root so far.
    fn tripped(&self) -> Vec<String> {
        std::fs::read_dir(&self.markers)
            .map(|entries| {
                entries
                    .filter_map(|entry| entry.ok())
                    .map(|entry| entry.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Checks an attack's outcome: nothing running as root loaded the library (checked
    /// first: it is what a failure is about), yet the program ran and got its
    /// environment unchanged.
    fn check(&self, outcome: &sluice_client::Outcome) -> Result<()> {
        let tripped = self.tripped();
        ensure!(
            tripped.is_empty(),
            "a process running as root loaded the request's library: {tripped:?}"
        );
        ensure!(
            outcome.terminal.kind == EventKind::Completed,
            "the program should run: {:?} {}",
            outcome.terminal,
            outcome.stderr
        );
        ensure!(
            outcome
                .stdout
                .contains(&format!("LD_PRELOAD={}", self.library.display())),
            "the program did not get its environment: {}",
            outcome.stdout
        );
        Ok(())
    }

    /// The environment of an attack: every loader variable pointing at the library.
    fn loader_env(&self) -> std::collections::BTreeMap<String, String> {
        let library = self.library.display().to_string();
        [
            ("LD_PRELOAD", library.clone()),
            ("LD_AUDIT", library),
            ("LD_LIBRARY_PATH", self.dir.display().to_string()),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect()
    }
}

impl Drop for Tripwire {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Python program that prints what it was given of the loader's variables.
const SHOW_LOADER_ENV: &str = r#"import os
for name in ("LD_PRELOAD", "LD_AUDIT", "LD_LIBRARY_PATH"):
    print("%s=%s" % (name, os.environ.get(name)))
print("uid=%d" % os.geteuid())
"#;

/// Regression test for finding 1 (failed before the fix: the jail, running as root,
/// loaded the request's `LD_PRELOAD` and the tripwire fired for every jailed execute).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requests_loader_variables_never_reach_a_process_running_as_root() -> Result<()> {
    let Some(tripwire) = Tripwire::build("execute") else {
        return Ok(());
    };
    let gateway = TestGateway::spawn().await;
    let client = gateway.client().await?;
    let mut attacks = Vec::new();
    for (id, language, code) in [
        ("py", "python", SHOW_LOADER_ENV),
        ("sh", "sh", "echo LD_PRELOAD=$LD_PRELOAD; id -u"),
    ] {
        attacks.push(ExecuteRequest {
            env: tripwire.loader_env(),
            ..request(id, language, code)
        });
    }
    for attack in attacks {
        let outcome = run(&client, attack).await?;
        tripwire.check(&outcome)?;
        assert_stream_ok(&outcome.events);
    }
    client.close().await?;
    gateway.shutdown().await
}

/// The same for a persistent session: its interpreter is started (jailed, or dropping
/// to the sandbox user) with the first cell's environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_sessions_loader_variables_never_reach_a_process_running_as_root() -> Result<()>
{
    let Some(tripwire) = Tripwire::build("persistent") else {
        return Ok(());
    };
    let gateway = TestGateway::spawn().await;
    let client = gateway.client().await?;
    let mut events = Vec::new();
    for cell in ["c1", "c2"] {
        let outcome = run(
            &client,
            ExecuteRequest {
                env: tripwire.loader_env(),
                session: Some("tripwire".into()),
                persistent: true,
                ..request(cell, "python", SHOW_LOADER_ENV)
            },
        )
        .await?;
        tripwire.check(&outcome)?;
        events.extend(outcome.events);
    }
    assert_stream_ok(&events);
    client.close().await?;
    gateway.shutdown().await
}

/// A request's arguments are on the program's command line and nowhere else: not on the
/// jail's (which runs as root and which everyone on the host can read; its environment
/// is empty too), and the jail's
/// init shows nothing of the gateway's to the program (`/proc/1/cmdline`: no pid, work
/// root or cgroup path). Regression test for finding 6 (failed before the fix: init's
/// command line was the whole spec).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_arguments_and_gateway_paths_stay_off_privileged_command_lines() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let secret = unique_marker("secret-argument");
    let code = r#"import sys, time
init = open("/proc/1/cmdline", "rb").read().replace(b"\0", b" ").decode()
print("init=" + init)
print("args=" + " ".join(sys.argv[1:]))
sys.stdout.flush()
sys.stdin.read()
"#;
    socket
        .execute(ExecuteRequest {
            args: vec![secret.clone()],
            env: [("SLUICE_TEST_SECRET".to_owned(), secret.clone())].into(),
            ..request("args", "python", code)
        })
        .await?;
    let started = socket
        .next_event_where(|event| event.kind == EventKind::Started)
        .await?;
    let events = socket.wait_for_stdout("args", "args=").await?;
    let stdout = sluice_tests::text_of(&events, EventKind::Stdout);
    ensure!(
        stdout.contains(&secret),
        "the program got its argument: {stdout}"
    );
    // The process the gateway started (the jail, or the program itself without one).
    let pid = started.pid.context("started names a pid")?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', " "))
        .unwrap_or_default();
    let jailed = cmdline.contains("sluice-jail");
    if jailed {
        ensure!(
            !cmdline.contains(&secret),
            "the request's argument is on the jail's command line: {cmdline}"
        );
        // Readable here as root; a test run without root cannot look (the jail is
        // not dumpable), which is the point too.
        match std::fs::read(format!("/proc/{pid}/environ")) {
            Ok(environ) => ensure!(
                environ.is_empty(),
                "the jail has an environment: {}",
                String::from_utf8_lossy(&environ)
            ),
            Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => {}
            Err(err) => return Err(err).context("reading the jail's environment"),
        }
        let init = stdout
            .lines()
            .find_map(|line| line.strip_prefix("init="))
            .context("the program read init's command line")?;
        for leak in [
            "sluice-".to_owned() + &std::process::id().to_string(),
            "/sys/fs/cgroup".to_owned(),
            "--host-dir".to_owned(),
            secret.clone(),
        ] {
            ensure!(
                !init.contains(&leak),
                "init's command line shows {leak:?}: {init}"
            );
        }
    }
    socket.stdin("args", None, true).await?;
    socket.events_until_terminal("args").await?;
    socket.close().await?;
    gateway.shutdown().await
}

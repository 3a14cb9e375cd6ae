//! A gateway whose own cgroup v2 had `cgroup.kill` written before it came (a supervisor
//! that cleans a cgroup that way and reuses it). A kernel kills a child cloned into a
//! cgroup (`CLONE_INTO_CGROUP`) when the kill counts of the parent's cgroup and the
//! target differ, before it runs: the gateway must notice and start its programs by
//! joining their cgroups instead, so every program still runs whole.

mod common;

use anyhow::{ensure, Context as _, Result};
use common::Serving;
use sluice_protocol::EventKind;
use sluice_tests::{request, RawSocket};
use std::path::{Path, PathBuf};

/// Where cgroup v2 is mounted with `cgroup.kill`, if anywhere.
fn v2_root() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(PathBuf::from)
        .find(|dir| dir.join("cgroup.controllers").exists())
}

/// Removes `dir` and the cgroups below it, deepest first (what is left is logged).
fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path());
            }
        }
    }
    if let Err(err) = std::fs::remove_dir(dir) {
        sluice_tests::skip(format!("could not remove {}: {err}", dir.display()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_in_a_cgroup_killed_before_it_came_still_runs_its_programs() -> Result<()> {
    let Some(root) = v2_root().filter(|_| sluice_tests::host_report().root) else {
        sluice_tests::skip("needs root and a cgroup v2 hierarchy with cgroup.kill");
        return Ok(());
    };
    let home = root.join(format!("sluice-killed-home-{}", std::process::id()));
    std::fs::create_dir(&home).with_context(|| home.display().to_string())?;
    if !home.join("cgroup.kill").exists() {
        remove_tree(&home);
        sluice_tests::skip("this kernel has no cgroup.kill");
        return Ok(());
    }
    let result = async {
        // Killed while empty: nothing dies, the cgroup's kill count moves on.
        std::fs::write(home.join("cgroup.kill"), "1")?;
        let mut serving = Serving::start_in_cgroup(&home, &["--isolation", "cgroups"])?;
        let mut socket = RawSocket::connect(&serving.url, None).await?;
        // Its execution cgroups, below the killed one (seen from the host's cgroup
        // namespace: `--isolation cgroups` gives none of its own).
        let ours = format!(
            "0::/{}/sluice-{}-",
            home.strip_prefix(&root)?.display(),
            serving.child.id()
        );
        for round in 0..3 {
            let id = format!("echo-{round}");
            socket
                .execute(request(&id, "sh", "echo ok; grep '^0::' /proc/self/cgroup"))
                .await?;
            let events = socket.events_until_terminal(&id).await?;
            let stdout: String = events
                .iter()
                .filter(|e| e.kind == EventKind::Stdout)
                .map(|e| e.data.as_str())
                .collect();
            let last = events.last().context("no events")?;
            let mut lines = stdout.lines();
            ensure!(
                last.kind == EventKind::Completed
                    && last.exit_code == Some(0)
                    && lines.next() == Some("ok"),
                "round {round}: {events:?}"
            );
            let cgroup = lines.next().unwrap_or_default();
            ensure!(
                cgroup.starts_with(&ours),
                "round {round}: the program is in {cgroup:?}, not below {ours:?}"
            );
        }
        drop(socket);
        serving.signal("TERM")?;
        let child = &mut serving.child;
        sluice_tests::poll_until("sluice serve ends", async || Ok(child.try_wait()?)).await?;
        anyhow::Ok(())
    }
    .await;
    remove_tree(&home);
    result
}

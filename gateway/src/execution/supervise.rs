//! Supervising a started program (or cell) to its terminal event: the pump runs it,
//! then the program is reaped and its slot and directory freed, what the verdict needs
//! is gathered (cgroup and jail reports, the largest file, a lost interpreter), and the
//! undelivered output, then the verdict with the usage report, are published.

use super::launch::Launched;
use super::pump::OutputPipe;
use super::stdin::{StdinChunk, StdinFeed};
use super::verdict::{self, millis, Ending, JailSeen, Observed};
use super::workdir::Workdir;
use super::{Run, StdinQueue};
use sluice_protocol::{Event, EventKind, Usage};

impl Run {
    /// Publishes what changed in the session's workspace since it was last told
    /// (`files_changed` with this execution's id), before the terminal event.
    async fn tell_changes(&self, workspace: std::sync::Arc<crate::workspace::Workspace>) {
        let Ok(Some((changes, truncated))) =
            tokio::task::spawn_blocking(move || workspace.changes(true)).await
        else {
            return;
        };
        if !changes.is_empty() {
            let id = Some(self.spec.id.clone());
            self.deliver(Event::files_changed(id, changes, truncated))
                .await;
        }
    }

    /// Runs a started program to its terminal event.
    pub(super) async fn supervise(mut self, launched: Launched, (queue, queued): StdinQueue) {
        let Launched {
            workdir,
            program,
            stdin,
            stdout,
            stderr,
            started_at,
            warm,
            workspace_source,
        } = launched;
        let mut child = program;
        tracing::debug!(pid = child.pid(), warm, "started");
        let note = if warm {
            super::warm::STARTED_NOTE
        } else {
            child.note().unwrap_or_default()
        };
        let started = Event::started(self.spec.id.clone(), child.pid(), note);

        let terminal = self.spec.terminal.is_some();
        let mut stdin = StdinFeed::new(stdin, queue, queued, terminal);
        if let Some(data) = self.spec.stdin.clone() {
            // On a terminal, typed: its input goes on.
            stdin.start(StdinChunk {
                data: Some(data),
                eof: !terminal,
                memory: None,
            });
        }
        let encoding = self.spec.encoding;
        let chunk = self.ctx.chunk_bytes;
        let mut pipes = [
            OutputPipe::new(
                EventKind::Stdout,
                Some(stdout),
                encoding,
                chunk,
                terminal,
                &self.ctx.buffers,
            ),
            OutputPipe::new(
                EventKind::Stderr,
                stderr,
                encoding,
                chunk,
                terminal,
                &self.ctx.buffers,
            ),
        ];
        let pump = self
            .pump(&mut child, &mut pipes, &mut stdin, started, started_at)
            .await;
        stdin.stop();
        if let Some(control) = &self.spec.terminal {
            control.close();
        }

        // The program is gone: reap it, free its slot and its directory now, whether or
        // not the client has taken the last events yet.
        let mut ended = child.reap().await;
        self.slot = None;
        // A jailed program's files are on the jail's own file system: its init looked.
        // Read only with a jail: an unjailed program owns its directory and could leave
        // a report of its own making there.
        let jail_report = workdir
            .as_ref()
            .filter(|_| self.ctx.host.jail.is_some())
            .and_then(|dir| crate::sandbox::jail::JailReport::read(dir.path()));
        let largest_file = match &jail_report {
            Some(report) => report.largest_file_bytes,
            None => workdir.as_ref().map_or(0, Workdir::largest_file),
        };
        if let Some(workdir) = workdir {
            workdir.remove();
        }
        // A cell its interpreter answered: its number, and the exception it raised.
        let cell = ended.as_mut().ok().and_then(|ended| ended.cell.take());
        let (ending, cgroup) = match ended {
            Ok(ended) if ended.kernel_lost => (
                Ending::InterpreterLost {
                    reaped: ended.reaped,
                    because: ended.lost_because,
                },
                ended.cgroup,
            ),
            Ok(ended) => (Ending::Reaped(ended.reaped), ended.cgroup),
            Err(err) => {
                tracing::error!(%err, "could not reap the program");
                (Ending::Unknown, None)
            }
        };
        let reaped = match &ending {
            Ending::Reaped(reaped) | Ending::InterpreterLost { reaped, .. } => Some(reaped),
            Ending::Unknown => None,
        };
        let usage = Usage {
            duration_ms: millis(pump.exited_at.duration_since(started_at)),
            first_output_ms: pump
                .first_output_at
                .map(|t| millis(t.duration_since(started_at))),
            // The whole tree's CPU time when the cgroup counts it (the jail's own wait
            // does not see children killed before it reaped them), else what the main
            // process and the children it waited for used.
            cpu_ms: cgroup
                .and_then(|r| r.cpu_usec)
                .map(|usec| usec as f64 / 1000.0)
                .or_else(|| reaped.map(|r| millis(r.cpu)))
                .unwrap_or(0.0),
            // The whole tree's peak when the cgroup knows it, else the largest process's.
            peak_memory_bytes: cgroup
                .and_then(|r| r.peak_memory_bytes)
                .or_else(|| reaped.map(|r| r.peak_memory_bytes))
                .unwrap_or(0),
            stdout_bytes: pipes[0].delivered,
            stderr_bytes: pipes[1].delivered,
        };
        let jail = jail_report
            .map(|report| JailSeen {
                setup_failed: report.setup_failed,
                scratch_full: report.scratch_full,
                scratch_used_bytes: report.scratch_used_bytes,
            })
            .unwrap_or_default();
        // A request's files refused, or a full workspace, are the request's or the
        // session's doing (answered `invalid_path`, `workspace_full`), not the sandbox's.
        if let Some(why) = jail
            .setup_failed
            .as_deref()
            .filter(|why| !crate::sandbox::jail::is_the_requests_doing(why))
        {
            let metrics = &self.ctx.host.observe.metrics;
            metrics.sandbox_failed(crate::observe::SandboxStage::Jail);
            tracing::warn!(%why, "the jail could not start the program");
        }
        let observed = Observed {
            stop: pump.stop,
            ending,
            cgroup,
            jail,
            largest_file,
            peak_memory_bytes: usage.peak_memory_bytes,
            cpu_ms: usage.cpu_ms,
        };
        if let Some(first) = pump.first_output_at {
            let after = first.saturating_duration_since(self.accepted_at);
            self.ctx.host.observe.metrics.first_output(after);
        }
        let mut terminal = verdict::verdict(&self.spec.id, &observed, &self.spec.limits);
        terminal.usage = Some(usage);
        if let Some((number, exception)) = cell {
            terminal.execution_count = Some(number);
            if terminal.kind == EventKind::Completed {
                terminal.exception = exception;
            }
        }
        tracing::debug!(kind = %terminal.kind, "finished");
        for event in pump.undelivered {
            self.deliver(event).await;
        }
        if let Some(workspace) = self.ctx.session.workspace() {
            if let Some(name) = &workspace_source {
                workspace.remove_source(name);
            }
            self.tell_changes(workspace).await;
        }
        self.finish(terminal).await;
        // A cell's turn (and its kernel) pass to the session's next cell only now, so
        // the session's events keep the cells apart.
        drop(child);
    }
}

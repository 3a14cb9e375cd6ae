//! `sluice load`: a load-test harness for any Sluice gateway. It speaks the wire protocol
//! directly (tokio-tungstenite and `sluice-protocol` types, not the Rust client, which
//! dedupes and repairs), so it sees exactly what the gateway sent; it verifies every
//! event and measures latencies, delivery lag and throughput.
//!
//! One module per concept, in the order a run goes through them:
//!
//! | module | owns |
//! |---|---|
//! | [`scenario`] | the flags ([`LoadArgs`]), the TOML scenario file, the resolved [`Scenario`] |
//! | [`program`] | the programs (`pattern`, `clock`): their code and their expected output |
//! | [`schedule`] | the run's shape: connect, issue executions (open loop, closed loop, live), drain |
//! | [`socket`] | program and watcher sockets: frames out, frames in, drops, resumes, reconnects |
//! | [`driver`] | the run's shared state: executions, the frames sent for them, every frame received |
//! | [`verify`] | sequences, terminals, output, watcher streams; violations by kind |
//! | [`figures`] | HdrHistograms, lag samples, per-second counts |
//! | [`report`] | the result: human summary, JSON |
//! | [`html`] | the self-contained HTML report with SVG plots |
//! | [`progress`] | the progress bar on a terminal |
//!
//! `sluice load` (cli/) calls [`main`]; other tools (sluice-bench) may call [`run`].

pub mod driver;
pub mod figures;
pub mod html;
pub mod program;
pub mod progress;
pub mod report;
pub mod scenario;
pub mod schedule;
pub mod socket;
pub mod verify;

pub use report::Report;
pub use scenario::{LoadArgs, Scenario};

use std::io::Write as _;
use std::sync::Arc;

/// Help printed after the flags of `sluice load --help`.
pub const AFTER_HELP: &str = "\
Examples:
  sluice load --url ws://127.0.0.1:7878/v1/ws --executions 500 --concurrency 16
  sluice load --url ws://HOST:7878/v1/ws --rate 100/s --duration 60s --output-bytes 65536
  sluice load --url ws://HOST:7878/v1/ws --sockets 10 --live 1000 --program clock --duration 30s
  sluice load --scenario bench/scenarios/mixed.toml --json out.json --html out.html

Every event is verified: gap-free sequences, one started first and exactly one terminal
event per execution, byte-exact output, identical streams for watchers. Exit status: 0 when
all is well, 1 when any violation was found, 2 when executions were refused (or the
gateway could not be reached). A gateway must have room for the load: for 1000 live
programs from one machine, `sluice serve --max-executions 1100 --max-executions-per-peer
1100 --max-executions-per-connection 1100 --budget-share-per-peer 100`. See docs/load.md.";

/// Runs `scenario` on the current tokio runtime and returns its report.
pub async fn run(scenario: Scenario, progress: bool) -> Result<Report, driver::DriveError> {
    let run = Arc::new(driver::Run::new(scenario));
    let bar = progress::spawn(Arc::clone(&run), progress);
    let result = schedule::drive(Arc::clone(&run)).await;
    run.over.cancel();
    if let Some(bar) = bar {
        let _ = bar.await;
    }
    result?;
    Ok(Report::of(&run))
}

/// `sluice load`: resolves the flags, runs, prints the summary, writes the files, and
/// returns the exit status (see [`AFTER_HELP`]).
pub fn main(args: LoadArgs) -> i32 {
    let fail = |message: String| {
        let _ = writeln!(std::io::stderr(), "sluice load: {message}");
        2
    };
    let scenario = match scenario::resolve(&args) {
        Ok(scenario) => scenario,
        Err(err) => return fail(err.to_string()),
    };
    // The programs are Python: a runtime of another language fails every one of them.
    for program in &scenario.mix {
        if !program.language.to_ascii_lowercase().contains("py") {
            let _ = writeln!(
                std::io::stderr(),
                "sluice load: warning: the programs are Python code, and {:?} does not look \
                 like a Python runtime (--language names the gateway's runtime for them)",
                program.language
            );
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(format!("cannot start the async runtime: {err}")),
    };
    let report = match runtime.block_on(run(scenario, !args.no_progress)) {
        Ok(report) => report,
        Err(err) => return fail(err.to_string()),
    };
    let _ = std::io::stdout().write_all(report.summary().as_bytes());
    if let Some(path) = &args.json {
        let text = match serde_json::to_string_pretty(&report) {
            Ok(text) => text,
            Err(err) => return fail(format!("cannot encode the report: {err}")),
        };
        if let Err(err) = std::fs::write(path, text + "\n") {
            return fail(format!("cannot write {}: {err}", path.display()));
        }
    }
    if let Some(path) = &args.html {
        if let Err(err) = std::fs::write(path, html::render(&report)) {
            return fail(format!("cannot write {}: {err}", path.display()));
        }
    }
    if report.refusals.contains_key("too_many_executions") {
        let _ = writeln!(
            std::io::stderr(),
            "sluice load: the gateway refused executions with too_many_executions; {}",
            report::TOO_MANY_HINT
        );
    }
    report.exit_code()
}

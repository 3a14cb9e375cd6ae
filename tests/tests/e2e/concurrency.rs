//! Many executions at once: on one socket, over several sockets, and in one shared
//! session; each gets exactly its own output.

use anyhow::{ensure, Result};
use futures::future::try_join_all;
use sluice_protocol::{EventKind, ExecuteRequest, Limits};
use sluice_tests::{
    all_events, assert_lifecycle, assert_stream_ok, events_of, request, run, text_of, TestGateway,
};

/// A program whose output names its execution, over several writes, so that mixed-up
/// routing or lost chunks show.
fn numbered_program(index: usize) -> String {
    format!("for line in 1 2 3 4 5; do echo \"execution {index} line $line\"; done\necho \"done {index}\" >&2")
}

fn expected_stdout(index: usize) -> String {
    (1..=5)
        .map(|line| format!("execution {index} line {line}\n"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_executions_on_one_socket_each_get_their_own_output() -> Result<()> {
    const COUNT: usize = 50;
    let gateway = TestGateway::spawn().await;
    let client = gateway.client().await?;
    // Start all of them before reading any, so they run at the same time.
    let mut executions = Vec::new();
    for index in 0..COUNT {
        let code = numbered_program(index);
        // Fifty at the default 512 MiB would not fit the host's memory budget for
        // executions (the limits add up): a small program asks for what it needs.
        let small = ExecuteRequest {
            limits: Limits {
                memory_bytes: Some(64 << 20),
                ..Limits::default()
            },
            ..request(&format!("c{index}"), "sh", &code)
        };
        executions.push(client.execute(small).await?);
    }
    let outcomes = try_join_all(executions.into_iter().map(|execution| async move {
        sluice_tests::within("an execution to end", execution.wait())
            .await?
            .map_err(anyhow::Error::from)
    }))
    .await?;
    assert_stream_ok(&all_events(&outcomes));

    let mut sessions = std::collections::HashSet::new();
    for (index, outcome) in outcomes.iter().enumerate() {
        assert_eq!(outcome.id, format!("c{index}"));
        assert_lifecycle(&outcome.events);
        assert_eq!(outcome.exit_code(), Some(0), "{:?}", outcome.events);
        assert_eq!(outcome.stdout, expected_stdout(index));
        assert_eq!(outcome.stderr, format!("done {index}\n"));
        assert!(outcome
            .events
            .iter()
            .all(|e| e.id.as_deref() == Some(outcome.id.as_str())));
        // Each execution without a named session gets a session of its own.
        ensure!(
            sessions.insert(outcome.session().map(str::to_owned)),
            "two executions share the session {:?}",
            outcome.session()
        );
    }
    client.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sockets_are_independent() -> Result<()> {
    const SOCKETS: usize = 4;
    const PER_SOCKET: usize = 8;
    let gateway = TestGateway::spawn().await;
    let mut clients = Vec::new();
    for _ in 0..SOCKETS {
        clients.push(gateway.client().await?);
    }
    let work = clients
        .iter()
        .enumerate()
        .map(|(socket, client)| async move {
            // Every socket uses the same ids: ids are per socket.
            let runs = (0..PER_SOCKET).map(|index| {
                let code = numbered_program(socket * 100 + index);
                run(client, request(&format!("e{index}"), "sh", &code))
            });
            try_join_all(runs).await
        });
    let per_socket = try_join_all(work).await?;
    for (socket, outcomes) in per_socket.iter().enumerate() {
        assert_stream_ok(&all_events(outcomes));
        for (index, outcome) in outcomes.iter().enumerate() {
            assert_lifecycle(&outcome.events);
            assert_eq!(outcome.stdout, expected_stdout(socket * 100 + index));
        }
    }
    for client in &clients {
        client.close().await?;
    }
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executions_in_one_session_share_one_gap_free_sequence() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    let in_session = |id: &str, code: &str| ExecuteRequest {
        session: Some("notebook".into()),
        ..request(id, "python", code)
    };
    // `a` and `b` both wait for input, so they run at the same time in one session.
    let echo = "import sys\nfor line in sys.stdin:\n    print('got', line.strip(), flush=True)\n";
    socket.execute(in_session("a", echo)).await?;
    socket.execute(in_session("b", echo)).await?;
    socket.stdin("b", Some("to b\n"), false).await?;
    // `a` is still waiting for its input when `b` answers.
    socket.wait_for_stdout("b", "got to b").await?;
    socket.stdin("a", Some("to a\n"), true).await?;
    socket.stdin("b", None, true).await?;
    socket.wait_for_terminals(&["a", "b"]).await?;
    // A third execution after both ended continues the same sequence.
    socket.execute(in_session("c", "print('third')")).await?;
    socket.events_until_terminal("c").await?;

    let received = socket.received().to_vec();
    assert_stream_ok(&received);
    assert!(received
        .iter()
        .all(|e| e.session.as_deref() == Some("notebook")));
    let last = received.last().map(|e| e.sequence);
    assert_eq!(last, Some(received.len() as u64));
    for (id, output) in [("a", "got to a\n"), ("b", "got to b\n"), ("c", "third\n")] {
        let events: Vec<_> = events_of(&received, id).into_iter().cloned().collect();
        assert_lifecycle(&events);
        assert_eq!(text_of(&events, EventKind::Stdout), output, "{id}");
        assert_eq!(events.last().and_then(|e| e.exit_code), Some(0), "{id}");
    }
    gateway.shutdown().await
}

/// A program that prints four times what its session's event buffer holds, as fast
/// as it can, and exits: every byte arrives, in order, before `completed` (the pump
/// pauses while the buffer is full; what is left at the exit goes out batch after
/// batch: the writer's unit test `what_a_batch_leaves_behind_is_taken_without_news`
/// pins the case where nothing is published after a batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_left_in_a_full_buffer_after_the_exit_is_all_delivered() -> Result<()> {
    const BYTES: usize = 8 << 20;
    let gateway = TestGateway::spawn_with(sluice_gateway::Config {
        replay_bytes: 2 << 20,
        ..sluice_gateway::Config::default()
    })
    .await;
    let client = gateway.client().await?;
    let code = format!(
        "import sys\nblock = b'y' * 65536\nfor _ in range({}):\n    sys.stdout.buffer.write(block)\n",
        BYTES / 65536
    );
    let outcome = run(&client, request("full", "python", &code)).await?;
    assert_stream_ok(&outcome.events);
    ensure!(
        outcome.kind() == EventKind::Completed,
        "{:?}: {}",
        outcome.kind(),
        outcome.stderr
    );
    ensure!(
        outcome.stdout.len() == BYTES && outcome.stdout.bytes().all(|b| b == b'y'),
        "received {} of {BYTES} bytes",
        outcome.stdout.len()
    );
    client.close().await?;
    gateway.shutdown().await
}

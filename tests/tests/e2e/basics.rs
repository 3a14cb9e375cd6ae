//! The basics: hello world in python, bash and sh, exit codes and signals, stdout and
//! stderr kept in order, the program's environment, the HTTP side of the gateway.

use anyhow::{Context as _, Result};
use sluice_protocol::{EventKind, ExecuteRequest};
use sluice_tests::{
    all_events, assert_lifecycle, assert_stream_ok, http_get, is_gateway_session, request, run,
    RawSocket, TestGateway,
};

async fn hello_world(language: &str, code: &str) -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let client = gateway.client().await?;
    let outcome = run(&client, request("hello", language, code)).await?;
    assert_stream_ok(&outcome.events);
    assert_lifecycle(&outcome.events);

    let started = &outcome.events[0];
    assert_eq!(started.kind, EventKind::Started);
    assert_eq!(started.sequence, 1);
    assert!(started.pid.is_some_and(|pid| pid > 1), "{started:?}");
    let session = started
        .session
        .as_deref()
        .context("started has no session")?;
    assert!(is_gateway_session(session), "session id {session:?}");
    assert!(outcome
        .events
        .iter()
        .all(|e| e.id.as_deref() == Some("hello")));

    assert_eq!(outcome.stdout, "hello\n");
    assert_eq!(outcome.stderr, "");
    assert_eq!(outcome.kind(), EventKind::Completed);
    assert_eq!(outcome.exit_code(), Some(0));
    assert_eq!(outcome.terminal.signal, None);
    let usage = outcome.usage().context("completed has no usage")?;
    assert_eq!(usage.stdout_bytes, 6);
    assert_eq!(usage.stderr_bytes, 0);
    assert!(usage.duration_ms >= 0.0, "{usage:?}");
    assert!(usage.first_output_ms.is_some(), "{usage:?}");

    client.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_world_python() -> Result<()> {
    hello_world("python", "print('hello')").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_world_bash() -> Result<()> {
    hello_world("bash", "echo hello").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_world_sh() -> Result<()> {
    hello_world("sh", "echo hello").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_world_over_a_raw_socket_with_the_subprotocol() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = RawSocket::connect(&gateway.url(), Some(sluice_protocol::SUBPROTOCOL)).await?;
    assert_eq!(socket.subprotocol(), Some(sluice_protocol::SUBPROTOCOL));
    socket
        .execute(request("r1", "python", "print('hello')"))
        .await?;
    let events = socket.events_until_terminal("r1").await?;
    assert_lifecycle(&events);
    assert_eq!(events[0].sequence, 1);
    assert_eq!(sluice_tests::text_of(&events, EventKind::Stdout), "hello\n");
    assert_eq!(events.last().and_then(|e| e.exit_code), Some(0));

    // Without the offer the gateway serves the same protocol and selects nothing.
    let mut plain = gateway.raw().await?;
    assert_eq!(plain.subprotocol(), None);
    plain.assert_still_works().await?;

    assert_stream_ok(socket.received());
    assert_stream_ok(plain.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_propagate() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let client = gateway.client().await?;
    let three = run(&client, request("three", "sh", "exit 3")).await?;
    let zero = run(&client, request("zero", "sh", "exit 0")).await?;
    let python = run(&client, request("py", "python", "import sys\nsys.exit(42)")).await?;
    let failing = run(&client, request("fail", "bash", "false")).await?;
    assert_stream_ok(&all_events([&three, &zero, &python, &failing]));

    for (outcome, code) in [(&three, 3), (&zero, 0), (&python, 42), (&failing, 1)] {
        assert_lifecycle(&outcome.events);
        assert_eq!(outcome.kind(), EventKind::Completed, "{:?}", outcome.events);
        assert_eq!(outcome.exit_code(), Some(code), "{:?}", outcome.events);
        assert_eq!(outcome.terminal.signal, None, "{:?}", outcome.events);
    }
    client.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_killed_by_its_own_signal_reports_the_signal() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let client = gateway.client().await?;
    let killed = run(
        &client,
        request("k9", "sh", "echo before\nkill -9 $$\necho after"),
    )
    .await?;
    let python = run(
        &client,
        request(
            "k15",
            "python",
            "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)",
        ),
    )
    .await?;
    assert_stream_ok(&all_events([&killed, &python]));

    assert_lifecycle(&killed.events);
    assert_eq!(killed.stdout, "before\n");
    assert_eq!(killed.kind(), EventKind::Completed);
    assert_eq!(killed.signal(), Some(9));
    assert_eq!(killed.terminal.exit_code, None);

    assert_eq!(python.kind(), EventKind::Completed);
    assert_eq!(python.signal(), Some(15));
    assert_eq!(python.terminal.exit_code, None);
    client.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_and_stderr_each_keep_their_order() -> Result<()> {
    const LINES: usize = 1000;
    let gateway = TestGateway::spawn().await;
    let client = gateway.client().await?;
    let code = format!(
        "import sys\n\
         for i in range({LINES}):\n\
         \x20   stream = sys.stdout if i % 2 == 0 else sys.stderr\n\
         \x20   stream.write(f'line {{i}}\\n')\n\
         \x20   stream.flush()\n"
    );
    let outcome = run(&client, request("interleaved", "python", &code)).await?;
    assert_stream_ok(&outcome.events);
    assert_lifecycle(&outcome.events);
    assert_eq!(outcome.exit_code(), Some(0), "{}", outcome.stderr);

    let expect = |parity: usize| -> Vec<String> {
        (0..LINES)
            .filter(|i| i % 2 == parity)
            .map(|i| format!("line {i}"))
            .collect()
    };
    let stdout: Vec<&str> = outcome.stdout.lines().collect();
    let stderr: Vec<&str> = outcome.stderr.lines().collect();
    assert_eq!(stdout, expect(0));
    assert_eq!(stderr, expect(1));
    let usage = outcome.usage().context("no usage")?;
    assert_eq!(usage.stdout_bytes, outcome.stdout.len() as u64);
    assert_eq!(usage.stderr_bytes, outcome.stderr.len() as u64);
    client.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_program_gets_its_args_env_and_a_clean_environment() -> Result<()> {
    // (Without the network it also gets PIP_RETRIES and NPM_CONFIG_FETCH_RETRIES:
    // PROTOCOL.md 11.2, tested in `offline`.)
    let gateway = TestGateway::spawn().await;
    let client = gateway.client().await?;
    let code = "import os, sys\n\
                print(repr(sys.argv[1:]))\n\
                print(os.environ['GREETING'])\n\
                print(os.environ['PATH'])\n\
                print(os.environ['LANG'])\n\
                print(os.environ['HOME'] == os.getcwd() == os.environ['TMPDIR'])\n\
                allowed = {'PATH', 'HOME', 'LANG', 'TMPDIR', 'GREETING', 'PIP_RETRIES', 'NPM_CONFIG_FETCH_RETRIES'}\n\
                print(sorted(k for k in os.environ if k not in allowed and not k.startswith('PYTHON')))\n";
    let outcome = run(
        &client,
        ExecuteRequest {
            args: vec!["--verbose".into(), "two words".into()],
            env: [("GREETING".to_owned(), "hi there".to_owned())].into(),
            ..request("env", "python", code)
        },
    )
    .await?;
    assert_stream_ok(&outcome.events);
    assert_eq!(outcome.exit_code(), Some(0), "{}", outcome.stderr);
    let lines: Vec<&str> = outcome.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "['--verbose', 'two words']",
            "hi there",
            "/usr/local/bin:/usr/bin:/bin",
            "C.UTF-8",
            "True",
            "[]",
        ]
    );
    client.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_can_be_reused_once_its_execution_ended() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let mut socket = gateway.raw().await?;
    for round in 0..3 {
        socket
            .execute(request("again", "sh", &format!("echo round {round}")))
            .await?;
        let events = socket.events_until_terminal("again").await?;
        assert_lifecycle(&events);
        assert_eq!(
            sluice_tests::text_of(&events, EventKind::Stdout),
            format!("round {round}\n")
        );
    }
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_ok_and_other_paths_are_not_found() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let (status, body) = http_get(gateway.addr(), "/healthz").await?;
    assert_eq!(status, 200);
    assert_eq!(body.trim(), "ok");
    let (status, _) = http_get(gateway.addr(), "/nowhere").await?;
    assert_eq!(status, 404);
    // The HTTP side leaves the WebSocket side alone.
    let mut socket = gateway.raw().await?;
    socket.assert_still_works().await?;
    assert_stream_ok(socket.received());
    gateway.shutdown().await
}

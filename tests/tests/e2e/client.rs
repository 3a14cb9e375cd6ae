//! The Rust client against a real gateway: behaviour a library user relies on that the
//! protocol alone does not promise.

use anyhow::{ensure, Context as _, Result};
use sluice_client::{ClientError, ClientOptions};
use sluice_protocol::{ErrorCode, EventKind, ExecuteRequest};
use sluice_tests::{
    assert_stream_ok, drain, request, text_of, wait_for_output, within, TestGateway,
};

#[tokio::test]
async fn an_unread_execution_does_not_hold_up_another() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let client = gateway.client().await?;
    // `a` produces far more events than any per-execution event count a client might
    // buffer; its consumer only starts reading after `b` has finished.
    let a = client
        .execute_code_stream("python", "for i in range(6000):\n    print(i, flush=True)")
        .await?;
    let b = client.execute_code_stream("sh", "sleep 1; echo b").await?;
    let b = within("b to finish while a is unread", b.wait()).await??;
    assert_eq!(b.stdout, "b\n");
    let a = within("a to finish", a.wait()).await??;
    let want: String = (0..6000).map(|i| format!("{i}\n")).collect();
    assert_eq!(a.stdout, want, "a lost or reordered output");
    assert_eq!(a.exit_code(), Some(0));
    assert_stream_ok(&a.events);
    assert_stream_ok(&b.events);
    Ok(())
}

#[tokio::test]
async fn a_consumer_past_its_budget_is_told_and_its_program_stopped() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let options = ClientOptions {
        execution_buffer_bytes: 64 * 1024,
        ..ClientOptions::default()
    };
    let client = sluice_client::Client::connect_with(&gateway.url(), options).await?;
    let marker = sluice_tests::unique_marker("slow-consumer");
    let flood = client
        .execute_code_stream("bash", &format!("exec -a {marker} yes"))
        .await?;
    sluice_tests::wait_until_running(&marker).await?;
    // Nobody reads `flood`: its buffer passes the budget long before the gateway's output
    // limit (16 MiB), so the client cancels it and the program goes away.
    sluice_tests::wait_until_gone(&marker).await?;
    match within("the flood's outcome", flood.wait()).await? {
        Err(ClientError::SlowConsumer { limit, .. }) => assert_eq!(limit, 64 * 1024),
        other => panic!("expected SlowConsumer, got {other:?}"),
    }
    // The client still works.
    let ok = within("hello world", client.execute_code_stream("sh", "echo ok")).await??;
    let ok = within("hello world to finish", ok.wait()).await??;
    assert_eq!(ok.stdout, "ok\n");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execution_resize_gives_a_terminal_its_new_size() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let client = gateway.client().await?;
    let mut socket_events = client.socket_events().context("socket events taken")?;
    // SIGWINCH is blocked and waited for, so `stty size` runs once the resize is in.
    let code = sluice_tests::WINCH_PROBE;
    let on_terminal = ExecuteRequest {
        tty: true,
        cols: Some(100),
        rows: Some(30),
        ..request("resized", "python", code)
    };
    let mut execution = client.execute(on_terminal).await?;
    let mut events = Vec::new();
    wait_for_output(&mut execution, &mut events, "ready").await?;
    execution.resize(50, 10).await?;
    drain(&mut execution, &mut events).await?;
    assert_stream_ok(&events);
    let terminal = events.last().context("no events")?;
    let out = text_of(&events, EventKind::Stdout);
    ensure!(
        terminal.kind == EventKind::Completed && terminal.exit_code == Some(0),
        "{terminal:?}\noutput: {out:?}"
    );
    ensure!(out.starts_with("30 100\r\nready\r\n"), "{out:?}");
    ensure!(out.ends_with("winch\r\n10 50\r\n"), "{out:?}");
    // Once its terminal event was read, the handle refuses to resize.
    let late = execution.resize(80, 24).await;
    ensure!(
        matches!(&late, Err(ClientError::ExecutionFinished(id)) if id == "resized"),
        "{late:?}"
    );
    // A pipe execution has no terminal: the client sends the frame, and the gateway's
    // refusal arrives among the socket events.
    let mut pipe = client
        .execute(request(
            "piped",
            "sh",
            "echo ready; read line; echo got $line",
        ))
        .await?;
    let mut events = Vec::new();
    wait_for_output(&mut pipe, &mut events, "ready").await?;
    pipe.resize(80, 24).await?;
    let refusal = within("the resize's refusal", socket_events.recv())
        .await?
        .context("the socket events ended")?;
    ensure!(
        refusal.kind == EventKind::Error && refusal.code == Some(ErrorCode::NotATerminal),
        "{refusal:?}"
    );
    // The program never noticed.
    pipe.send_stdin("on\n").await?;
    drain(&mut pipe, &mut events).await?;
    ensure!(
        text_of(&events, EventKind::Stdout) == "ready\ngot on\n",
        "{events:?}"
    );
    client.close().await?;
    gateway.shutdown().await
}

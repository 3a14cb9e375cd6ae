//! The Rust client against a real gateway: behaviour a library user relies on that the
//! protocol alone does not promise.

use anyhow::Result;
use sluice_client::{ClientError, ClientOptions};
use sluice_tests::{assert_stream_ok, within, TestGateway};

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

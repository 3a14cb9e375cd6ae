//! Abuse of named sessions without credentials (issue 10, section 5): answering another
//! client's `execute` with output of one's own by reusing its id, and stalling a
//! session's programs by taking its lead and not reading.

use anyhow::{ensure, Result};
use sluice_protocol::{ErrorCode, EventKind, ExecuteRequest};
use sluice_tests::{assert_socket_refusal, assert_stream_ok, request, text_of, TestGateway};

/// `request` run in the named session `session`.
fn in_session(session: &str, id: &str, language: &str, code: &str) -> ExecuteRequest {
    ExecuteRequest {
        session: Some(session.into()),
        ..request(id, language, code)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_id_with_other_code_is_refused_not_answered_with_the_old_run() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    // The attacker runs `cell-1` first, with its own code.
    let mut attacker = gateway.raw().await?;
    attacker
        .execute(in_session("notebook", "cell-1", "sh", "echo spoofed"))
        .await?;
    let spoofed = attacker.events_until_terminal("cell-1").await?;
    ensure!(text_of(&spoofed, EventKind::Stdout) == "spoofed\n");
    // The victim's `cell-1` differs: refused, and the attacker's output is not shown.
    let mut victim = gateway.raw().await?;
    victim
        .execute(in_session("notebook", "cell-1", "sh", "echo mine"))
        .await?;
    let refusal = victim.next_event().await?;
    assert_socket_refusal(&refusal, ErrorCode::DuplicateId);
    ensure!(
        refusal.for_session.as_deref() == Some("notebook"),
        "the refusal names the session: {refusal:?}"
    );
    // A refusal creates nothing: the victim does not read the session now.
    victim.assert_still_works().await?;
    ensure!(
        victim
            .received()
            .iter()
            .all(|e| e.session.as_deref() != Some("notebook")),
        "the victim received the session's events: {:?}",
        victim.received()
    );
    // The same request repeated is still answered with the original's events.
    let mut resend = gateway.raw().await?;
    resend
        .execute(in_session("notebook", "cell-1", "sh", "echo spoofed"))
        .await?;
    let replayed = resend.events_until_terminal("cell-1").await?;
    ensure!(replayed == spoofed, "{replayed:?} != {spoofed:?}");
    assert_stream_ok(victim.received());
    gateway.shutdown().await
}

//! Output encoding: UTF-8 characters never split across events, invalid bytes replaced,
//! base64 byte-exact, and every event within the configured chunk size.

use anyhow::{Context as _, Result};
use sluice_gateway::Config;
use sluice_protocol::{Encoding, Event, EventKind, ExecuteRequest};
use sluice_tests::{assert_lifecycle, assert_stream_ok, request, run, TestGateway};

const CHUNK_BYTES: usize = 1024;

fn small_chunks() -> Config {
    Config {
        chunk_bytes: CHUNK_BYTES,
        ..Config::default()
    }
}

/// Python that writes `DATA` (a bytes expression) to stdout and to stderr in odd-sized
/// pieces, flushing each, so that piece boundaries fall inside characters.
fn odd_pieces_program(data: &str) -> String {
    format!(
        "import sys\n\
         data = {data}\n\
         sizes = [1, 2, 3, 5, 7, 11, 13, 1021, 1023, 1025, 2047, 4099]\n\
         for stream in (sys.stdout.buffer, sys.stderr.buffer):\n\
         \x20   i, k = 0, 0\n\
         \x20   while i < len(data):\n\
         \x20       n = sizes[k % len(sizes)]\n\
         \x20       stream.write(data[i:i + n])\n\
         \x20       stream.flush()\n\
         \x20       i, k = i + n, k + 1\n"
    )
}

/// Decoded size of one padded base64 text.
fn base64_len(text: &str) -> usize {
    let padding = text.bytes().rev().take_while(|&b| b == b'=').count();
    text.len() / 4 * 3 - padding
}

fn output_events(events: &[Event]) -> impl Iterator<Item = &Event> {
    events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Stdout | EventKind::Stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_byte_characters_are_never_split_across_events() -> Result<()> {
    let gateway = TestGateway::spawn_with(small_chunks()).await;
    let client = gateway.client().await?;
    // 10 bytes per unit: 2 + 3 + 4 + 1, so 1024-byte chunks land inside characters.
    let unit = "é€😀a";
    let units = 3000;
    let code = odd_pieces_program(&format!("('{unit}' * {units}).encode()"));
    let outcome = run(&client, request("utf8", "python", &code)).await?;
    assert_stream_ok(&outcome.events);
    assert_lifecycle(&outcome.events);
    assert_eq!(outcome.exit_code(), Some(0), "{}", outcome.stderr);

    let expected = unit.repeat(units);
    assert_eq!(outcome.stdout, expected);
    assert_eq!(outcome.stderr, expected);
    for event in output_events(&outcome.events) {
        assert_eq!(
            event.encoding, None,
            "utf8 output names an encoding: {event:?}"
        );
        assert!(
            event.data.len() <= CHUNK_BYTES,
            "an event carries {} bytes, above chunk_bytes {CHUNK_BYTES}",
            event.data.len()
        );
        assert!(!event.data.is_empty(), "an empty output event: {event:?}");
        assert!(
            !event.data.contains('\u{fffd}'),
            "a character was split (replacement character in sequence {})",
            event.sequence
        );
    }
    let usage = outcome.usage().context("no usage")?;
    assert_eq!(usage.stdout_bytes, expected.len() as u64);
    assert_eq!(usage.stderr_bytes, expected.len() as u64);
    client.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_becomes_replacement_characters() -> Result<()> {
    let gateway = TestGateway::spawn_with(small_chunks()).await;
    let client = gateway.client().await?;
    // A lone invalid byte, a lead byte without its continuation, and a character cut off
    // by the end of output.
    let raw: &[u8] = b"a\xffb\nc\xc3x\nend\xe2\x82";
    let code = "import sys\n\
                sys.stdout.buffer.write(b'a\\xffb\\nc\\xc3x\\n')\n\
                sys.stdout.buffer.flush()\n\
                sys.stdout.buffer.write(b'end\\xe2\\x82')\n";
    let outcome = run(&client, request("invalid", "python", code)).await?;
    assert_stream_ok(&outcome.events);
    assert_lifecycle(&outcome.events);
    assert_eq!(outcome.exit_code(), Some(0), "{}", outcome.stderr);
    assert_eq!(outcome.stdout, "a\u{fffd}b\nc\u{fffd}x\nend\u{fffd}");
    assert_eq!(outcome.stdout, String::from_utf8_lossy(raw));
    let usage = outcome.usage().context("no usage")?;
    assert_eq!(
        usage.stdout_bytes,
        raw.len() as u64,
        "usage counts raw bytes"
    );
    client.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base64_output_is_byte_exact_and_each_event_decodes_alone() -> Result<()> {
    let gateway = TestGateway::spawn_with(small_chunks()).await;
    let client = gateway.client().await?;
    let repeats = 20;
    let code = odd_pieces_program(&format!("bytes(range(256)) * {repeats}"));
    let outcome = run(
        &client,
        ExecuteRequest {
            encoding: Encoding::Base64,
            ..request("binary", "python", &code)
        },
    )
    .await?;
    assert_stream_ok(&outcome.events);
    assert_lifecycle(&outcome.events);
    assert_eq!(outcome.exit_code(), Some(0));

    let expected: Vec<u8> = (0..=255u8).cycle().take(256 * repeats).collect();
    // The client decodes each event on its own; any event that does not decode alone
    // fails here.
    assert_eq!(outcome.stdout_bytes()?, expected);
    assert_eq!(outcome.stderr_bytes()?, expected);
    for event in output_events(&outcome.events) {
        assert_eq!(event.encoding, Some(Encoding::Base64), "{event:?}");
        assert_eq!(event.data.len() % 4, 0, "unpadded base64: {event:?}");
        assert!(
            event
                .data
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b)),
            "not the standard alphabet: {event:?}"
        );
        let size = base64_len(&event.data);
        assert!(
            (1..=CHUNK_BYTES).contains(&size),
            "an event carries {size} bytes, chunk_bytes is {CHUNK_BYTES}"
        );
    }
    let usage = outcome.usage().context("no usage")?;
    assert_eq!(usage.stdout_bytes, expected.len() as u64);
    assert_eq!(usage.stderr_bytes, expected.len() as u64);
    client.close().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_output_is_chunked_without_loss() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let client = gateway.client().await?;
    // 4 MiB in one write: many default-size (64 KiB) chunks.
    let size = 4 << 20;
    let code = format!(
        "import sys\nsys.stdout.buffer.write(bytes(ord('a') + i % 26 for i in range({size})))\n"
    );
    let outcome = run(&client, request("big", "python", &code)).await?;
    assert_stream_ok(&outcome.events);
    assert_lifecycle(&outcome.events);
    assert_eq!(outcome.exit_code(), Some(0), "{}", outcome.stderr);
    let expected: String = (0..size)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    assert!(outcome.stdout == expected, "the 4 MiB output differs");
    for event in output_events(&outcome.events) {
        assert!(event.data.len() <= sluice_protocol::DEFAULT_CHUNK_BYTES);
    }
    client.close().await?;
    gateway.shutdown().await
}

/// An unbuffered program writes a line in pieces (Python's `print('hi', name)` is four
/// writes); the gateway lets a short piece that does not end its line wait a moment for
/// the rest, so lines come whole. Here each line is two writes 0.2 ms apart, after a
/// pause (so the gateway waits for output and wakes at the first piece): without the
/// wait, nearly every piece was an event of its own. (A piece can still go alone when the program is held up between
/// writes for longer than the wait, as on a busy host: most lines, not all, are checked.)
/// A piece that never ends its line still comes out while the program runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_written_in_pieces_comes_as_one_event() -> Result<()> {
    let gateway = TestGateway::spawn().await;
    let client = gateway.client().await?;
    let lines = 40;
    let code = format!(
        "import os, sys, time\n\
         for i in range({lines}):\n\
         \x20   time.sleep(0.01)\n\
         \x20   os.write(1, b'piece ')\n\
         \x20   time.sleep(0.0002)\n\
         \x20   os.write(1, f'{{i}} of {lines}\\n'.encode())\n\
         print('waiting', end='', flush=True)\n\
         sys.stdin.readline()\n\
         print('done')\n"
    );
    let mut execution = client.execute(request("pieces", "python", &code)).await?;
    let mut events = Vec::new();
    // The unended piece comes while the program still waits for its input.
    let mut text = String::new();
    while !text.ends_with("waiting") {
        let event = sluice_tests::next_within(&mut execution).await?;
        if event.kind == EventKind::Stdout {
            text.push_str(&event.data);
        }
        anyhow::ensure!(!event.is_terminal(), "ended early: {event:?}");
        events.push(event);
    }
    execution.send_stdin("\n").await?;
    execution.close_stdin().await?;
    loop {
        let event = sluice_tests::next_within(&mut execution).await?;
        let end = event.is_terminal();
        events.push(event);
        if end {
            break;
        }
    }
    let stdout: Vec<&Event> = events
        .iter()
        .filter(|e| e.kind == EventKind::Stdout)
        .collect();
    let all: String = stdout.iter().map(|e| e.data.as_str()).collect();
    let expected: String = (0..lines)
        .map(|i| format!("piece {i} of {lines}\n"))
        .chain(["waiting".to_owned(), "done\n".to_owned()])
        .collect();
    assert_eq!(all, expected);
    let cut_lines = stdout
        .iter()
        .filter(|e| e.data.starts_with("piece") && !e.data.ends_with('\n'))
        .count();
    assert!(
        cut_lines <= lines / 4,
        "{cut_lines} of {lines} lines came in pieces: {:?}",
        stdout.iter().map(|e| &e.data).collect::<Vec<_>>()
    );
    client.close().await?;
    gateway.shutdown().await
}

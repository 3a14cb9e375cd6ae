//! WebSocket conformance over a raw TCP socket: the upgrade written by hand, then
//! frames from a small encoder of the test's own (masked or not, RSV bits, any opcode,
//! fragments, any announced length). Each protocol violation closes its socket with the
//! RFC 6455 code that names it (1002, 1007, 1009) and a reason, the connection then
//! ends cleanly (a FIN, not a reset), and another socket's execution runs on. The same
//! encoder's well-formed frames (whole, fragmented around a ping) run a program.

use anyhow::{bail, ensure, Context as _, Result};
use sluice_gateway::Config;
use sluice_protocol::{ClientFrame, ErrorCode, Event, EventKind};
use sluice_tests::{assert_socket_refusal, request, within, TestGateway};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONTINUATION: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// The gateway's `--max-frame-bytes` in these tests; the transport cap is 4x.
const MAX_FRAME: usize = 4096;
const TRANSPORT_CAP: usize = 4 * MAX_FRAME;

/// The bits of a frame's first byte besides the opcode.
const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;
const RSV2: u8 = 0x20;
const RSV3: u8 = 0x10;

/// The masking key of every masked frame (any key will do; the gateway must unmask).
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A frame header: `bits` (FIN and RSV) and `opcode` in the first byte, then the
/// payload length `len` in the shortest form, then the mask if `masked`.
fn header(bits: u8, opcode: u8, masked: bool, len: u64) -> Vec<u8> {
    let mut bytes = vec![bits | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match len {
        0..=125 => bytes.push(mask_bit | len as u8),
        126..=0xffff => {
            bytes.push(mask_bit | 126);
            bytes.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            bytes.push(mask_bit | 127);
            bytes.extend_from_slice(&len.to_be_bytes());
        }
    }
    if masked {
        bytes.extend_from_slice(&MASK);
    }
    bytes
}

/// A whole frame carrying `payload`, masked with [`MASK`] if `masked`.
fn frame(bits: u8, opcode: u8, masked: bool, payload: &[u8]) -> Vec<u8> {
    let mut bytes = header(bits, opcode, masked, payload.len() as u64);
    if masked {
        bytes.extend(payload.iter().zip(MASK.iter().cycle()).map(|(b, m)| b ^ m));
    } else {
        bytes.extend_from_slice(payload);
    }
    bytes
}

/// A masked, final frame: what a well-behaved client sends.
fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(FIN, opcode, true, payload)
}

/// A frame as the gateway sent it.
#[derive(Debug)]
struct Received {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

/// A WebSocket connection spoken by hand over TCP.
struct Wire {
    stream: TcpStream,
    /// Bytes read but not yet taken as a frame.
    buffered: Vec<u8>,
}

impl Wire {
    /// Connects to `gateway` and performs the upgrade, checking the 101 answer.
    async fn open(gateway: &TestGateway) -> Result<Self> {
        let mut stream = within("a TCP connection", TcpStream::connect(gateway.addr())).await??;
        // The key and its accept value are the example of RFC 6455 section 1.3.
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: {}\r\n\r\n",
            sluice_protocol::WS_PATH,
            gateway.addr(),
            sluice_protocol::SUBPROTOCOL,
        );
        stream.write_all(request.as_bytes()).await?;
        let mut wire = Self {
            stream,
            buffered: Vec::new(),
        };
        let end = loop {
            if let Some(at) = wire.buffered.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            ensure!(
                wire.fill().await?,
                "the connection ended during the upgrade"
            );
        };
        let head = String::from_utf8_lossy(&wire.buffered[..end]).to_ascii_lowercase();
        wire.buffered.drain(..end);
        ensure!(head.starts_with("http/1.1 101"), "no upgrade: {head}");
        ensure!(
            head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "{head}"
        );
        ensure!(
            head.contains(&format!(
                "sec-websocket-protocol: {}",
                sluice_protocol::SUBPROTOCOL
            )),
            "{head}"
        );
        Ok(wire)
    }

    /// Reads more bytes; false at the end of the stream.
    async fn fill(&mut self) -> Result<bool> {
        let mut chunk = [0_u8; 16 * 1024];
        let read = within("bytes from the gateway", self.stream.read(&mut chunk))
            .await?
            .context("reading from the gateway")?;
        self.buffered.extend_from_slice(&chunk[..read]);
        Ok(read > 0)
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        within("a frame to be written", self.stream.write_all(bytes))
            .await?
            .context("writing a frame")
    }

    /// The next frame from the gateway; `None` if the connection ended first.
    async fn next_frame(&mut self) -> Result<Option<Received>> {
        loop {
            if let Some((frame, used)) = parse(&self.buffered)? {
                self.buffered.drain(..used);
                return Ok(Some(frame));
            }
            if !self.fill().await? {
                ensure!(
                    self.buffered.is_empty(),
                    "the connection ended inside a frame"
                );
                return Ok(None);
            }
        }
    }

    /// Reads until the execution `id` completes: its stdout, and the payloads of the
    /// pongs that came on the way. Pings are answered; any other event fails.
    async fn run_to_completion(&mut self, id: &str) -> Result<(String, Vec<Vec<u8>>)> {
        let (mut stdout, mut pongs) = (String::new(), Vec::new());
        loop {
            let frame = self
                .next_frame()
                .await?
                .context("closed before completion")?;
            match frame.opcode {
                TEXT => {
                    let event = self.event(frame)?;
                    ensure!(event.id.as_deref() == Some(id), "{event:?}");
                    match event.kind {
                        EventKind::Started => {}
                        EventKind::Stdout => stdout.push_str(&event.data),
                        EventKind::Completed => return Ok((stdout, pongs)),
                        _ => bail!("unexpected {event:?}"),
                    }
                }
                PING => self.send(&masked(PONG, &frame.payload)).await?,
                PONG => pongs.push(frame.payload),
                _ => bail!("expected an event, got {frame:?}"),
            }
        }
    }

    /// The next event, skipping pings (answered) and pongs.
    async fn next_event(&mut self) -> Result<Event> {
        loop {
            let frame = self.next_frame().await?.context("closed before an event")?;
            match frame.opcode {
                TEXT => return self.event(frame),
                PING => self.send(&masked(PONG, &frame.payload)).await?,
                PONG => {}
                _ => bail!("expected an event, got {frame:?}"),
            }
        }
    }

    /// The event a text frame holds.
    fn event(&self, frame: Received) -> Result<Event> {
        ensure!(frame.fin, "the gateway fragments nothing: {frame:?}");
        let text = String::from_utf8(frame.payload)?;
        Event::decode(&text).map_err(|e| anyhow::anyhow!("{e}: {text}"))
    }

    /// The gateway's close frame (code and reason), skipping pings and events; then
    /// the end of the connection, which must be clean: a FIN, not a reset.
    async fn close_frame(&mut self) -> Result<(u16, String)> {
        let close = loop {
            let frame = self
                .next_frame()
                .await?
                .context("the connection ended without a close frame")?;
            match frame.opcode {
                CLOSE => break frame,
                TEXT | PING | PONG => {}
                _ => bail!("unexpected frame before the close: {frame:?}"),
            }
        };
        ensure!(close.fin, "{close:?}");
        ensure!(
            close.payload.len() >= 2,
            "a close frame without a code (1005): {close:?}"
        );
        let code = u16::from_be_bytes([close.payload[0], close.payload[1]]);
        let reason = String::from_utf8(close.payload[2..].to_vec())?;
        match self.next_frame().await {
            Ok(None) => Ok((code, reason)),
            Ok(Some(after)) => bail!("a frame after the close: {after:?}"),
            Err(err) => bail!("the connection did not end cleanly after the close frame: {err:#}"),
        }
    }
}

/// One frame from the start of `bytes` and how many bytes it took, if it is all there.
/// The gateway never masks its frames.
fn parse(bytes: &[u8]) -> Result<Option<(Received, usize)>> {
    let [first, second, ..] = *bytes else {
        return Ok(None);
    };
    ensure!(second & 0x80 == 0, "a masked frame from the gateway");
    ensure!(
        first & (RSV1 | RSV2 | RSV3) == 0,
        "reserved bits from the gateway"
    );
    let (len, at) = match second & 0x7f {
        126 => match bytes.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match bytes.get(2..10) {
            Some(b) => (u64::from_be_bytes(b.try_into()?), 10),
            None => return Ok(None),
        },
        short => (u64::from(short), 2),
    };
    let end = at + usize::try_from(len)?;
    let Some(payload) = bytes.get(at..end) else {
        return Ok(None);
    };
    let frame = Received {
        fin: first & FIN != 0,
        opcode: first & 0x0f,
        payload: payload.to_vec(),
    };
    Ok(Some((frame, end)))
}

/// A small execute frame's JSON.
fn execute_json(id: &str, code: &str) -> String {
    ClientFrame::Execute(request(id, "sh", code)).to_json()
}

/// Each violation: what it is, the bytes that commit it, the close code it earns and a
/// word its reason must hold.
fn violations() -> Vec<(&'static str, Vec<u8>, u16, &'static str)> {
    let json = execute_json("never", "echo never");
    let json = json.as_bytes();
    let mut table = vec![
        (
            "an unmasked frame",
            frame(FIN, TEXT, false, json),
            1002,
            "masked",
        ),
        (
            "RSV1 without an extension",
            frame(FIN | RSV1, TEXT, true, json),
            1002,
            "reserved bits",
        ),
        (
            "RSV2 without an extension",
            frame(FIN | RSV2, TEXT, true, json),
            1002,
            "reserved bits",
        ),
        (
            "RSV3 on a ping",
            frame(FIN | RSV3, PING, true, b""),
            1002,
            "reserved bits",
        ),
        (
            "a fragmented ping",
            frame(0, PING, true, b"hi"),
            1002,
            "fragmented control",
        ),
        (
            "a ping of 126 bytes",
            masked(PING, &[b'p'; 126]),
            1002,
            "125",
        ),
        (
            "a close frame of one byte",
            masked(CLOSE, &[3]),
            1002,
            "one-byte",
        ),
        (
            "a continuation with no message",
            masked(CONTINUATION, json),
            1002,
            "continuation",
        ),
        (
            "a new text frame inside a fragmented message",
            [frame(0, TEXT, true, &json[..10]), masked(TEXT, json)].concat(),
            1002,
            "fragmented message",
        ),
        (
            "a binary frame inside a fragmented text message",
            [frame(0, TEXT, true, &json[..10]), masked(BINARY, b"x")].concat(),
            1002,
            "fragmented message",
        ),
        (
            "invalid UTF-8 in a text frame",
            masked(TEXT, b"{\"type\":\"\xff\xfe\"}"),
            1007,
            "UTF-8",
        ),
        (
            "invalid UTF-8 across fragments",
            // 0xCE opens a two-byte sequence; 0x41 cannot continue it.
            [
                frame(0, TEXT, true, b"{\"a\":\"\xce"),
                frame(FIN, CONTINUATION, true, b"A\"}"),
            ]
            .concat(),
            1007,
            "UTF-8",
        ),
        (
            "a close reason that is not UTF-8",
            masked(CLOSE, &[0x03, 0xe8, 0xff]),
            1007,
            "UTF-8",
        ),
        (
            "a frame announcing more than the transport cap",
            header(FIN, TEXT, true, TRANSPORT_CAP as u64 + 1),
            1009,
            "larger than 16384 bytes",
        ),
        (
            "a frame announcing 2^63 - 1 bytes",
            header(FIN, BINARY, true, u64::MAX >> 1),
            1009,
            "larger than",
        ),
        (
            "fragments that add up to more than the transport cap",
            [
                frame(0, TEXT, true, &vec![b' '; TRANSPORT_CAP / 2 + 1]),
                frame(FIN, CONTINUATION, true, &vec![b' '; TRANSPORT_CAP / 2 + 1]),
            ]
            .concat(),
            1009,
            "larger than",
        ),
    ];
    for opcode in (3..=7).chain(0xB..=0xF) {
        table.push((
            "a reserved opcode",
            masked(opcode, b"x"),
            1002,
            "reserved opcode",
        ));
    }
    table
}

fn config() -> Config {
    Config {
        max_frame_bytes: MAX_FRAME,
        ..Config::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_protocol_violation_closes_its_socket_with_its_code() -> Result<()> {
    let gateway = TestGateway::spawn_with(config()).await;
    // A bystander on a socket of its own, with a program waiting for its input.
    let mut bystander = gateway.raw().await?;
    bystander
        .execute(request("calm", "sh", "read line; echo got $line"))
        .await?;
    bystander
        .next_event_where(|e| e.kind == EventKind::Started)
        .await?;

    for (what, bytes, code, said) in violations() {
        let mut wire = Wire::open(&gateway).await?;
        wire.send(&bytes).await?;
        let (got, reason) = wire
            .close_frame()
            .await
            .with_context(|| format!("after {what}"))?;
        assert_eq!(got, code, "{what}: closed with {got} ({reason})");
        assert!(
            reason.contains(said),
            "{what}: the reason {reason:?} does not say {said:?}"
        );
        assert!(
            reason.len() <= 123,
            "{what}: a reason too long for a close frame"
        );
    }

    // The other socket and its running execution were untouched.
    bystander.stdin("calm", Some("still here\n"), true).await?;
    let events = bystander.events_until_terminal("calm").await?;
    assert_eq!(
        sluice_tests::text_of(&events, EventKind::Stdout),
        "got still here\n"
    );
    bystander.assert_still_works().await?;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_violating_client_still_sending_reads_the_close_frame_then_a_clean_end() -> Result<()> {
    let gateway = TestGateway::spawn_with(config()).await;
    let wire = Wire::open(&gateway).await?;
    let Wire {
        stream,
        mut buffered,
    } = wire;
    let (mut reading, mut writing) = stream.into_split();
    // An oversized frame whose payload keeps coming after the gateway has refused it:
    // bytes the gateway never reads as a frame. Closing a socket that holds unread
    // bytes sends a reset, which may destroy the close frame; the gateway must shut its
    // side first and drain.
    let sender = tokio::spawn(async move {
        let mut bytes = header(FIN, TEXT, true, 8 * TRANSPORT_CAP as u64);
        bytes.resize(bytes.len() + 8 * TRANSPORT_CAP, b'x');
        // Written as far as the gateway takes it; how far is not the point.
        let _ = writing.write_all(&bytes).await;
        writing
    });
    let mut chunk = vec![0_u8; 16 * 1024];
    let close = loop {
        if let Some((frame, used)) = parse(&buffered)? {
            buffered.drain(..used);
            if frame.opcode == CLOSE {
                break frame;
            }
            continue;
        }
        let read = within("the close frame", reading.read(&mut chunk))
            .await?
            .context("the close frame was lost")?;
        ensure!(read > 0, "the connection ended without a close frame");
        buffered.extend_from_slice(&chunk[..read]);
    };
    ensure!(close.payload.len() >= 2, "{close:?}");
    assert_eq!(
        u16::from_be_bytes([close.payload[0], close.payload[1]]),
        1009
    );
    // Then a FIN: the read ends with no error (a reset would be ECONNRESET here).
    let read = within("the end of the connection", reading.read(&mut chunk))
        .await?
        .context("the connection was reset instead of closed")?;
    assert_eq!(read, 0, "bytes after the close frame");
    let _writing = within("the sender to stop", sender).await??;
    gateway.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn well_formed_frames_from_the_same_encoder_run_a_program() -> Result<()> {
    let gateway = TestGateway::spawn_with(config()).await;
    let mut wire = Wire::open(&gateway).await?;

    // One whole masked text frame.
    wire.send(&masked(
        TEXT,
        execute_json("whole", "echo whole").as_bytes(),
    ))
    .await?;
    let (stdout, _) = wire.run_to_completion("whole").await?;
    assert_eq!(stdout, "whole\n");

    // The same in three fragments, a ping between them, and "κ" (0xCE 0xBA) split
    // across two fragments: valid UTF-8 once joined.
    let json = execute_json("parts", "echo κ");
    let bytes = json.as_bytes();
    let split = json.find('κ').context("no κ")? + 1;
    wire.send(
        &[
            frame(0, TEXT, true, &bytes[..5]),
            frame(0, CONTINUATION, true, &bytes[5..split]),
            masked(PING, b"between"),
            frame(FIN, CONTINUATION, true, &bytes[split..]),
        ]
        .concat(),
    )
    .await?;
    let (stdout, pongs) = wire.run_to_completion("parts").await?;
    assert_eq!(stdout, "κ\n");
    assert!(pongs.contains(&b"between".to_vec()), "{pongs:?}");

    // A frame between --max-frame-bytes and the transport cap is refused with
    // `too_large`, and the socket stays open.
    wire.send(&masked(TEXT, &vec![b' '; MAX_FRAME + 1])).await?;
    let refusal = wire.next_event().await?;
    assert_socket_refusal(&refusal, ErrorCode::TooLarge);
    wire.send(&masked(
        TEXT,
        execute_json("after", "echo after").as_bytes(),
    ))
    .await?;
    let (stdout, _) = wire.run_to_completion("after").await?;
    assert_eq!(stdout, "after\n");

    // A clean close from the client is answered in kind.
    wire.send(&masked(CLOSE, &1000_u16.to_be_bytes())).await?;
    let (code, _) = wire.close_frame().await?;
    assert_eq!(code, 1000);
    gateway.shutdown().await
}

/// The gateway reads a socket through a small buffer (a page, so that an idle socket
/// holds little): a frame many times that size, within `--max-frame-bytes`, is still
/// read whole, whether it arrives at once or in pieces, and the socket goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_far_larger_than_the_read_buffer_is_read_whole() -> Result<()> {
    let gateway = TestGateway::spawn_with(Config::default()).await;
    let mut wire = Wire::open(&gateway).await?;
    // A comment pads the program to about 200 KiB, 50 times the read buffer.
    let padding = "# ".to_owned() + &"x".repeat(200 << 10);
    let code = format!("echo big\n{padding}\n");
    wire.send(&masked(TEXT, execute_json("big", &code).as_bytes()))
        .await?;
    let (stdout, _) = wire.run_to_completion("big").await?;
    assert_eq!(stdout, "big\n");
    // The same, in pieces of odd sizes that straddle the buffer's boundaries.
    let code = format!("echo pieces\n{padding}\n");
    let bytes = masked(TEXT, execute_json("pieces", &code).as_bytes());
    for piece in bytes.chunks(4_099) {
        wire.send(piece).await?;
    }
    let (stdout, _) = wire.run_to_completion("pieces").await?;
    assert_eq!(stdout, "pieces\n");
    gateway.shutdown().await
}

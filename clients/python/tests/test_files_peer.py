"""Workspaces and file requests against a scripted peer (no gateway): the frames
the client sends (checked against the protocol's JSON Schema), how it routes the
answers by ``request``, splits a large upload, puts a chunked read together,
refuses bad paths before sending, and what a reconnect does to a request on its
way. The peer plays the gateway over a real WebSocket on port 0; every wait is on
a frame or an answer, never a sleep."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from websockets.asyncio.server import Server, ServerConnection, serve

from sluice import (
    KNOWN_ERROR_CODES,
    AttachRefused,
    FileChanges,
    FileEntry,
    FileRefused,
    FrameError,
    ProtocolError,
    ReconnectPolicy,
    SandboxClient,
    SluiceConnectionError,
    decode_event,
)

#: Bound on every wait; no test should come near it.
WAIT = 10.0
#: Reconnect at once: the peer is local.
FAST = ReconnectPolicy(initial_delay=0.01, max_delay=0.1, give_up_after=10.0)

SCHEMA = Path(__file__).resolve().parents[3] / "protocol" / "schema"
FRAMES = Draft202012Validator(json.loads((SCHEMA / "client-frame.schema.json").read_text()))
EVENTS = Draft202012Validator(json.loads((SCHEMA / "event.schema.json").read_text()))


class Peer:
    """The gateway's side: every frame the client sends (acks left out) in a
    queue, checked against the schema; :meth:`send` answers on the latest socket."""

    def __init__(self) -> None:
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sockets: asyncio.Queue[ServerConnection] = asyncio.Queue()
        self.socket: ServerConnection | None = None
        #: The port of the server that runs :meth:`handler`.
        self.port = 0
        self._sequence = itertools.count(1)

    async def handler(self, socket: ServerConnection) -> None:
        self.socket = socket
        await self.sockets.put(socket)
        async for message in socket:
            frame = json.loads(message)
            errors = [e.message for e in FRAMES.iter_errors(frame)]
            assert not errors, f"the client sent a frame the schema refuses: {frame}: {errors}"
            if frame["type"] != "ack":
                await self.frames.put(frame)

    async def expect(self, kind: str, **fields: object) -> dict[str, Any]:
        """The next frame: of type ``kind``, with ``fields``."""
        frame = await asyncio.wait_for(self.frames.get(), WAIT)
        assert frame["type"] == kind, f"expected a {kind} frame, got {frame}"
        for key, value in fields.items():
            assert frame.get(key) == value, f"{key}: expected {value!r}, got {frame}"
        return frame

    async def send(self, kind: str, **fields: object) -> None:
        """Sends an event (checked against the schema) on the current socket."""
        event: dict[str, Any] = {
            "type": kind,
            "data": "",
            "timestamp": 1767225600.5,
            "sequence": next(self._sequence),
            "id": None,
            "session": None,
        }
        event.update(fields)
        errors = [e.message for e in EVENTS.iter_errors(event)]
        assert not errors, f"the peer would send an event the schema refuses: {event}: {errors}"
        assert self.socket is not None
        await self.socket.send(json.dumps(event))

    async def attached(self, session: str, since: int = 0) -> None:
        await self.send("attached", session=session, sequence=since, resume_from=since + 1)

    def drop(self) -> None:
        assert self.socket is not None
        self.socket.transport.abort()


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    made = Peer()
    server: Server = await serve(made.handler, "127.0.0.1", 0, subprotocols=["sluice.v1"])  # type: ignore[list-item]
    made.port = server.sockets[0].getsockname()[1]
    yield made
    server.close()
    await server.wait_closed()


def client_of(peer: Peer, **options: Any) -> SandboxClient:
    return SandboxClient(f"ws://127.0.0.1:{peer.port}/v1/ws", reconnect=FAST, **options)


async def open_workspace(client: SandboxClient, peer: Peer, session: str = "ws") -> None:
    """Attaches ``session`` with a workspace, the peer answering."""
    stream = client.attach(session, workspace=True)
    starting = asyncio.create_task(stream.start())
    await peer.expect("attach", session=session, workspace=True)
    await peer.attached(session)
    await asyncio.wait_for(starting, WAIT)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def test_write_read_list_delete_round_trip(peer: Peer) -> None:
    async with client_of(peer) as client:
        await open_workspace(client, peer)

        writing = asyncio.create_task(client.write_file("ws", "dir/a.txt", "héllo\n", mode=0o600))
        frame = await peer.expect("write_file", session="ws", path="dir/a.txt", encoding="base64", mode=0o600)
        assert base64.b64decode(frame["data"]) == "héllo\n".encode() and "append" not in frame
        await peer.send("file_written", request=frame["request"], path="dir/a.txt", size=7)
        assert await asyncio.wait_for(writing, WAIT) == 7

        reading = asyncio.create_task(client.read_text("ws", "dir/a.txt"))
        frame = await peer.expect("read_file", session="ws", path="dir/a.txt", encoding="base64")
        assert "offset" not in frame and "length" not in frame
        await peer.send(
            "file_data",
            request=frame["request"],
            path="dir/a.txt",
            offset=0,
            size=7,
            data=b64("héllo\n".encode()),
            encoding="base64",
            last=True,
        )
        assert await asyncio.wait_for(reading, WAIT) == "héllo\n"

        listing = asyncio.create_task(client.list_files("ws", "dir"))
        frame = await peer.expect("list_files", session="ws", path="dir")
        entries = [
            {"name": "a.txt", "kind": "file", "size": 7, "mode": 0o600, "mtime": 1767225600.25},
            {"name": "sub", "kind": "dir", "size": 4096, "mode": 0o755, "mtime": 1767225600.0},
        ]
        await peer.send("file_list", request=frame["request"], path="dir", entries=entries)
        listed = await asyncio.wait_for(listing, WAIT)
        assert listed == [
            FileEntry("a.txt", "file", 7, 0o600, 1767225600.25),
            FileEntry("sub", "dir", 4096, 0o755, 1767225600.0),
        ]
        assert not listed.truncated

        top = asyncio.create_task(client.list_files("ws"))
        frame = await peer.expect("list_files", session="ws")
        assert "path" not in frame, "the workspace itself is listed without a path"
        await peer.send("file_list", request=frame["request"], path="", entries=entries[:1], truncated=True)
        assert (await asyncio.wait_for(top, WAIT)).truncated

        deleting = asyncio.create_task(client.delete_file("ws", "dir", recursive=True))
        frame = await peer.expect("delete_file", session="ws", path="dir", recursive=True)
        await peer.send("file_deleted", request=frame["request"], path="dir")
        await asyncio.wait_for(deleting, WAIT)
        assert peer.frames.empty()


async def test_a_large_upload_goes_in_pieces_that_fit_a_frame(peer: Peer) -> None:
    data = bytes(range(256)) * 100  # 25,600 bytes
    async with client_of(peer, max_frame_bytes=4096) as client:
        await open_workspace(client, peer)
        writing = asyncio.create_task(client.write_file("ws", "big.bin", data, mode=0o640))
        received = b""
        pieces = 0
        while len(received) < len(data):
            frame = await peer.expect("write_file", path="big.bin", encoding="base64")
            text = json.dumps(frame, ensure_ascii=False, separators=(",", ":"))
            assert len(text.encode()) <= 4096, "every piece fits the frame limit"
            if pieces == 0:
                assert "append" not in frame and frame["mode"] == 0o640
            else:
                assert frame["append"] is True and "mode" not in frame
            received += base64.b64decode(frame["data"])
            pieces += 1
            # One piece at a time: the next goes only after this one's answer.
            assert peer.frames.empty()
            await peer.send("file_written", request=frame["request"], path="big.bin", size=len(received))
        assert received == data and pieces > 6
        assert await asyncio.wait_for(writing, WAIT) == len(data)

        # append=True: every piece appends, the first too.
        writing = asyncio.create_task(client.write_file("ws", "log.txt", "more\n", append=True))
        frame = await peer.expect("write_file", path="log.txt", append=True)
        await peer.send("file_written", request=frame["request"], path="log.txt", size=10)
        assert await asyncio.wait_for(writing, WAIT) == 10

        # Empty data: one frame that empties the file.
        writing = asyncio.create_task(client.write_file("ws", "empty", b""))
        frame = await peer.expect("write_file", path="empty", data="")
        await peer.send("file_written", request=frame["request"], path="empty", size=0)
        assert await asyncio.wait_for(writing, WAIT) == 0


async def test_a_refused_piece_stops_the_upload(peer: Peer) -> None:
    async with client_of(peer, max_frame_bytes=4096) as client:
        await open_workspace(client, peer)
        writing = asyncio.create_task(client.write_file("ws", "big.bin", b"x" * 10_000))
        frame = await peer.expect("write_file", path="big.bin")
        await peer.send("file_written", request=frame["request"], path="big.bin", size=3000)
        frame = await peer.expect("write_file", path="big.bin", append=True)
        await peer.send(
            "error", request=frame["request"], for_session="ws", code="workspace_full", data="the workspace is full"
        )
        with pytest.raises(FileRefused) as caught:
            await asyncio.wait_for(writing, WAIT)
        refused = caught.value
        assert (refused.code, refused.operation, refused.session, refused.path) == (
            "workspace_full",
            "write_file",
            "ws",
            "big.bin",
        )
        assert "the workspace is full" in str(refused)
        # Nothing more was sent for it: the next frame is the next request's.
        listing = asyncio.create_task(client.list_files("ws"))
        frame = await peer.expect("list_files")
        await peer.send("file_list", request=frame["request"], path="", entries=[])
        assert await asyncio.wait_for(listing, WAIT) == []


async def test_a_read_is_put_together_from_its_chunks(peer: Peer) -> None:
    content = bytes(range(256)) * 3
    async with client_of(peer) as client:
        await open_workspace(client, peer)
        reading = asyncio.create_task(client.read_file("ws", "f.bin", offset=10, length=700))
        frame = await peer.expect("read_file", path="f.bin", offset=10, length=700, encoding="base64")
        for start in range(10, 710, 300):
            piece = content[start : min(start + 300, 710)]
            await peer.send(
                "file_data",
                request=frame["request"],
                path="f.bin",
                offset=start,
                size=len(content),
                data=b64(piece),
                encoding="base64",
                last=start + 300 >= 710,
            )
        assert await asyncio.wait_for(reading, WAIT) == content[10:710]


async def test_answers_are_routed_by_request(peer: Peer) -> None:
    async with client_of(peer) as client:
        await open_workspace(client, peer)
        first = asyncio.create_task(client.read_file("ws", "one"))
        one = await peer.expect("read_file", path="one")
        second = asyncio.create_task(client.read_file("ws", "two"))
        two = await peer.expect("read_file", path="two")
        third = asyncio.create_task(client.delete_file("ws", "three"))
        three = await peer.expect("delete_file", path="three")
        assert len({one["request"], two["request"], three["request"]}) == 3
        # Answered out of order, interleaved, with a refusal among them.
        await peer.send(
            "file_data",
            request=two["request"],
            path="two",
            offset=0,
            size=3,
            data="dHc=",
            encoding="base64",
            last=False,
        )
        await peer.send(
            "error", request=three["request"], for_session="ws", code="not_found", data="three: no such file"
        )
        await peer.send(
            "file_data", request=one["request"], path="one", offset=0, size=1, data="MQ==", encoding="base64", last=True
        )
        await peer.send(
            "file_data", request=two["request"], path="two", offset=2, size=3, data="bw==", encoding="base64", last=True
        )
        assert await asyncio.wait_for(first, WAIT) == b"1"
        assert await asyncio.wait_for(second, WAIT) == b"two"
        with pytest.raises(FileRefused) as caught:
            await asyncio.wait_for(third, WAIT)
        assert caught.value.code == "not_found" and caught.value.operation == "delete_file"


async def test_a_chunk_out_of_place_is_a_protocol_error(peer: Peer) -> None:
    async with client_of(peer) as client:
        await open_workspace(client, peer)
        reading = asyncio.create_task(client.read_file("ws", "f"))
        frame = await peer.expect("read_file", path="f")
        for offset in (0, 5):
            await peer.send(
                "file_data",
                request=frame["request"],
                path="f",
                offset=offset,
                size=8,
                data="YWI=",
                encoding="base64",
                last=offset > 0,
            )
        with pytest.raises(ProtocolError, match="starts at 5, not 2"):
            await asyncio.wait_for(reading, WAIT)
        listing = asyncio.create_task(client.list_files("ws"))
        frame = await peer.expect("list_files")
        await peer.send("file_written", request=frame["request"], path="", size=1)
        with pytest.raises(ProtocolError, match="answered list_files with file_written"):
            await asyncio.wait_for(listing, WAIT)


async def test_bad_paths_and_modes_are_refused_before_sending(peer: Peer) -> None:
    async with client_of(peer) as client:
        await open_workspace(client, peer)
        for path in ("../x", "a/../b", "/etc/passwd", "", "a//b", "a/", "./a", ".sluice-main.py", "x\0y", "n" * 256):
            with pytest.raises(FrameError) as caught:
                await client.read_file("ws", path)
            assert caught.value.code == "invalid_path", path
            with pytest.raises(FrameError) as caught:
                await client.write_file("ws", path, "x")
            assert caught.value.code == "invalid_path", path
        with pytest.raises(FrameError) as caught:
            await client.list_files("ws", "../up")
        assert caught.value.code == "invalid_path"
        for mode in (0o4755, -1, 0o1000):
            with pytest.raises(FrameError) as caught:
                await client.write_file("ws", "f", "x", mode=mode)
            assert caught.value.code == "bad_request"
        with pytest.raises(FrameError) as caught:
            await client.read_file("ws", "f", offset=-1)
        assert caught.value.code == "bad_request"
        with pytest.raises(FrameError) as caught:
            await client.write_file("", "f", "x")
        assert caught.value.code == "bad_request"
        # A name below the top is not reserved, nor is ".sluice" alone.
        listing = asyncio.create_task(client.list_files("ws", "d/.sluice-x"))
        frame = await peer.expect("list_files", path="d/.sluice-x")
        await peer.send("file_list", request=frame["request"], path="d/.sluice-x", entries=[])
        assert await asyncio.wait_for(listing, WAIT) == []
        assert peer.frames.empty(), "nothing was sent for the refused requests"


async def test_files_changed_comes_before_the_terminal_event(peer: Peer) -> None:
    async with client_of(peer) as client:
        execution = await client.execute("open('out', 'w')", id="x1", session="ws", workspace=True)
        # A reconnecting client acknowledges from the first event on, and says so.
        await peer.expect("execute", id="x1", session="ws", workspace=True, ack=True)
        await peer.send("started", id="x1", session="ws", sequence=1, pid=42)
        changes = {"created": ["out"], "modified": [], "deleted": ["old"]}
        await peer.send("files_changed", id="x1", session="ws", sequence=2, changes=changes)
        await peer.send("completed", id="x1", session="ws", sequence=3, exit_code=0)
        events = [event async for event in execution]
        assert [e.type for e in events] == ["started", "files_changed", "completed"]
        assert events[1].changes == FileChanges(created=("out",), deleted=("old",))
        assert not events[1].is_terminal and events[1].truncated is None
        result = await asyncio.wait_for(execution.wait(), WAIT)
        assert result.files_changed == FileChanges(created=("out",), deleted=("old",))

        # The session stays attached after its execution (it has a workspace): a
        # file request follows without an attach, and no detach came before it.
        listing = asyncio.create_task(client.list_files("ws"))
        frame = await peer.expect("list_files", session="ws")
        await peer.send("file_list", request=frame["request"], path="", entries=[])
        await asyncio.wait_for(listing, WAIT)

        # A session reader sees files_changed of a file request (no id).
        stream = client.attach("ws", since=3)
        starting = asyncio.create_task(stream.start())
        await peer.expect("attach", session="ws", since=3, ack=True)
        await peer.attached("ws", 3)
        await asyncio.wait_for(starting, WAIT)
        changes = {"created": ["new"], "modified": [], "deleted": []}
        await peer.send("files_changed", session="ws", sequence=4, changes=changes)
        event = await asyncio.wait_for(stream.__anext__(), WAIT)
        assert (event.type, event.id, event.changes) == ("files_changed", None, FileChanges(created=("new",)))
        await stream.close()


async def test_execute_with_a_workspace_needs_a_session(peer: Peer) -> None:
    async with client_of(peer) as client:
        with pytest.raises(FrameError) as caught:
            await client.execute("print(1)", workspace=True)
        assert caught.value.code == "bad_request" and "session" in caught.value.message


async def test_a_workspace_stream_closed_keeps_the_session_attached(peer: Peer) -> None:
    async def answer() -> None:
        await peer.expect("attach", session="ws", workspace=True)
        await peer.attached("ws")

    async with client_of(peer) as client:
        answering = asyncio.create_task(answer())
        async with client.attach("ws", workspace=True) as stream:
            await asyncio.wait_for(answering, WAIT)
            assert stream.session == "ws"
        # Closed: no detach, the next frame is the file request.
        deleting = asyncio.create_task(client.delete_file("ws", "f"))
        frame = await peer.expect("delete_file", path="f")
        await peer.send("file_deleted", request=frame["request"], path="f")
        await asyncio.wait_for(deleting, WAIT)


async def test_an_attach_with_a_workspace_can_be_refused(peer: Peer) -> None:
    async with client_of(peer) as client:
        stream = client.attach("ws", workspace=True)
        starting = asyncio.create_task(stream.start())
        await peer.expect("attach", session="ws", workspace=True)
        await peer.send("error", for_session="ws", code="no_workspace", data="this gateway keeps no workspaces")
        with pytest.raises(AttachRefused) as caught:
            await asyncio.wait_for(starting, WAIT)
        assert caught.value.code == "no_workspace"


async def test_a_reconnect_resumes_reads_and_fails_what_may_have_been_done(peer: Peer) -> None:
    content = b"0123456789"
    async with client_of(peer) as client:
        await open_workspace(client, peer)
        reading = asyncio.create_task(client.read_file("ws", "f", length=9))
        read = await peer.expect("read_file", path="f", length=9)
        appending = asyncio.create_task(client.write_file("ws", "log", "x", append=True))
        await peer.expect("write_file", path="log", append=True)
        deleting = asyncio.create_task(client.delete_file("ws", "gone"))
        await peer.expect("delete_file", path="gone")
        replacing = asyncio.create_task(client.write_file("ws", "r", "new"))
        await peer.expect("write_file", path="r")
        await peer.send(
            "file_data",
            request=read["request"],
            path="f",
            offset=0,
            size=10,
            data=b64(content[:4]),
            encoding="base64",
            last=False,
        )
        # The chunk is taken in before the socket goes: wait for a later answer to it.
        listing = asyncio.create_task(client.list_files("ws"))
        listed = await peer.expect("list_files")
        await peer.send("file_list", request=listed["request"], path="", entries=[])
        await asyncio.wait_for(listing, WAIT)

        first = peer.socket
        peer.drop()
        # A request made as the socket goes: sent on the new one, whatever the moment.
        listing = asyncio.create_task(client.list_files("ws", "later"))
        while peer.socket is first:
            await asyncio.wait_for(peer.sockets.get(), WAIT)
        # The new socket: the session again (without workspace: it must still
        # exist), then the read from where it got to.
        attach = await peer.expect("attach", session="ws", since=0)
        assert "workspace" not in attach
        await peer.attached("ws")
        again = await peer.expect("read_file", path="f", offset=4, length=5)
        listed = await peer.expect("list_files", path="later")
        # The writes and the delete may have been done: not sent again; they fail.
        for task in (appending, deleting, replacing):
            with pytest.raises(SluiceConnectionError, match="may or may not have been done"):
                await asyncio.wait_for(task, WAIT)
        await peer.send(
            "file_data",
            request=again["request"],
            path="f",
            offset=4,
            size=10,
            data=b64(content[4:9]),
            encoding="base64",
            last=True,
        )
        await peer.send("file_list", request=listed["request"], path="later", entries=[])
        assert await asyncio.wait_for(reading, WAIT) == content[:9]
        assert await asyncio.wait_for(listing, WAIT) == []
        assert peer.frames.empty()


async def test_requests_waiting_when_the_client_closes_end(peer: Peer) -> None:
    client = client_of(peer)
    await open_workspace(client, peer)
    reading = asyncio.create_task(client.read_file("ws", "f"))
    await peer.expect("read_file", path="f")
    await client.cleanup()
    with pytest.raises(SluiceConnectionError):
        await asyncio.wait_for(reading, WAIT)


def test_file_events_decode_with_their_rules() -> None:
    base: dict[str, Any] = {"data": "", "timestamp": 1767225600.5, "sequence": 1, "id": None, "session": None}
    written = decode_event(json.dumps({**base, "type": "file_written", "request": "r", "path": "a", "size": 3}))
    assert (written.request, written.path, written.size) == ("r", "a", 3)
    listed = decode_event(
        json.dumps(
            {
                **base,
                "type": "file_list",
                "request": "r",
                "path": "",
                "entries": [{"name": "l", "kind": "symlink", "size": 4, "mode": 0o777, "mtime": 5}],
                "truncated": True,
            }
        )
    )
    assert listed.entries == (FileEntry("l", "symlink", 4, 0o777, 5.0),) and listed.truncated is True
    # A kind this version does not know is passed through.
    unknown_kind = {"name": "p", "kind": "door", "size": 0, "mode": 0, "mtime": 1}
    assert decode_event(
        json.dumps({**base, "type": "file_list", "request": "r", "path": "", "entries": [unknown_kind]})
    ).entries == (FileEntry("p", "door", 0, 0, 1.0),)
    changed = decode_event(
        json.dumps(
            {
                **base,
                "type": "files_changed",
                "id": "x",
                "session": "s",
                "changes": {"created": [], "modified": ["m"], "deleted": []},
            }
        )
    )
    assert changed.changes == FileChanges(modified=("m",)) and not changed.is_terminal
    refused = decode_event(
        json.dumps({**base, "type": "error", "code": "not_found", "request": "r", "for_session": "s"})
    )
    assert refused.request == "r" and refused.code in KNOWN_ERROR_CODES and not refused.is_terminal
    assert {"no_workspace", "invalid_path", "not_found", "workspace_full"} <= KNOWN_ERROR_CODES
    broken: list[dict[str, Any]] = [
        {"type": "file_written", "request": "r", "path": "a"},
        {"type": "file_written", "request": "r", "path": "a", "size": 1, "session": "s"},
        {"type": "file_deleted", "path": "a"},
        {"type": "file_data", "request": "r", "path": "a", "offset": 0, "size": 1},
        {"type": "file_data", "request": "r", "path": "a", "offset": 0, "size": 1, "last": "yes"},
        {"type": "file_list", "request": "r", "path": ""},
        {"type": "file_list", "request": "r", "path": "", "entries": [{"name": "x"}]},
        {"type": "files_changed", "changes": {"created": [], "modified": [], "deleted": []}},
        {"type": "files_changed", "session": "s"},
        {"type": "files_changed", "session": "s", "changes": {"created": [1], "modified": [], "deleted": []}},
    ]
    for fields in broken:
        with pytest.raises(ProtocolError):
            decode_event(json.dumps({**base, **fields}))


async def test_file_data_must_be_the_base64_asked_for(peer: Peer) -> None:
    # Text where base64 was asked for (or base64 with stray characters) could decode
    # to other bytes: the read fails rather than return them.
    async with client_of(peer) as client:
        await open_workspace(client, peer)
        for data, encoding in (("defg", None), ("héllo", "base64"), ("ZGVm Zw==", "base64")):
            reading = asyncio.create_task(client.read_file("ws", "f"))
            frame = await peer.expect("read_file", path="f")
            fields: dict[str, Any] = {"encoding": encoding} if encoding else {}
            await peer.send(
                "file_data", request=frame["request"], path="f", offset=0, size=4, data=data, last=True, **fields
            )
            with pytest.raises(ProtocolError, match="not valid base64"):
                await asyncio.wait_for(reading, WAIT)

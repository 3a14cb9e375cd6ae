"""Session workspaces against a real gateway: files written by the client and
read back (text, exact bytes, more than one frame), ranged reads, listings,
deletes, programs that read and write the workspace, ``files_changed``, and the
refusals with their codes. Every wait is on an answer or an event, never a sleep."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
from collections.abc import Awaitable
from typing import Any, TypeVar

import pytest
from websockets.asyncio.client import connect

from sluice import AttachRefused, FileChanges, FileRefused, FrameError, SandboxClient, SessionStream, StreamEvent
from sluice import sync as sluice_sync

T = TypeVar("T")

#: Bound on every wait; no test should come near it.
WAIT = 30.0


async def within(awaitable: Awaitable[T], seconds: float = WAIT) -> T:
    return await asyncio.wait_for(awaitable, seconds)


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


async def open_workspace(client: SandboxClient, prefix: str = "ws") -> tuple[str, SessionStream]:
    """A new session with a workspace, and the stream of its events."""
    session = unique(prefix)
    stream = client.attach(session, workspace=True)
    await within(stream.start())
    return session, stream


async def next_of(stream: SessionStream, kind: str) -> StreamEvent:
    """The next event of ``kind`` on ``stream``."""

    async def find() -> StreamEvent:
        async for event in stream:
            if event.type == kind:
                return event
        raise AssertionError(f"the stream ended before a {kind} event")

    return await within(find())


async def test_write_and_read_back_text_bytes_and_a_file_larger_than_a_frame(gateway_url: str) -> None:
    async with SandboxClient(gateway_url) as client:
        session, _ = await open_workspace(client)
        assert await within(client.write_file(session, "hello.txt", "héllo wörld\n")) == len("héllo wörld\n".encode())
        assert await within(client.read_text(session, "hello.txt")) == "héllo wörld\n"

        # Replace, append, and an empty file.
        assert await within(client.write_file(session, "hello.txt", "one\n")) == 4
        assert await within(client.write_file(session, "hello.txt", "two\n", append=True)) == 8
        assert await within(client.read_text(session, "hello.txt")) == "one\ntwo\n"
        assert await within(client.write_file(session, "empty", b"")) == 0
        assert await within(client.read_file(session, "empty")) == b""

        # Bytes that are not UTF-8, and 3 MiB: twelve pieces up (the frame limit is
        # 1 MiB). A program sees exactly what was sent.
        every_byte = bytes(range(256)) * 4
        big = os.urandom(3 << 20)
        assert await within(client.write_file(session, "bin/every.bin", every_byte)) == 1024
        assert await within(client.write_file(session, "big.bin", big)) == len(big)
        digests = await within(
            client.run(
                "import hashlib\nfor name in ('bin/every.bin', 'big.bin'):\n"
                "    print(hashlib.sha256(open(name, 'rb').read()).hexdigest())",
                session=session,
                check=True,
            )
        )
        assert digests.stdout.split() == [hashlib.sha256(every_byte).hexdigest(), hashlib.sha256(big).hexdigest()]

        # And reads them back exactly, the large one in many chunks.
        assert await within(client.read_file(session, "bin/every.bin")) == every_byte
        # Not UTF-8: read_text replaces, read_file is exact.
        assert "\ufffd" in await within(client.read_text(session, "bin/every.bin"))
        assert await within(client.read_file(session, "big.bin")) == big


async def test_ranged_reads(gateway_url: str) -> None:
    content = bytes(range(256)) * 1024  # 256 KiB: several chunks
    async with SandboxClient(gateway_url) as client:
        session, _ = await open_workspace(client)
        await within(client.write_file(session, "text.txt", "abcdefghij"))
        assert await within(client.read_text(session, "text.txt", offset=3, length=4)) == "defg"
        assert await within(client.read_text(session, "text.txt", offset=7)) == "hij"
        assert await within(client.read_text(session, "text.txt", offset=8, length=100)) == "ij"
        assert await within(client.read_text(session, "text.txt", offset=10)) == ""
        await within(client.write_file(session, "data.bin", content))
        assert await within(client.read_file(session, "data.bin", offset=10, length=5)) == content[10:15]
        assert await within(client.read_file(session, "data.bin", offset=100_000)) == content[100_000:]
        assert await within(client.read_file(session, "data.bin", length=70_000)) == content[:70_000]
        tail = await within(client.read_file(session, "data.bin", offset=len(content) - 3, length=100))
        assert tail == content[-3:], "a length past the end stops at the end"


async def test_list_gives_names_kinds_sizes_and_modes(gateway_url: str) -> None:
    async with SandboxClient(gateway_url) as client:
        session, _ = await open_workspace(client)
        await within(client.write_file(session, "a.txt", "abc"))
        await within(client.write_file(session, "dir/b.bin", b"\x00\x01\x02\x03\x04", mode=0o600))
        await within(client.write_file(session, "dir/deeper/c", "c", mode=0o755))
        made = await within(
            client.run("import os; os.symlink('a.txt', 'link')", session=session, workspace=True, check=True)
        )
        assert made.ok
        top = await within(client.list_files(session))
        assert [(e.name, e.kind) for e in top] == [("a.txt", "file"), ("dir", "dir"), ("link", "symlink")]
        assert not top.truncated
        assert top[0].size == 3 and top[0].mode == 0o644, top[0]
        assert all(e.mtime > 1_600_000_000 for e in top)
        inner = await within(client.list_files(session, "dir"))
        assert [(e.name, e.kind, e.size) for e in inner if e.kind == "file"] == [("b.bin", "file", 5)]
        assert [e.name for e in inner] == ["b.bin", "deeper"]
        assert inner[0].mode == 0o600
        deeper = await within(client.list_files(session, "dir/deeper"))
        assert [(e.name, e.size, e.mode) for e in deeper] == [("c", 1, 0o755)]


async def test_delete_a_file_and_a_directory_with_its_content(gateway_url: str) -> None:
    async with SandboxClient(gateway_url) as client:
        session, _ = await open_workspace(client)
        await within(client.write_file(session, "keep.txt", "k"))
        await within(client.write_file(session, "gone.txt", "g"))
        await within(client.write_file(session, "tree/a/b.txt", "b"))
        await within(client.write_file(session, "tree/c.txt", "c"))
        await within(client.delete_file(session, "gone.txt"))
        assert [e.name for e in await within(client.list_files(session))] == ["keep.txt", "tree"]
        with pytest.raises(FileRefused) as caught:
            await within(client.read_file(session, "gone.txt"))
        assert caught.value.code == "not_found"
        # A directory that is not empty goes only with recursive.
        with pytest.raises(FileRefused) as refused:
            await within(client.delete_file(session, "tree"))
        assert refused.value.code == "bad_request" and "recursive" in refused.value.message, refused.value
        assert [e.name for e in await within(client.list_files(session, "tree"))] == ["a", "c.txt"]
        await within(client.delete_file(session, "tree", recursive=True))
        assert [e.name for e in await within(client.list_files(session))] == ["keep.txt"]
        with pytest.raises(FileRefused) as again:
            await within(client.delete_file(session, "tree", recursive=True))
        assert again.value.code == "not_found"


async def test_a_program_reads_the_clients_file_and_writes_one_the_client_reads(gateway_url: str) -> None:
    code = (
        "import os\n"
        "text = open('input.txt').read()\n"
        "os.makedirs('out', exist_ok=True)\n"
        "open('out/upper.txt', 'w').write(text.upper())\n"
        "open('out/bytes.bin', 'wb').write(bytes(range(256)))\n"
        "os.remove('scratch.txt')\n"
        "print('cwd has', sorted(n for n in os.listdir('.') if not n.startswith('.sluice-')))\n"
    )
    async with SandboxClient(gateway_url) as client:
        session, _ = await open_workspace(client)
        await within(client.write_file(session, "input.txt", "shout this\n"))
        await within(client.write_file(session, "scratch.txt", "temporary"))
        execution = await client.execute(code, session=session, workspace=True)
        events = [event async for event in execution]
        result = await within(execution.wait(check=True))
        assert result.stdout == "cwd has ['input.txt', 'out']\n", result
        assert await within(client.read_text(session, "out/upper.txt")) == "SHOUT THIS\n"

        # files_changed, with this execution's id, just before its terminal event.
        types = [e.type for e in events]
        assert types[-2:] == ["files_changed", "completed"], types
        changed = events[-2]
        assert changed.id == execution.id and changed.session == session and changed.sequence == events[-1].sequence - 1
        assert changed.changes is not None and result.files_changed == changed.changes
        assert changed.changes == FileChanges(
            created=("out", "out/bytes.bin", "out/upper.txt"), modified=(), deleted=("scratch.txt",)
        ), changed.changes

        # The next execution of the session (workspace or not in its request) starts
        # in the same workspace; it changed nothing there, so no files_changed.
        second = await client.execute("print(open('out/upper.txt').read().lower(), end='')", session=session)
        assert [e.type async for e in second] == ["started", "stdout", "completed"]
        again = await within(second.wait())
        assert again.ok and again.stdout == "shout this\n" and again.files_changed is None, again
        # The bytes the program wrote, exactly.
        assert await within(client.read_file(session, "out/bytes.bin")) == bytes(range(256))


async def test_files_changed_after_a_file_request_has_no_execution(gateway_url: str) -> None:
    async with SandboxClient(gateway_url) as client:
        session, stream = await open_workspace(client)
        await within(client.write_file(session, "new.txt", "n"))
        event = await next_of(stream, "files_changed")
        assert (event.id, event.session) == (None, session)
        assert event.changes == FileChanges(created=("new.txt",)), event.changes
        await within(client.delete_file(session, "new.txt"))
        event = await next_of(stream, "files_changed")
        assert event.id is None and event.changes == FileChanges(deleted=("new.txt",)), event.changes


async def test_an_execute_with_a_workspace_opens_it_and_the_client_stays_attached(gateway_url: str) -> None:
    session = unique("exec-ws")
    async with SandboxClient(gateway_url) as client:
        result = await within(
            client.run("open('made.txt', 'w').write('by the program')", session=session, workspace=True)
        )
        assert result.ok and result.files_changed == FileChanges(created=("made.txt",)), result
        # The execution is over; the client still reads the session, so the file
        # frames reach it.
        assert await within(client.read_text(session, "made.txt")) == "by the program"
        # A second client opens the same workspace and sees the same files.
        async with SandboxClient(gateway_url) as other:
            await within(other.attach(session, workspace=True).start())
            assert [e.name for e in await within(other.list_files(session))] == ["made.txt"]
            await within(other.write_file(session, "from-other.txt", "hi"))
        assert await within(client.read_text(session, "from-other.txt")) == "hi"


async def test_refusals_carry_their_codes(gateway_url: str) -> None:
    async with SandboxClient(gateway_url) as client:
        session, _ = await open_workspace(client)
        # A path the protocol forbids never leaves the client.
        for path in ("../x", "/etc/passwd", "a/../../b", ".sluice-main.py"):
            with pytest.raises(FrameError) as bad:
                await client.read_file(session, path)
            assert bad.value.code == "invalid_path", path
        # The gateway's own refusals.
        with pytest.raises(FileRefused) as caught:
            await within(client.read_file(session, "missing.txt"))
        assert (caught.value.code, caught.value.path, caught.value.session) == ("not_found", "missing.txt", session)
        with pytest.raises(FileRefused) as caught:
            await within(client.list_files(session, "nowhere"))
        assert caught.value.code == "not_found"
        await within(client.write_file(session, "d/f.txt", "f"))
        with pytest.raises(FileRefused) as caught:
            await within(client.read_file(session, "d"))
        assert caught.value.code == "invalid_path", "a directory is not read"
        with pytest.raises(FileRefused) as caught:
            await within(client.list_files(session, "d/f.txt"))
        assert caught.value.code == "invalid_path", "a file is not listed"
        # A symbolic link a program made is never followed, in or out.
        await within(
            client.run(
                "import os; os.symlink('/etc', 'out'); os.symlink('d', 'in')",
                session=session,
                workspace=True,
                check=True,
            )
        )
        for path in ("out/passwd", "in/f.txt"):
            with pytest.raises(FileRefused) as caught:
                await within(client.read_file(session, path))
            assert caught.value.code == "invalid_path", path
        with pytest.raises(FileRefused) as caught:
            await within(client.write_file(session, "out/x", "x"))
        assert caught.value.code == "invalid_path"
        # The client goes on.
        assert await within(client.read_text(session, "d/f.txt")) == "f"


async def test_a_session_without_a_workspace_refuses_file_requests(gateway_url: str) -> None:
    session = unique("plain")
    async with SandboxClient(gateway_url) as client:
        # A named session without a workspace, read by this client while its program waits.
        execution = await client.execute("read line; echo $line", "sh", session=session)
        async for event in execution:
            if event.type == "started":
                break
        for request in (
            client.write_file(session, "x.txt", "x"),
            client.read_file(session, "x.txt"),
            client.list_files(session),
            client.delete_file(session, "x.txt"),
        ):
            with pytest.raises(FileRefused) as caught:
                await within(request)
            assert caught.value.code == "no_workspace", caught.value
        await execution.send_stdin("done\n", eof=True)
        result = await within(execution.wait())
        assert result.stdout == "done\n" and result.files_changed is None
        # A session the gateway made for one execution cannot be given one (asked
        # while its execution runs: the session ends with it).
        ephemeral = await client.execute("read line", "sh")
        async for event in ephemeral:
            if event.type == "started":
                break
        assert ephemeral.session is not None
        with pytest.raises(AttachRefused) as refused:
            await within(client.attach(ephemeral.session, workspace=True).start())
        assert refused.value.code == "no_workspace"
        await ephemeral.send_stdin("\n", eof=True)
        assert (await within(ephemeral.wait())).ok


async def test_a_file_request_for_a_session_the_client_does_not_read(gateway_url: str) -> None:
    async with SandboxClient(gateway_url) as owner, SandboxClient(gateway_url) as stranger:
        session, _ = await open_workspace(owner)
        await within(owner.write_file(session, "mine.txt", "m"))
        with pytest.raises(FileRefused) as caught:
            await within(stranger.read_file(session, "mine.txt"))
        assert caught.value.code == "unknown_session"
        # Once it reads the session (attaching, no workspace asked), it may.
        await within(stranger.attach(session).start())
        assert await within(stranger.read_text(session, "mine.txt")) == "m"


async def test_the_gateway_refuses_a_bad_path_itself(gateway_url: str) -> None:
    # The client never sends `../x`: a raw socket checks the gateway's own answer.
    session = unique("raw")
    async with connect(gateway_url, subprotocols=["sluice.v1"]) as socket:  # type: ignore[list-item]

        async def answer(frame: dict[str, Any], request: str | None = None) -> dict[str, Any]:
            await socket.send(json.dumps(frame))
            while True:
                event = json.loads(await within(socket.recv()))
                if request is None or event.get("request") == request:
                    return dict(event)

        attached = await answer({"type": "attach", "session": session, "workspace": True})
        assert attached["type"] == "attached" and attached["session"] == session
        for path in ("../x", "/abs", "a//b", ".sluice-x"):
            refused = await answer({"type": "read_file", "request": "r1", "session": session, "path": path}, "r1")
            assert (refused["type"], refused["code"], refused.get("session")) == ("error", "invalid_path", None)
            assert refused.get("id") is None, refused


def test_the_blocking_client_reaches_a_workspace(gateway_url: str) -> None:
    session = unique("sync")
    with sluice_sync.SandboxClient(gateway_url) as client, client.attach(session, workspace=True):
        assert client.write_file(session, "n.txt", "21") == 2
        result = client.run("n = int(open('n.txt').read()); open('m.txt', 'w').write(str(n * 2))", session=session)
        assert result.ok, result
        assert client.read_text(session, "m.txt") == "42"
        assert client.read_file(session, "n.txt", offset=1) == b"1"
        assert [e.name for e in client.list_files(session)] == ["m.txt", "n.txt"]
        client.delete_file(session, "m.txt")
        with pytest.raises(FileRefused) as caught:
            client.read_file(session, "m.txt")
        assert caught.value.code == "not_found"

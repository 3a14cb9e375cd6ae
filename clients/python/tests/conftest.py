"""Test fixtures: a real gateway (``$SLUICE_BIN serve``) on a free port, and a
TCP proxy whose connections a test can cut."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from urllib.parse import urlparse

import pytest

STARTUP_TIMEOUT = 30.0


@dataclass
class Gateway:
    """A running gateway: its WebSocket URL and the lines of its log."""

    url: str
    process: subprocess.Popen[str]
    log: list[str]


def _binary() -> str:
    """The gateway binary, ``$SLUICE_BIN``."""
    binary = os.environ.get("SLUICE_BIN")
    if not binary:
        pytest.fail(
            "SLUICE_BIN is not set: set it to the path of a built gateway binary, "
            "e.g. SLUICE_BIN=target/release/sluice",
            pytrace=False,
        )
    if not os.access(binary, os.X_OK):
        pytest.fail(f"SLUICE_BIN={binary!r} is not an executable file", pytrace=False)
    return binary


def _start_gateway(*extra: str) -> Gateway:
    process = subprocess.Popen(
        [_binary(), "serve", "--listen", "127.0.0.1:0", "--log-json", *extra],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    stderr = process.stderr
    found: list[str] = []
    ready = threading.Event()
    lines: list[str] = []

    def drain() -> None:
        # Keeps reading the gateway's log so that it never blocks on a full pipe.
        for line in stderr:
            lines.append(line)
            if not ready.is_set():
                with contextlib.suppress(ValueError, AttributeError):
                    fields = json.loads(line).get("fields", {})
                    if fields.get("message") == "listening":
                        found.append(fields["url"])
                        ready.set()
        ready.set()

    threading.Thread(target=drain, name="gateway-log", daemon=True).start()
    if not ready.wait(STARTUP_TIMEOUT) or not found:
        process.kill()
        process.wait()
        pytest.fail("the gateway did not log 'listening':\n" + "".join(lines[-20:]), pytrace=False)
    return Gateway(found[0], process, lines)


def _stop_gateway(gateway: Gateway) -> None:
    gateway.process.terminate()
    try:
        gateway.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        gateway.process.kill()
        gateway.process.wait()


@pytest.fixture(scope="session")
def gateway() -> Iterator[Gateway]:
    """One gateway shared by the tests that need nothing special."""
    started = _start_gateway()
    yield started
    _stop_gateway(started)


@pytest.fixture(scope="session")
def small_gateway() -> Iterator[Gateway]:
    """A gateway with a small replay buffer and output chunks, to make the
    reconnect tests exercise acknowledgements and many events."""
    started = _start_gateway("--replay-events", "64", "--chunk-bytes", "4096")
    yield started
    _stop_gateway(started)


@dataclass
class AuthGateway:
    """A gateway that requires a credential: an API key (``key``, tenant
    ``acme``, made with ``sluice key add``) or an HS256 token signed with
    ``secret``."""

    gateway: Gateway
    key: str
    secret: bytes

    @property
    def url(self) -> str:
        return self.gateway.url


@pytest.fixture(scope="session")
def auth_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthGateway]:
    """One gateway started with ``--api-keys`` and ``--jwt-secret-file``."""
    directory = tmp_path_factory.mktemp("auth")
    keys = directory / "keys"
    made = subprocess.run(
        [_binary(), "key", "add", "acme", "--file", str(keys)],
        capture_output=True,
        text=True,
        timeout=STARTUP_TIMEOUT,
        check=False,
    )
    if made.returncode != 0:
        pytest.fail(f"sluice key add failed: {made.stderr}", pytrace=False)
    secret = os.urandom(32).hex().encode()
    secret_file = directory / "jwt-secret"
    secret_file.write_bytes(secret)
    started = _start_gateway("--api-keys", str(keys), "--jwt-secret-file", str(secret_file))
    yield AuthGateway(started, made.stdout.strip(), secret)
    _stop_gateway(started)


@pytest.fixture
def gateway_url(gateway: Gateway) -> str:
    return gateway.url


class CuttableProxy:
    """A TCP proxy in front of the gateway; :meth:`cut` drops every connection
    it carries (both sides), as a network failure would."""

    def __init__(self, target_host: str, target_port: int) -> None:
        #: Where new connections go (a test may point it elsewhere).
        self.target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections = 0
        self.port = 0
        self._connected = asyncio.Condition()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def wait_for_connections(self, count: int) -> None:
        """Returns once ``count`` connections have been accepted in all."""
        async with self._connected:
            await self._connected.wait_for(lambda: self.connections >= count)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        async with self._connected:
            self._connected.notify_all()
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._abort(sink)

    def _abort(self, writer: asyncio.StreamWriter) -> None:
        self._writers.discard(writer)
        writer.transport.abort()

    def cut(self) -> None:
        """Drops every connection now (without a WebSocket close)."""
        for writer in list(self._writers):
            self._abort(writer)

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()


@pytest.fixture
async def proxy_for(request: pytest.FixtureRequest) -> AsyncIterator[type[CuttableProxy]]:
    """Yields a factory; proxies it made are stopped at the end of the test."""
    made: list[CuttableProxy] = []

    class Factory(CuttableProxy):
        def __init__(self, host: str, port: int) -> None:
            super().__init__(host, port)
            made.append(self)

    yield Factory
    for proxy in made:
        await proxy.stop()


def proxied_url(url: str, proxy: CuttableProxy) -> str:
    """``url`` with the proxy's port."""
    parsed = urlparse(url)
    return parsed._replace(netloc=f"127.0.0.1:{proxy.port}").geturl()


def target_of(url: str) -> tuple[str, int]:
    parsed = urlparse(url)
    assert parsed.hostname is not None and parsed.port is not None
    return parsed.hostname, parsed.port

"""Credentials against a real gateway that requires one (``--api-keys`` and
``--jwt-secret-file``): an API key or a signed token runs programs; none, a
wrong one or an expired token fails at once with :class:`AuthenticationError`
and the gateway's reason (no hang, no retry loop); a reconnect refused for its
credential is not tried again."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
import time
from typing import Any

import pytest

from sluice import AuthenticationError, ExecutionError, ReconnectPolicy, SandboxClient, SluiceConnectionError

from conftest import AuthGateway, CuttableProxy, Gateway, proxied_url, target_of

WAIT = 30.0


def mint(secret: bytes, claims: dict[str, Any]) -> str:
    """An HS256 JWT with ``claims``, made by hand (RFC 7519 compact form)."""

    def part(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    header = part(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = part(json.dumps(claims).encode())
    signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{part(signature)}"


async def refused(url: str, token: str | None) -> AuthenticationError:
    """Connects (with the default reconnect policy) and returns the error."""
    client = SandboxClient(url, token)
    try:
        with pytest.raises(AuthenticationError) as caught:
            await asyncio.wait_for(client.setup(), WAIT)
    finally:
        await client.cleanup()
    return caught.value


async def hello(url: str, token: str | None) -> None:
    async with SandboxClient(url, token) as client:
        result = await asyncio.wait_for(client.run("print('hello')"), WAIT)
    assert result.stdout == "hello\n"
    assert result.exit_code == 0


async def test_an_api_key_runs_a_program(auth_gateway: AuthGateway) -> None:
    await hello(auth_gateway.url, auth_gateway.key)


async def test_the_token_comes_from_the_environment(auth_gateway: AuthGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_TOKEN", auth_gateway.key)
    await hello(auth_gateway.url, None)
    # An explicit token wins over the environment.
    error = await refused(auth_gateway.url, auth_gateway.key + "x")
    assert "not valid" in error.reason


async def test_no_key_or_a_wrong_key_is_refused_with_the_reason(
    auth_gateway: AuthGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SLUICE_TOKEN", raising=False)
    error = await refused(auth_gateway.url, None)
    assert error.reason.startswith("a credential is required"), error.reason
    assert str(error).startswith("the gateway refused the credential: ")
    assert isinstance(error, SluiceConnectionError)
    wrong = auth_gateway.key + "x"
    error = await refused(auth_gateway.url, wrong)
    assert "not valid" in error.reason
    assert wrong not in str(error)


def test_the_token_is_not_in_the_options_repr() -> None:
    client = SandboxClient("ws://127.0.0.1:1/v1/ws", "sluice_secret-value")
    assert "sluice_secret-value" not in repr(client._options)


async def test_a_signed_token_runs_and_an_expired_one_is_refused(auth_gateway: AuthGateway) -> None:
    now = int(time.time())
    valid = mint(auth_gateway.secret, {"sub": "acme", "exp": now + 600})
    await hello(auth_gateway.url, valid)
    # Well past the gateway's leeway for clocks that disagree.
    expired = mint(auth_gateway.secret, {"sub": "acme", "exp": now - 3600})
    error = await refused(auth_gateway.url, expired)
    assert "expired" in error.reason
    forged = mint(b"another secret of at least 32 bytes!", {"sub": "acme", "exp": now + 600})
    error = await refused(auth_gateway.url, forged)
    assert "not valid" in error.reason


async def test_a_reconnect_refused_for_its_credential_is_not_retried(
    gateway: Gateway, auth_gateway: AuthGateway, proxy_for: type[CuttableProxy]
) -> None:
    # The client connects through a proxy to a gateway that needs no credential;
    # after the cut, the proxy leads to one that refuses the client's key.
    proxy = proxy_for(*target_of(gateway.url))
    await proxy.start()
    policy = ReconnectPolicy(initial_delay=0.05, max_delay=0.2, give_up_after=WAIT)
    url = proxied_url(gateway.url, proxy)
    async with SandboxClient(url, "not-a-key-of-the-second-gateway", reconnect=policy) as client:
        execution = await client.execute("import sys; print('ready', flush=True); sys.stdin.readline()")
        async for event in execution:
            if event.type == "stdout":
                break
        proxy.target = target_of(auth_gateway.url)
        proxy.cut()
        with pytest.raises(ExecutionError) as ended:
            await asyncio.wait_for(execution.wait(check=True), WAIT)
        assert ended.value.code == "connection_lost"
        assert "refused the credential" in str(ended.value)
        with pytest.raises(AuthenticationError) as later:
            await client.run("print(1)")
        assert "not valid" in later.value.reason
    # The first connection and one refused attempt: no retry loop.
    assert proxy.connections == 2


async def test_a_credential_in_the_url_stays_out_of_connection_errors() -> None:
    """An unreachable gateway's error names the URL, but not a ``token`` in its query."""
    with socket.socket() as probe:  # a port nothing listens on once it is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"ws://127.0.0.1:{port}/v1/ws?token=sluice_secret-in-url"
    client = SandboxClient(url, None, reconnect=False)
    try:
        with pytest.raises(SluiceConnectionError) as caught:
            await asyncio.wait_for(client.setup(), WAIT)
    finally:
        await client.cleanup()
    assert "sluice_secret-in-url" not in str(caught.value)
    assert "token=REDACTED" in str(caught.value)


async def test_runtimes_lists_only_what_the_credential_allows(auth_gateway: AuthGateway) -> None:
    claims = {"sub": "acme", "exp": int(time.time()) + 600, "languages": ["sh"], "limits": {"timeout_ms": 5000}}
    token = mint(auth_gateway.secret, claims)
    async with SandboxClient(auth_gateway.url, token) as client:
        catalog = await asyncio.wait_for(client.runtimes(), WAIT)
    assert [r.language for r in catalog.runtimes] == ["sh"]
    assert (catalog.limits["timeout_ms"].default, catalog.limits["timeout_ms"].max) == (5000, 5000)

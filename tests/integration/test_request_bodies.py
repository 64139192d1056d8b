"""Unfinished request bodies cannot fill the host's disk: a real server, the attacks a
sandbox or anyone on the network can make with bodies that never end."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlparse

import pytest_twisted
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from cli_server.web.request import BODIES, MAX_BODIES_IN_MEMORY

from .conftest import _reactor, stop_server
from .helpers import Wire, wait_until
from .test_anthropic_proxy import World, _world

MIB = 1024 * 1024


@pytest_twisted.async_yield_fixture
async def world(db_url: str) -> AsyncIterator[World]:
    """A running server with a real sandbox and its door (test_anthropic_proxy's world)."""
    w, port = await _world(db_url)
    yield w
    await stop_server(w.app)
    if port.connected:
        await port.stopListening()


def spilled() -> int:
    """Bytes this process (the server) holds in deleted temporary files."""
    total = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(tempfile.gettempdir()) and "(deleted)" in target:
                total += os.fstat(int(fd)).st_size
        except OSError:
            pass
    return total


async def unfinished(port: int, length: int, sent: int, path: str, headers: str = "") -> Wire:
    """A POST that announces ``length`` bytes and sends ``sent`` of them, then stalls."""
    wire = Wire()
    await connectProtocol(TCP4ClientEndpoint(_reactor(), "127.0.0.1", port), wire)
    transport: Any = wire.transport
    transport.write(
        f"POST {path} HTTP/1.1\r\nHost: x\r\n{headers}content-length: {length}\r\n\r\n".encode()
    )
    chunk = b"x" * MIB
    for _ in range(sent // MIB):
        transport.write(chunk)
    return wire


async def attack(port: int, token: str | None) -> list[Wire]:
    """Six connections from one source, each 31 MiB into a 32 MiB body that never ends. One
    source may hold a quarter of the budget: two bodies are held, the others refused (503)."""
    headers = f"x-api-key: {token}\r\n" if token else ""
    wires = [
        await unfinished(port, 32 * MIB, 31 * MIB, "/proxy/anthropic/v1/messages", headers)
        for _ in range(6)
    ]

    def refused() -> list[Wire]:
        return [w for w in wires if w.received.startswith(b"HTTP/1.1 503 ")]

    # (until every byte sent was read: each body is refused, or held whole)
    await wait_until(
        _reactor(),
        lambda: (
            BODIES.held % (31 * MIB) == 0
            and len(refused()) + BODIES.held // (31 * MIB) == len(wires)
        ),
        timeout=60,
        step=0.2,
    )
    assert spilled() == 0
    assert BODIES.held <= MAX_BODIES_IN_MEMORY // 4
    assert len(refused()) >= 4
    for wire in refused():
        assert b"overloaded_error" in wire.received
    held = [w for w in wires if not w.received]
    assert len(held) == BODIES.held // (31 * MIB)
    return wires


def close(wires: list[Wire]) -> None:
    for wire in wires:
        if wire.transport is not None:
            wire.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_door_bodies_stay_off_disk(world: World) -> None:
    """Through a sandbox's own door, with its token: in memory, within the door's share of
    the budget; others still send bodies meanwhile; the memory comes back."""
    port = world.app.server.backend.doors[world.sandbox][1]
    wires = await attack(port, world.token)
    try:
        main = world.app.client()
        login = await main.call("POST", "/api/auth/login", {"username": "x", "password": "y"})
        assert login.code == 401, login
    finally:
        close(wires)
    await wait_until(_reactor(), lambda: BODIES.held == 0, timeout=10)


@pytest_twisted.ensureDeferred
async def test_main_listener_bodies_stay_off_disk(world: World) -> None:
    """The same attack on the public listener with no token at all."""
    port = urlparse(world.app.base).port
    assert port is not None
    close(await attack(port, None))
    await wait_until(_reactor(), lambda: BODIES.held == 0, timeout=10)


@pytest_twisted.ensureDeferred
async def test_oversized_length_refused_before_the_body(world: World) -> None:
    """A Content-Length over the route's cap gets 413 with no byte of the body sent, on the
    API, on the Anthropic path and through a door."""
    main = urlparse(world.app.base).port
    assert main is not None
    door = world.app.server.backend.doors[world.sandbox][1]
    for port, path, length, marker in [
        (main, "/api/auth/login", 2 * MIB, b"payload_too_large"),
        (main, "/proxy/anthropic/v1/messages", 33 * MIB, b"request_too_large"),
        (door, "/proxy/anthropic/v1/messages", 1024 * MIB, b"request_too_large"),
    ]:
        wire = await unfinished(port, length, 0, path, "content-type: application/json\r\n")
        await wait_until(_reactor(), lambda w=wire: w.closed.called, timeout=10)
        assert wire.received.startswith(b"HTTP/1.1 413 "), wire.received[:200]
        assert marker in wire.received
    assert spilled() == 0

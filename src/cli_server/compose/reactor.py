"""The reactor the composition root is given, as the interfaces its builders use."""

from __future__ import annotations

from twisted.internet.interfaces import (
    IReactorCore,
    IReactorFDSet,
    IReactorFromThreads,
    IReactorProcess,
    IReactorSocket,
    IReactorTCP,
    IReactorTime,
)


class IServerReactor(
    IReactorCore,
    IReactorTime,
    IReactorTCP,
    IReactorSocket,
    IReactorProcess,
    IReactorFDSet,
    IReactorFromThreads,
):
    """Every interface a builder of ``cli_server.compose`` names: each builder is typed with
    the ones it uses (``build_store`` only ``IReactorTime``), and this is what provides them
    all. Twisted's reactors on Linux provide each of them (none declares this combination,
    which exists for the type checker); a test's ``MemoryReactorClock`` provides those a
    tree touches before it starts."""

"""Run a short-lived helper program from the reactor, with a deadline."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import AnyStr, Protocol

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IProcessProtocol, IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure


@frozen
class ProcessResult:
    argv: tuple[str, ...]
    code: int
    output: str  # stdout and stderr interleaved; helpers we run print little


class ProcessTimedOut(Exception):
    pass


class ProcessReactor(Protocol):
    """What running a helper program needs of the reactor: ``IReactorProcess.spawnProcess``
    and ``IReactorTime.callLater`` (for its deadline). Twisted's interfaces are nominal and
    cannot be combined in one annotation, hence this protocol; every real reactor fits it."""

    def spawnProcess(
        self,
        processProtocol: IProcessProtocol,
        executable: bytes | str,
        args: Sequence[bytes | str],
        env: Mapping[AnyStr, AnyStr] | None = None,
        path: None | bytes | str = None,
        uid: int | None = None,
        gid: int | None = None,
        usePTY: bool = False,
        childFDs: Mapping[int, int | str] | None = None,
    ) -> IProcessTransport: ...

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object, **kwargs: object
    ) -> IDelayedCall: ...


class _Collector(ProcessProtocol):
    def __init__(self, done: Deferred[int]) -> None:
        self._done = done
        self.chunks: list[bytes] = []

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.chunks.append(data)

    def processEnded(self, reason: Failure) -> None:
        if reason.check(ProcessDone):
            self._done.callback(0)
        elif isinstance(reason.value, ProcessTerminated):
            code, signal = reason.value.exitCode, reason.value.signal
            self._done.callback(code if code is not None else 128 + (signal or 0))
        else:
            self._done.errback(reason)


async def run_process(
    reactor: ProcessReactor,
    argv: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    uid: int | None = None,
    gid: int | None = None,
    path: str | None = None,
) -> ProcessResult:
    """Run ``argv`` to completion; kill it and raise ProcessTimedOut after ``timeout`` seconds."""
    done: Deferred[int] = Deferred()
    collector = _Collector(done)
    transport = reactor.spawnProcess(
        collector, argv[0], list(argv), env=dict(env or {}), path=path, uid=uid, gid=gid
    )
    timer = reactor.callLater(timeout, transport.signalProcess, "KILL")
    try:
        code = await done
    finally:
        if timer.active():
            timer.cancel()
    output = b"".join(collector.chunks).decode("utf-8", "replace")
    if not timer.active() and code == 128 + 9:
        raise ProcessTimedOut(f"{argv[0]} did not finish within {timeout:.0f}s")
    return ProcessResult(tuple(argv), code, output)

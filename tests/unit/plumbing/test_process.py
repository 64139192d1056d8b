"""Running a helper program with a deadline: its exit status, its output, its timeout.

The reactor is a fake one (a clock that records spawns): the program's life is played by
hand through the process protocol it was given.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IProcessProtocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from cli_server.plumbing.process import ProcessResult, ProcessTimedOut, run_process


class _Transport:
    """What the program's protocol is handed back: signals are remembered."""

    pid = 4242

    def __init__(self) -> None:
        self.signals: list[str | int] = []

    def signalProcess(self, signalID: str | int) -> None:
        self.signals.append(signalID)


class _Spawned:
    def __init__(self, protocol: IProcessProtocol, argv: list[str], kw: dict[str, object]):
        self.protocol = protocol
        self.argv = argv
        self.kw = kw
        self.transport = _Transport()


class _Reactor:
    """A clock that spawns nothing: each spawn is recorded for the test to play."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.spawned: list[_Spawned] = []

    def spawnProcess(
        self,
        processProtocol: IProcessProtocol,
        executable: bytes | str,
        args: Sequence[bytes | str],
        env: Mapping[str, str] | None = None,
        path: None | bytes | str = None,
        uid: int | None = None,
        gid: int | None = None,
        usePTY: bool = False,
        childFDs: Mapping[int, int | str] | None = None,
    ) -> _Transport:
        kw: dict[str, object] = {"env": env, "path": path, "uid": uid, "gid": gid}
        spawned = _Spawned(processProtocol, [str(a) for a in args], kw)
        self.spawned.append(spawned)
        return spawned.transport

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object, **kwargs: object
    ) -> IDelayedCall:
        return self.clock.callLater(delay, callable, *args, **kwargs)


def _ends(spawned: _Spawned, reason: BaseException) -> None:
    spawned.protocol.processEnded(Failure(reason))


class RunProcessTests(SynchronousTestCase):
    def test_exit_status_and_output(self) -> None:
        """The program's exit status and its output (stdout and stderr in order) come back,
        and it ran with the environment, directory and account asked for."""
        reactor = _Reactor()
        d = Deferred.fromCoroutine(
            run_process(
                reactor, ["/bin/tool", "-x"], timeout=5, env={"A": "1"}, uid=7, gid=8, path="/"
            )
        )
        (spawned,) = reactor.spawned
        self.assertEqual(spawned.argv, ["/bin/tool", "-x"])
        self.assertEqual(spawned.kw, {"env": {"A": "1"}, "path": "/", "uid": 7, "gid": 8})
        spawned.protocol.childDataReceived(1, b"out ")
        spawned.protocol.childDataReceived(2, b"err")
        _ends(spawned, ProcessTerminated(exitCode=3))
        self.assertEqual(self.successResultOf(d), ProcessResult(("/bin/tool", "-x"), 3, "out err"))
        self.assertEqual(reactor.clock.getDelayedCalls(), [])  # its deadline is cancelled

    def test_clean_exit_is_zero(self) -> None:
        """A program that ends well exits 0; nothing is signalled."""
        reactor = _Reactor()
        d = Deferred.fromCoroutine(run_process(reactor, ["/bin/true"], timeout=5))
        (spawned,) = reactor.spawned
        _ends(spawned, ProcessDone(0))
        self.assertEqual(self.successResultOf(d).code, 0)
        self.assertEqual(spawned.transport.signals, [])

    def test_killed_by_a_signal(self) -> None:
        """A program killed by a signal (not by us) reports 128 + the signal, as a shell does."""
        reactor = _Reactor()
        d = Deferred.fromCoroutine(run_process(reactor, ["/bin/tool"], timeout=5))
        (spawned,) = reactor.spawned
        _ends(spawned, ProcessTerminated(signal=15))
        self.assertEqual(self.successResultOf(d).code, 128 + 15)

    def test_deadline_kills_it(self) -> None:
        """At its deadline the program is sent SIGKILL; its death is a ProcessTimedOut."""
        reactor = _Reactor()
        d = Deferred.fromCoroutine(run_process(reactor, ["/bin/slow"], timeout=15))
        (spawned,) = reactor.spawned
        reactor.clock.advance(14.9)
        self.assertEqual(spawned.transport.signals, [])
        reactor.clock.advance(0.1)
        self.assertEqual(spawned.transport.signals, ["KILL"])
        _ends(spawned, ProcessTerminated(signal=9))
        failure = self.failureResultOf(d, ProcessTimedOut)
        self.assertIn("/bin/slow did not finish within 15s", str(failure.value))

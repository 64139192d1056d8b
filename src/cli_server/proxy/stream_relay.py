"""The server's side of the stream relay: a child process that carries open event streams.

See ``relay_process.py`` for why. ``StreamRelay`` starts the child, sends it a stream's two
sockets (``carry``), lets Twisted forget them (``let_go``), cuts streams whose session was
revoked, and starts the child again if it dies (its streams die with it; browsers'
``EventSource`` reconnects). While there is no child, or it is behind, or a socket is not
plain TCP (TLS), streams stay in the front door: carrying is an optimisation, never needed.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

from attrs import define, field
from twisted.application.service import Service
from twisted.internet import error
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from cli_server.proxy.live import Whose
from cli_server.proxy.relay_process import ID, START
from cli_server.proxy.send_now import idle_tcp

_ENV = ("PATH", "PYTHONPATH", "LANG", "LC_ALL")  # what the child needs of ours: no secrets


@define(eq=False)
class StreamRelay(Service):
    reactor: Any
    gauge: Any = None  # Prometheus gauge of streams carried, if metrics are on
    stop_timeout: float = 5.0
    _log = Logger()
    _control: socket.socket | None = field(default=None, init=False)
    _reports: _Reports | None = field(default=None, init=False)
    _process: Any = field(default=None, init=False)
    _ended: Deferred[None] | None = field(default=None, init=False)
    _restart: Any = field(default=None, init=False)
    _backoff: float = field(default=1.0, init=False)
    _started_at: float = field(default=0.0, init=False)
    _outbox: list[bytes] = field(factory=list, init=False)  # cuts for the child to take
    _retry: Any = field(default=None, init=False)
    _stuck_since: float | None = field(default=None, init=False)  # cuts waiting since
    _null: int = field(default=-1, init=False)  # /dev/null, what let_go points sockets at
    _next_id: int = field(default=0, init=False)
    _streams: dict[int, Whose] = field(factory=dict, init=False)  # whose each carried one is

    def startService(self) -> None:
        super().startService()
        # (opened once: dup2 needs no free descriptor, so letting go cannot fail on EMFILE)
        self._null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self._start_child()

    @property
    def ready(self) -> bool:
        return self._control is not None

    @property
    def carrying(self) -> int:
        return len(self._streams)

    def _start_child(self) -> None:
        self._restart = None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        protocol = _Child(self)
        env = {name: os.environ[name] for name in _ENV if name in os.environ}
        argv = [sys.executable, "-m", "cli_server.proxy.relay_process", "3"]
        fds = {0: "w", 1: "r", 2: "r", 3: theirs.fileno()}
        try:
            self._process = self.reactor.spawnProcess(
                protocol, sys.executable, argv, env=env, childFDs=fds
            )
        except OSError:
            self._log.failure("starting the stream relay; event streams stay in the server")
            ours.close()
            return
        finally:
            theirs.close()
        self._ended = Deferred()
        self._started_at = self.reactor.seconds()
        self._control = ours
        self._reports = _Reports(ours, self)
        self.reactor.addReader(self._reports)

    def carry(self, browser: Any, sandbox: Any, chunked: bool, whose: Whose) -> bool:
        """Sends both connections' sockets to the child; True if it has them now. The caller
        then forgets them and calls ``let_go``."""
        control = self._control
        if control is None or not (idle_tcp(browser) and idle_tcp(sandbox)):
            return False
        self._next_id += 1
        fds = [browser.getHandle().fileno(), sandbox.getHandle().fileno()]
        try:
            socket.send_fds(control, [START.pack(b"S", self._next_id, chunked)], fds)
        except OSError:  # (BlockingIOError: the child is behind; the stream stays here)
            return False
        self._streams[self._next_id] = whose
        self._count()
        return True

    def let_go(self, *transports: Any) -> None:
        """Twisted forgets connections whose sockets the child now has, without closing them
        for it: a shutdown() here would end the child's connection too."""
        for transport in transports:
            self.reactor.removeReader(transport)
            self.reactor.removeWriter(transport)
            # Our descriptor now names /dev/null instead of the socket (the child has its
            # own): Twisted's shutdown() on it fails harmlessly, its close() closes that.
            os.dup2(self._null, transport.getHandle().fileno(), inheritable=False)
            transport.connectionLost(Failure(error.ConnectionDone("carried by the stream relay")))

    def cut(self, **match: str) -> None:
        """Ends carried streams whose fields equal ``match`` (a revoked session's)."""
        ids = [stream_id for stream_id, whose in self._streams.items() if whose.matches(match)]
        for start in range(0, len(ids), 500):  # (a message is at most a few KiB)
            self._outbox.append(b"X" + b"".join(ID.pack(i) for i in ids[start : start + 500]))
        if self._retry is None:
            self._send_outbox()

    def _send_outbox(self) -> None:
        """Cuts go out in order; those the child cannot take yet are tried again shortly,
        for a few seconds: then the child is stopped, and every stream with it, so that a
        revocation always wins."""
        self._retry = None
        while self._outbox and self._control is not None:
            try:
                self._control.send(self._outbox[0])
            except BlockingIOError:
                now = self.reactor.seconds()
                if self._stuck_since is None:
                    self._stuck_since = now
                if now - self._stuck_since < 5.0:
                    self._retry = self.reactor.callLater(0.05, self._send_outbox)
                    return
                self._log.warn("the stream relay takes no cuts: stopping it")
                self._kill()
                break
            except OSError:
                break  # the child is gone, and its streams with it
            del self._outbox[0]
        self._outbox.clear()
        self._stuck_since = None

    def ended(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)
        self._count()

    def _count(self) -> None:
        if self.gauge is not None:
            self.gauge.set(len(self._streams))

    def _control_lost(self) -> None:
        if self._reports is not None:
            self.reactor.removeReader(self._reports)
            self._reports = None
        if self._control is not None:
            self._control.close()
            self._control = None

    def child_ended(self, reason: Failure) -> None:
        self._control_lost()
        self._streams.clear()
        self._count()
        self._process = None
        ended, self._ended = self._ended, None
        if ended is not None:
            ended.callback(None)
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self._outbox.clear()
        if self.running:
            if self.reactor.seconds() - self._started_at > 60:
                self._backoff = 1.0  # (it ran well: this is not a crash loop)
            self._log.warn(
                "the stream relay exited ({reason}); starting it again in {delay:.0f} s",
                reason=reason.getErrorMessage(),
                delay=self._backoff,
            )
            self._restart = self.reactor.callLater(self._backoff, self._start_child)
            self._backoff = min(self._backoff * 2, 60.0)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._restart is not None and self._restart.active():
            self._restart.cancel()
        self._restart = None
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._null >= 0:
            os.close(self._null)
            self._null = -1
        ended = self._ended
        if ended is None:
            return succeed(None)
        self._control_lost()  # the child sees its end close, closes its streams and exits
        kill = self.reactor.callLater(self.stop_timeout, self._kill)
        return ended.addBoth(lambda _: kill.cancel() if kill.active() else None)

    def _kill(self) -> None:
        if self._process is not None:
            try:
                self._process.signalProcess("KILL")
            except error.ProcessExitedAlready:
                pass


@implementer(IReadDescriptor)
class _Reports:
    """The child's messages: which streams ended."""

    def __init__(self, sock: socket.socket, relay: StreamRelay) -> None:
        self._sock, self._relay = sock, relay

    def fileno(self) -> int:
        return self._sock.fileno()

    def doRead(self) -> Any:
        for _ in range(1000):  # (a bounded batch per reactor turn)
            try:
                msg = self._sock.recv(64)
            except BlockingIOError:
                return None
            except OSError:
                return CONNECTION_LOST
            if not msg:
                return CONNECTION_DONE
            if msg[:1] == b"E" and len(msg) == 1 + ID.size:
                self._relay.ended(ID.unpack(msg[1:])[0])
        return None

    def connectionLost(self, reason: Failure) -> None:
        self._relay._control_lost()

    def logPrefix(self) -> str:
        return "stream-relay"


class _Child(ProcessProtocol):
    _log = Logger()

    def __init__(self, relay: StreamRelay) -> None:
        self._relay = relay

    def errReceived(self, data: bytes) -> None:
        self._log.warn("stream relay: {text}", text=data.decode(errors="replace").rstrip())

    def processEnded(self, reason: Failure) -> None:
        self._relay.child_ended(reason)

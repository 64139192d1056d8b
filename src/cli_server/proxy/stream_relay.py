"""The server's side of the relay: a child process that serves keep-alive browser
connections, event streams included.

See ``relay_process.py`` for why. ``StreamRelay`` starts the child, sends it a browser
connection with its sandbox connection and a grant (``serve``), lets Twisted forget them
(``let_go``), renews grants and takes connections back when the child asks, counts what the
child relayed as activity, cuts what a revoked session has there, and starts the child again
if it dies (what it carried dies with it; browsers reconnect). While there is no child, or it
is behind, or a socket is not plain TCP (TLS), requests stay in the front door: the relay is
an optimisation, never needed.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any
from typing import Protocol as Interface

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
from cli_server.proxy.relay_wire import (
    BACK,
    ID,
    RENEWED,
    Back,
    Grant,
    keep_message,
    read_activity,
)
from cli_server.proxy.send_now import idle_tcp

_ENV = ("PATH", "PYTHONPATH", "LANG", "LC_ALL")  # what the child needs of ours: no secrets


class Lease(Interface):
    """What the front door keeps of a connection it gave the child."""

    def renew(self) -> float | None | Deferred[float | None]:
        """Seconds more the grant may hold, or None: not renewed."""

    def take_back(self, sock: socket.socket, data: bytes, why: Back, sandbox_id: str) -> None:
        """The connection comes back: its socket, the bytes not used, why."""


@define(eq=False)
class StreamRelay(Service):
    reactor: Any
    gauge: Any = None  # Prometheus gauge of what is carried, if metrics are on
    # Told of the requests the child relayed: sandbox id, how many since it last told.
    on_relayed: Callable[[str, int], None] | None = None
    stop_timeout: float = 5.0
    monotonic: Callable[[], float] = time.monotonic  # the clock grants are given on, as the child's
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
    _carried: dict[int, Whose] = field(factory=dict, init=False)  # whose each connection is
    # What the front door said of each connection it had served (renewal, taking back).
    _leases: dict[int, Lease] = field(factory=dict, init=False)

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
        return len(self._carried)

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
            self._log.failure("starting the relay process; requests stay in the server")
            ours.close()
            return
        finally:
            theirs.close()
        self._ended = Deferred()
        self._started_at = self.reactor.seconds()
        self._control = ours
        self._reports = _Reports(ours, self)
        self.reactor.addReader(self._reports)

    def serve(
        self,
        browser: Any,
        sandbox: Any,
        grant: Grant,
        seconds: float,
        data: bytes,
        whose: Whose,
        lease: Lease,
    ) -> bool:
        """Sends a browser connection, from its next request on (``data`` holds it), to the
        child, with the sandbox connection to send it on and a grant for ``seconds``; True
        if it has them now. The caller then forgets them and calls ``let_go``. ``lease``
        renews the grant while the connection is in use, and takes it back."""
        control = self._control
        if control is None or not (idle_tcp(browser) and idle_tcp(sandbox)):
            return False
        self._next_id += 1
        fds = [browser.getHandle().fileno(), sandbox.getHandle().fileno()]
        message = keep_message(self._next_id, self.monotonic() + seconds, grant, data)
        try:
            socket.send_fds(control, [message], fds)
        except OSError:  # (BlockingIOError: the child is behind; the front door serves it)
            return False
        self._carried[self._next_id] = whose
        self._leases[self._next_id] = lease
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
            transport.connectionLost(Failure(error.ConnectionDone("carried by the relay process")))

    def cut(self, **match: str) -> None:
        """Ends carried connections whose fields equal ``match`` (a revoked session's)."""
        ids = [conn_id for conn_id, whose in self._carried.items() if whose.matches(match)]
        for start in range(0, len(ids), 500):  # (a message is at most a few KiB)
            self._outbox.append(b"X" + b"".join(ID.pack(i) for i in ids[start : start + 500]))
        if self._retry is None:
            self._send_outbox()

    def expire(self, sandbox_id: str) -> None:
        """The sandbox's status changed: grants for it are over, so each connection comes
        back with its next request and is routed afresh (a request or stream under way
        goes on; a sandbox that stops ends it anyway)."""
        for conn_id, whose in self._carried.items():
            if whose.sandbox_id == sandbox_id:
                self._outbox.append(RENEWED.pack(b"G", conn_id, 0.0))
        if self._retry is None:
            self._send_outbox()

    def _send_outbox(self) -> None:
        """Cuts and expiries go out in order; those the child cannot take yet are tried again
        shortly, for a few seconds: then the child is stopped, and every connection with it,
        so that a revocation always wins."""
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
                self._log.warn("the relay process takes no cuts: stopping it")
                self._kill()
                break
            except OSError:
                break  # the child is gone, and its connections with it
            del self._outbox[0]
        self._outbox.clear()
        self._stuck_since = None

    def ended(self, conn_id: int) -> None:
        self._carried.pop(conn_id, None)
        self._leases.pop(conn_id, None)
        self._count()

    def came_back(self, conn_id: int, why: Back, sock: socket.socket, data: bytes) -> None:
        lease, whose = self._leases.get(conn_id), self._carried.get(conn_id)
        self.ended(conn_id)
        if lease is None or whose is None:
            sock.close()
            return
        try:
            lease.take_back(sock, data, why, whose.sandbox_id)
        except Exception:
            self._log.failure("taking a connection back from the relay")
            sock.close()

    def renew(self, conn_id: int) -> None:
        """The child asks for a longer grant for a connection in use."""
        lease = self._leases.get(conn_id)
        try:
            seconds = lease.renew() if lease is not None else None
        except Exception:
            self._log.failure("renewing a grant")
            seconds = None
        if isinstance(seconds, Deferred):
            seconds.addErrback(lambda f: self._log.failure("renewing a grant", f))
            seconds.addCallback(self._renewed, conn_id, lease)
        else:
            self._renewed(seconds, conn_id, lease)

    def _renewed(self, seconds: float | None, conn_id: int, lease: Lease | None) -> None:
        control = self._control
        if control is None or self._leases.get(conn_id) is not lease:
            return  # (it ended meanwhile, or the child is not the one that asked)
        until = self.monotonic() + seconds if seconds is not None else 0.0
        try:
            control.send(RENEWED.pack(b"G", conn_id, until))
        except OSError:
            pass  # (the child is behind: the grant runs out, and the connection comes back)

    def relayed(self, counts: dict[str, int]) -> None:
        if self.on_relayed is not None:
            for sandbox_id, count in counts.items():
                self.on_relayed(sandbox_id, count)

    def _count(self) -> None:
        if self.gauge is not None:
            self.gauge.set(len(self._carried))

    def _control_lost(self) -> None:
        if self._reports is not None:
            self.reactor.removeReader(self._reports)
            self._reports = None
        if self._control is not None:
            self._control.close()
            self._control = None

    def child_ended(self, reason: Failure) -> None:
        self._control_lost()
        self._carried.clear()
        self._leases.clear()
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
                "the relay process exited ({reason}); starting it again in {delay:.0f} s",
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
        self._control_lost()  # the child sees its end close, closes its connections and exits
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
    """The child's messages: what ended, what came back, what was relayed."""

    _log = Logger()

    def __init__(self, sock: socket.socket, relay: StreamRelay) -> None:
        self._sock, self._relay = sock, relay

    def fileno(self) -> int:
        return self._sock.fileno()

    def doRead(self) -> Any:
        for _ in range(1000):  # (a bounded batch per reactor turn)
            try:
                msg, fds, _, _ = socket.recv_fds(self._sock, 1 << 18, 1, socket.MSG_CMSG_CLOEXEC)
            except BlockingIOError:
                return None
            except OSError:
                return CONNECTION_LOST
            if not msg:
                return CONNECTION_DONE
            try:
                self._message(msg, fds)
            except ValueError:
                self._log.warn("the relay process said something we do not understand")
        return None

    def _message(self, msg: bytes, fds: list[int]) -> None:
        kind = msg[:1]
        if kind == b"B" and len(msg) >= BACK.size and len(fds) == 1:
            _, conn_id, why = BACK.unpack_from(msg)
            if why in set(Back):
                self._relay.came_back(
                    conn_id, Back(why), socket.socket(fileno=fds[0]), msg[BACK.size :]
                )
                return
        for fd in fds:
            os.close(fd)
        if kind == b"R" and len(msg) == 1 + ID.size:
            self._relay.renew(ID.unpack_from(msg, 1)[0])
        elif kind in (b"B", b"E") and len(msg) >= 1 + ID.size:
            # (a B without its socket, say at EMFILE: that connection is lost; it ends here)
            self._relay.ended(ID.unpack_from(msg, 1)[0])
        elif kind == b"A":
            self._relay.relayed(read_activity(msg))
        else:
            raise ValueError(kind)

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

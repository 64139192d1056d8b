"""The server's side of the relay workers: child processes, one per core by default, that
carry the browser connections the router grants them.

See ``relay/worker.py`` for why. ``RelayWorkers`` starts the workers, sends each browser
connection with a grant to the one carrying fewest (``serve``), lets Twisted forget it
(``let_go``), renews grants and takes connections back when a worker asks, counts what they
relayed as activity, sends every cut to the workers, and starts a worker again if
it dies (what it carried dies with it; browsers reconnect). While no worker is ready, or a
socket is not plain TCP (TLS), requests go to twisted.web: the workers are an optimisation,
never needed. Workers share nothing; the server is the one authority over grants.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any
from typing import Protocol as Interface

from attrs import define, field
from prometheus_client import Gauge
from twisted.application.service import Service
from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IProcessTransport,
    IReadDescriptor,
    IWriteDescriptor,
)
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.tcp import Connection
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from cli_server.proxy.live import Whose
from cli_server.proxy.relay.wire import (
    BACK,
    DRAIN,
    DRAINING,
    ID,
    RENEWED,
    Back,
    Grant,
    keep_message,
    read_activity,
)

_ENV = ("PATH", "PYTHONPATH", "LANG", "LC_ALL")  # what a worker needs of ours: no secrets


class Lease(Interface):
    """What the router keeps of a connection it gave a worker."""

    def renew(self) -> float | None | Deferred[float | None]:
        """Seconds more the grant may hold, or None: not renewed."""

    def take_back(self, sock: socket.socket, data: bytes, why: Back, sandbox_id: str) -> None:
        """The connection comes back: its socket, the bytes not used, why."""


@define(eq=False)
class _Carried:
    worker: _Worker
    whose: Whose
    lease: Lease


class WorkersReactor(Interface):
    """What the workers use of the reactor: IReactorProcess (spawning), IReactorFDSet (their
    control sockets, and letting go of a connection), IReactorTime (restarts, retries)."""

    def spawnProcess(
        self,
        processProtocol: ProcessProtocol,
        executable: str,
        args: list[str],
        env: dict[str, str] | None = None,
        *,
        childFDs: Mapping[int, int | str] | None = None,
    ) -> IProcessTransport: ...

    def addReader(self, reader: IReadDescriptor) -> None: ...

    def removeReader(self, reader: IReadDescriptor) -> None: ...

    def removeWriter(self, writer: IWriteDescriptor) -> None: ...

    def seconds(self) -> float: ...

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object, **kw: object
    ) -> IDelayedCall: ...


@define(eq=False)
class RelayWorkers(Service):
    reactor: WorkersReactor
    count: int = 1
    gauge: Gauge | None = None  # Prometheus gauge of what is carried, if metrics are on
    # Told of the requests a worker relayed: sandbox id, how many since it last told.
    on_relayed: Callable[[str, int], None] | None = None
    stop_timeout: float = 5.0
    monotonic: Callable[[], float] = time.monotonic  # the clock grants are given on, as theirs
    _log = Logger()
    _workers: list[_Worker] = field(factory=list, init=False)
    _null: int = field(default=-1, init=False)  # /dev/null, what let_go points sockets at
    _next_id: int = field(default=0, init=False)
    _carried: dict[int, _Carried] = field(factory=dict, init=False)
    _drains: int = field(default=0, init=False)  # the number of the last drain asked

    def startService(self) -> None:
        super().startService()
        # (opened once: dup2 needs no free descriptor, so letting go cannot fail on EMFILE)
        self._null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self._workers = [_Worker(self, n) for n in range(self.count)]
        for worker in self._workers:
            worker.start()

    @property
    def ready(self) -> bool:
        return any(worker.control is not None for worker in self._workers)

    @property
    def carried_count(self) -> int:
        """How many browser connections the workers carry now."""
        return len(self._carried)

    def carried(self) -> list[int]:
        """The ids of the browser connections the workers carry now, in the order given."""
        return list(self._carried)

    def carrier(self, conn_id: int) -> _Worker | None:
        """The worker carrying connection ``conn_id``, if one does."""
        carried = self._carried.get(conn_id)
        return None if carried is None else carried.worker

    @property
    def workers(self) -> tuple[_Worker, ...]:
        """The worker processes' protocols, in order (read-only: for tests and metrics)."""
        return tuple(self._workers)

    def serve(
        self,
        browser: object,  # (a transport: only a plain TCP Connection is taken)
        grant: Grant,
        seconds: float,
        data: bytes,
        whose: Whose,
        lease: Lease,
    ) -> bool:
        """Sends a browser connection, from its next request on (``data`` holds it), to the
        worker carrying fewest, with a grant for ``seconds``; True if it has it now. The
        caller then forgets it and calls ``let_go``. ``lease`` renews the grant while the
        connection is in use, and takes it back."""
        ready = [w for w in self._workers if w.control is not None]
        # Only a plain (not TLS) TCP connection that is open, and not a unix socket's (a
        # worker names the browser by its IP address).
        if (
            not ready
            or not isinstance(browser, Connection)
            or not isinstance(browser.getPeer(), IPv4Address | IPv6Address)
            or getattr(browser, "TLS", False)
            or not browser.connected
            or browser.disconnecting
        ):
            return False
        worker = min(ready, key=lambda w: w.carrying)
        assert worker.control is not None
        self._next_id += 1
        message = keep_message(self._next_id, self.monotonic() + seconds, grant, data)
        try:
            socket.send_fds(worker.control, [message], [browser.getHandle().fileno()])
        except OSError:  # (BlockingIOError: the worker is behind; twisted.web serves it)
            return False
        self._carried[self._next_id] = _Carried(worker, whose, lease)
        worker.given = self._drains  # (only its answer to a later drain covers this one)
        worker.carrying += 1
        self._count()
        return True

    def let_go(self, transport: object) -> None:
        """Twisted forgets a connection whose socket a worker now has, without closing it
        for the worker: a shutdown() here would end the worker's connection too."""
        assert isinstance(transport, Connection)  # (``serve`` gives on only those)
        self.reactor.removeReader(transport)
        self.reactor.removeWriter(transport)
        # Our descriptor now names /dev/null instead of the socket (the worker has its own):
        # Twisted's shutdown() on it fails harmlessly, its close() closes that.
        os.dup2(self._null, transport.getHandle().fileno(), inheritable=False)
        transport.connectionLost(Failure(error.ConnectionDone("carried by a relay worker")))

    def cut(self, **match: str) -> None:
        """Ends carried connections whose fields equal ``match`` (a revoked session's)."""
        for worker in self._workers:
            ids = [
                i for i, c in self._carried.items() if c.worker is worker and c.whose.matches(match)
            ]
            for start in range(0, len(ids), 500):  # (a message is at most a few KiB)
                worker.send(b"X" + b"".join(ID.pack(i) for i in ids[start : start + 500]))

    def drain(self) -> None:
        """The server stops: each worker closes its idle connections, and the others after
        their answers, and says how many requests it still carries; asked again (each
        call) until ``in_flight`` is 0. Event streams and WebSockets go on until ``stop``."""
        self._drains += 1
        for worker in self._workers:
            worker.send(DRAIN.pack(b"D", self._drains))

    @property
    def in_flight(self) -> int:
        """Workers not yet done with their requests, as their last answers to ``drain`` say."""
        return sum(1 for worker in self._workers if not worker.drained)

    def ended(self, conn_id: int) -> _Carried | None:
        carried = self._carried.pop(conn_id, None)
        if carried is not None:
            carried.worker.carrying -= 1
            self._count()
        return carried

    def came_back(self, conn_id: int, why: Back, sock: socket.socket, data: bytes) -> None:
        carried = self.ended(conn_id)
        if carried is None:
            sock.close()
            return
        try:
            carried.lease.take_back(sock, data, why, carried.whose.sandbox_id)
        except Exception:
            self._log.failure("taking a connection back from a relay worker")
            sock.close()

    def renew(self, conn_id: int) -> None:
        """A worker asks for a longer grant for a connection in use."""
        carried = self._carried.get(conn_id)
        try:
            seconds = carried.lease.renew() if carried is not None else None
        except Exception:
            self._log.failure("renewing a grant")
            seconds = None
        if isinstance(seconds, Deferred):
            seconds.addErrback(lambda f: self._log.failure("renewing a grant", f))
            seconds.addCallback(self._renewed, conn_id, carried)
        else:
            self._renewed(seconds, conn_id, carried)

    def _renewed(self, seconds: float | None, conn_id: int, carried: _Carried | None) -> None:
        if carried is None or self._carried.get(conn_id) is not carried:
            return  # (it ended meanwhile)
        until = self.monotonic() + seconds if seconds is not None else 0.0
        # Only to a worker that keeps up: a renewal must never queue ahead of a cut. One
        # not sent lets the grant lapse; the connection's next request comes back here.
        carried.worker.send(RENEWED.pack(b"G", conn_id, until), unless_behind=True)

    def relayed(self, counts: dict[str, int]) -> None:
        if self.on_relayed is not None:
            for sandbox_id, count in counts.items():
                self.on_relayed(sandbox_id, count)

    def worker_ended(self, worker: _Worker) -> None:
        for conn_id in [i for i, c in self._carried.items() if c.worker is worker]:
            self.ended(conn_id)

    def _count(self) -> None:
        if self.gauge is not None:
            self.gauge.set(len(self._carried))

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        if self._null >= 0:
            os.close(self._null)
            self._null = -1
        return DeferredList([worker.stop() for worker in self._workers])


@implementer(IReadDescriptor)
@define(eq=False)
class _Worker(ProcessProtocol):
    """One worker process: its control socket (what it says there: what ended, what came
    back, what was relayed), what waits to be said to it, and what it says on stderr (our
    log) and when it ends."""

    workers: RelayWorkers
    index: int
    control: socket.socket | None = None
    carrying: int = 0
    _reading: bool = False  # the control socket, in the reactor
    _process: IProcessTransport | None = None
    _ended: Deferred[None] | None = None
    _restart: IDelayedCall | None = None
    _backoff: float = 1.0
    _started_at: float = 0.0
    _outbox: list[bytes] = field(factory=list)  # messages for the worker to take
    _retry: IDelayedCall | None = None
    _stuck_since: float | None = None  # messages waiting since
    given: int = 0  # the drain asked last when this worker was given a connection
    _quiet: int = -1  # the last drain it answered with no request in flight, or -1
    _log = Logger()

    @property
    def pid(self) -> int | None:
        """The worker process's id while it runs, else None."""
        return None if self._process is None else int(self._process.pid)

    @property
    def drained(self) -> bool:
        """No request in flight since the last connection it was given (or no process)."""
        return self.control is None or self._quiet > self.given

    @property
    def _reactor(self) -> WorkersReactor:
        return self.workers.reactor

    def start(self) -> None:
        self._restart = None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        env = {name: os.environ[name] for name in _ENV if name in os.environ}
        argv = [sys.executable, "-m", "cli_server.proxy.relay.worker", "3"]
        fds: dict[int, int | str] = {0: "w", 1: "r", 2: "r", 3: theirs.fileno()}
        try:
            self._process = self._reactor.spawnProcess(
                self, sys.executable, argv, env=env, childFDs=fds
            )
        except OSError:
            self._log.failure("starting a relay worker; requests go to twisted.web")
            ours.close()
            return
        finally:
            theirs.close()
        self._ended = Deferred()
        self._started_at = self._reactor.seconds()
        self.control = ours
        self._reading = True
        self._reactor.addReader(self)

    @property
    def behind(self) -> int:
        """How many messages wait for the worker to take them."""
        return len(self._outbox)

    def send(self, message: bytes, unless_behind: bool = False) -> None:
        """Messages go out in order; those the worker cannot take yet are tried again
        shortly: a worker that takes none for a few seconds is stopped, and every
        connection with it, so that a revocation always wins. (``unless_behind``: not
        sent at all while others wait.)"""
        if unless_behind and self._outbox:
            return
        self._outbox.append(message)
        if self._retry is None:
            self._send_outbox()

    def _send_outbox(self) -> None:
        self._retry = None
        while self._outbox and self.control is not None:
            try:
                self.control.send(self._outbox[0])
            except BlockingIOError:
                now = self._reactor.seconds()
                if self._stuck_since is None:
                    self._stuck_since = now
                if now - self._stuck_since < 5.0:
                    self._retry = self._reactor.callLater(0.05, self._send_outbox)
                    return
                self._log.warn("relay worker {n} takes no messages: stopping it", n=self.index)
                self._kill()
                break
            except OSError:
                break  # the worker is gone, and its connections with it
            del self._outbox[0]
            self._stuck_since = None  # (it takes messages: slow is not stuck)
        self._outbox.clear()
        self._stuck_since = None

    def control_lost(self) -> None:
        if self._reading:
            self._reactor.removeReader(self)
            self._reading = False
        if self.control is not None:
            self.control.close()
            self.control = None

    def errReceived(self, data: bytes) -> None:
        text = data.decode(errors="replace").rstrip()
        self._log.warn("relay worker {n}: {text}", n=self.index, text=text)

    def processEnded(self, reason: Failure) -> None:
        self.control_lost()
        self.workers.worker_ended(self)
        self._process = None
        ended, self._ended = self._ended, None
        if ended is not None:
            ended.callback(None)
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self._outbox.clear()
        if self.workers.running:
            if self._reactor.seconds() - self._started_at > 60:
                self._backoff = 1.0  # (it ran well: this is not a crash loop)
            self._log.warn(
                "relay worker {n} exited ({reason}); starting it again in {delay:.0f} s",
                n=self.index,
                reason=reason.getErrorMessage(),
                delay=self._backoff,
            )
            self._restart = self._reactor.callLater(self._backoff, self.start)
            self._backoff = min(self._backoff * 2, 60.0)

    def stop(self) -> Deferred[None]:
        for call in (self._restart, self._retry):
            if call is not None and call.active():
                call.cancel()
        self._restart = self._retry = None
        ended = self._ended
        if ended is None:
            return succeed(None)
        self.control_lost()  # the worker sees its end close, closes its connections and exits
        kill = self._reactor.callLater(self.workers.stop_timeout, self._kill)
        return ended.addBoth(lambda _: kill.cancel() if kill.active() else None)

    def _kill(self) -> None:
        if self._process is not None:
            try:
                self._process.signalProcess("KILL")
            except error.ProcessExitedAlready:
                pass

    # (the reactor takes an exception as the reason it ends; IReadDescriptor says Failure)
    def doRead(self) -> Exception | None:  # type: ignore[override]
        for _ in range(1000):  # (a bounded batch per reactor turn)
            if self.control is None:
                return None  # (stopped meanwhile)
            try:
                msg, fds, _, _ = socket.recv_fds(self.control, 1 << 18, 1, socket.MSG_CMSG_CLOEXEC)
            except BlockingIOError:
                return None
            except OSError:
                return CONNECTION_LOST
            if not msg:
                return CONNECTION_DONE
            try:
                self._message(msg, fds)
            except ValueError:
                self._log.warn("relay worker {n} said something we do not understand", n=self.index)
        return None

    def _message(self, msg: bytes, fds: list[int]) -> None:
        kind = msg[:1]
        if kind == b"B" and len(msg) >= BACK.size and len(fds) == 1:
            _, conn_id, why = BACK.unpack_from(msg)
            if why in set(Back):
                sock = socket.socket(fileno=fds[0])
                self.workers.came_back(conn_id, Back(why), sock, msg[BACK.size :])
                return
        for fd in fds:
            os.close(fd)
        if kind == b"d" and len(msg) == DRAINING.size:
            _, number, busy = DRAINING.unpack(msg)
            self._quiet = number if busy == 0 else -1
        elif kind == b"R" and len(msg) == 1 + ID.size:
            self.workers.renew(ID.unpack_from(msg, 1)[0])
        elif kind in (b"B", b"E") and len(msg) >= 1 + ID.size:
            # (a B without its socket, say at EMFILE: that connection is lost; it ends here)
            self.workers.ended(ID.unpack_from(msg, 1)[0])
        elif kind == b"A":
            self.workers.relayed(read_activity(msg))
        else:
            raise ValueError(kind)

    def fileno(self) -> int:
        return self.control.fileno() if self.control is not None else -1

    def connectionLost(self, reason: Failure) -> None:
        self.control_lost()

    def logPrefix(self) -> str:
        return "relay-worker"

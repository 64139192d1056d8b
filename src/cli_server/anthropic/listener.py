"""A door to the Anthropic proxy inside a sandbox's own network namespace, and nothing else.

A process sandbox has no route to the host's loopback. We create a listening socket on
127.0.0.1:4097 *inside* the sandbox's namespace — from a short-lived thread that enters the
namespace with setns(2), binds, and leaves — and the reactor serves it with a site that has only
the Anthropic proxy. The host's loopback never sees the port; the sandbox sees nothing else.
Each door knows its sandbox: the proxy takes only that sandbox's token through it.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.interfaces import IAddress
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from cli_server.anthropic.proxy import AnthropicProxy, anthropic_error
from cli_server.plumbing.request_line import RequestLineChannel
from cli_server.plumbing.timeouts import IDLE_TIMEOUT

SANDBOX_PORT = 4097
_CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def listen_in_netns(netns: Path | None, port: int = SANDBOX_PORT) -> socket.socket:
    """A listening TCP socket on 127.0.0.1:``port`` inside ``netns`` (or here, if None)."""
    result: list[Any] = []

    def work() -> None:
        try:
            own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
            target = os.open(netns, os.O_RDONLY) if netns is not None else None
            try:
                if target is not None:
                    _setns(target)
                try:
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sock.bind(("127.0.0.1", port))
                    sock.listen(128)
                    sock.setblocking(False)
                    result.append(sock)
                finally:
                    if target is not None:
                        _setns(own)  # this thread ends right after anyway
            finally:
                os.close(own)
                if target is not None:
                    os.close(target)
        except BaseException as e:  # handed back to the caller
            result.append(e)

    thread = threading.Thread(target=work, name="netns-listen")
    thread.start()
    thread.join(10)
    if not result:
        raise OSError("timed out creating the sandbox's proxy socket")
    if isinstance(result[0], BaseException):
        raise result[0]
    sock: socket.socket = result[0]
    return sock


class _OnlyProxy(Resource):
    """What a sandbox may reach through its door: the Anthropic proxy, nothing else."""

    isLeaf = True

    def __init__(self, proxy: AnthropicProxy, sandbox_id: str) -> None:
        super().__init__()
        self._proxy = proxy
        self._sandbox_id = sandbox_id

    def render(self, request: Request) -> bytes | int:
        if request.uri.startswith(b"/proxy/anthropic/"):
            return self._proxy.serve(request, self._sandbox_id)
        return anthropic_error(request, 404, "not_found_error", "only /proxy/anthropic/v1/")


MAX_CONNECTIONS = 32  # open connections through one door: opencode needs a few at a time


class _DoorSite(Site):
    """Serves one sandbox's door. Its bodies are read whole (``only_anthropic``), within the
    request class's caps; connections that send nothing are closed after ``IDLE_TIMEOUT``; and
    one sandbox keeps at most ``MAX_CONNECTIONS`` open, so it cannot hold many bodies at
    once."""

    noisy = False  # (one per sandbox start: no "Starting factory" lines for each)
    # (its requests learn their request line before the body; twisted.web types this as
    # its private wrapper, which adds only HTTP/2 negotiation, and h2 is not installed)
    protocol = RequestLineChannel  # type: ignore[assignment]
    # What its requests read of it (``web.request.RequestSite``): its bodies are prompts, in
    # the shared budget (a test gives its own); no sandbox subdomains, no proxy trusted, and
    # no drain waits for it.
    only_anthropic = True
    body_budget = None
    base_host = None
    trusted_proxies = None
    requests = None

    def __init__(self, resource: IResource, **kwargs: object) -> None:
        kwargs.setdefault("timeout", IDLE_TIMEOUT)
        super().__init__(resource, **kwargs)
        self.open_connections = 0

    # (Any: our RequestLineChannel, though Site declares twisted.web's private wrapper; its
    # connectionLost is replaced below)
    def buildProtocol(self, addr: IAddress | None) -> Any:
        if self.open_connections >= MAX_CONNECTIONS:
            return None  # (the port closes the new connection)
        protocol: Any = super().buildProtocol(addr)
        self.open_connections += 1
        lost = protocol.connectionLost

        def connection_lost(reason: Failure) -> None:
            self.open_connections -= 1
            lost(reason)

        protocol.connectionLost = connection_lost
        return protocol

    def log(self, request: http.Request) -> None:
        """Sandboxes' model calls are metered, not access-logged."""


def proxy_site(
    proxy: AnthropicProxy, request_factory: Callable[..., Request], sandbox_id: str
) -> Site:
    """The site behind one sandbox's door."""
    return _DoorSite(_OnlyProxy(proxy, sandbox_id), requestFactory=request_factory)


def adopt(reactor: Any, sock: socket.socket, site: Site) -> Any:
    """Serve an already-listening socket; returns the IListeningPort (stopListening to close).

    (Any: ``IReactorSocket.adoptStreamPort`` is annotated with a ``ServerFactory`` generic
    that twisted.web's ``Site`` does not satisfy for the type checker; the caller types what
    it gets back.)"""
    port = reactor.adoptStreamPort(sock.fileno(), socket.AF_INET, site)
    sock.close()  # the reactor holds its own duplicate of the descriptor
    return port

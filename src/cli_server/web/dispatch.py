"""The site root: sandbox subdomains go to the proxy, every other host to the main site."""

from __future__ import annotations

from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from cli_server.proxy.hosts import sandbox_for_host
from cli_server.replicas.channel import PREFIX as INTERNAL_PREFIX


class HostDispatcher(Resource):
    """Picks by Host, then renders the chosen leaf with the request's path untouched.

    Both children are leaves (Klein's resource and the proxy), so the dispatcher is a leaf
    too and never consumes a path segment.
    """

    isLeaf = True

    def __init__(
        self,
        main: IResource,
        sandboxes: IResource,
        base_host: bytes,
        internal: IResource | None = None,
    ) -> None:
        super().__init__()
        self._main = main
        self._sandboxes = sandboxes
        self._base_host = base_host
        self._internal = internal  # the channel between replicas (proxy/replica_relay.py)

    @property
    def sandboxes(self) -> IResource:
        """What serves the sandboxes' own hosts (read-only: for tests)."""
        return self._sandboxes

    def render(self, request: IRequest) -> bytes | int:
        is_sandbox, _ = sandbox_for_host(request.getHeader(b"host"), self._base_host)
        if is_sandbox:
            child = self._sandboxes  # (never the channel: sandboxes' own hosts)
        elif self._internal is not None and request.path.startswith(INTERNAL_PREFIX):
            child = self._internal
        else:
            child = self._main
        answer: bytes | int = child.render(request)  # (IResource.render is not annotated)
        return answer

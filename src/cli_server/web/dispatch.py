"""The site root: sandbox subdomains go to the proxy, every other host to the main site."""

from __future__ import annotations

from typing import Any

from twisted.web.resource import IResource, Resource

from cli_server.proxy.hosts import sandbox_for_host


class HostDispatcher(Resource):
    """Picks by Host, then renders the chosen leaf with the request's path untouched.

    Both children are leaves (Klein's resource and the proxy), so the dispatcher is a leaf
    too and never consumes a path segment.
    """

    isLeaf = True

    def __init__(self, main: IResource, sandboxes: IResource, base_host: bytes) -> None:
        super().__init__()
        self._main = main
        self._sandboxes = sandboxes
        self._base_host = base_host

    def render(self, request: Any) -> Any:
        is_sandbox, _ = sandbox_for_host(request.getHeader(b"host"), self._base_host)
        return (self._sandboxes if is_sandbox else self._main).render(request)

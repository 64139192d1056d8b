"""The Anthropic proxy: the upstream it calls, where a sandbox's calls may come from, and the
doors the process backend opens into each sandbox's network namespace."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from attrs import define, field
from twisted.internet.interfaces import IListeningPort, IReactorSocket, IReactorTime

from cli_server.anthropic.listener import adopt, listen_in_netns, proxy_site
from cli_server.anthropic.proxy import AnthropicProxy, Upstream
from cli_server.anthropic.setup import ClaudeSetup
from cli_server.anthropic.usage import UsageStore
from cli_server.compose.shared import Shared
from cli_server.config import ServerConfig
from cli_server.db.pool import Database
from cli_server.sandboxes.backend import SandboxBackend
from cli_server.sandboxes.process_backend import ANTHROPIC_PORT
from cli_server.tunnel.hub import TunnelHub
from cli_server.web.request import BoundedRequest


@define(eq=False)
class AnthropicDoors:
    """Opens a sandbox's door to the Anthropic proxy: a listening socket on its own loopback.

    The backend that opens them is built before the proxy (the proxy asks the backend where
    calls come from), so the proxy is given once, by ``build_anthropic``, before anything
    starts; a door opened before that is a wiring mistake.
    """

    _reactor: IReactorSocket
    _proxy: AnthropicProxy | None = field(default=None, init=False)

    def serve(self, proxy: AnthropicProxy) -> None:
        self._proxy = proxy

    def open(self, sandbox_id: str, netns: Path | None) -> tuple[IListeningPort, int]:
        """(sandbox_id, its netns or None: here) -> the listening port and its number."""
        if self._proxy is None:
            raise RuntimeError("a door opened before the Anthropic proxy was built")
        site = proxy_site(self._proxy, BoundedRequest, sandbox_id)
        listening = adopt(
            self._reactor, listen_in_netns(netns, ANTHROPIC_PORT if netns else 0), site
        )
        port: int = listening.getHost().port
        return listening, port


@define(frozen=True)
class Anthropic:
    proxy: AnthropicProxy
    usage: UsageStore
    claude: ClaudeSetup  # how sandboxes are set up to call it (a key, a token, or nothing)


@define(eq=False)
class CallSources:
    """Where a sandbox's Anthropic calls may come from on the main listener: a local agent's
    live tunnel; a backend's own answer (docker: the container's addresses)."""

    _tunnels: TunnelHub
    _backend: SandboxBackend

    async def __call__(self, sandbox_id: str, is_local: bool) -> Collection[str]:
        if is_local:
            address = self._tunnels.address(sandbox_id)
            return (address,) if address else ()
        found: Collection[str] = await self._backend.source_addresses(sandbox_id)
        return found


def build_anthropic(
    config: ServerConfig,
    reactor: IReactorTime,
    db: Database,
    shared: Shared,
    tunnels: TunnelHub,
    backend: SandboxBackend,
    doors: AnthropicDoors,
) -> Anthropic:
    claude = ClaudeSetup.of(config.anthropic_api_key, config.anthropic_auth_token)
    upstream = None
    if claude.configured:
        upstream = Upstream(
            config.anthropic_base_url, config.anthropic_api_key, config.anthropic_auth_token
        )
    usage = UsageStore(db)
    proxy = AnthropicProxy(
        db,
        reactor,
        upstream,
        usage,
        shared.activity,
        shared.metrics,
        CallSources(tunnels, backend),
    )
    doors.serve(proxy)
    return Anthropic(proxy, usage, claude)

"""What a connected agent runs, from its hello, and whether it is older than this server.

The agent's hello names its release (``cli-agent/26.11.0``) and the tunnel protocol versions
it speaks. An agent with no protocol in common is refused at the hello (mux); one that is
merely older still works, and the server says so in its log and on the local sandbox in the
API, so the person whose laptop it is hears to upgrade before a release drops its protocol."""

from __future__ import annotations

import re
from typing import Any

from cli_server._version import __version__
from cli_server.tunnel.frames import VERSION

_RELEASE = re.compile(r"^cli-agent/(\d+)\.(\d+)\.(\d+)\S*$")


def agent_release(name: str) -> str | None:
    """The release an agent's hello names (``cli-agent/26.11.0.dev0`` -> 26.11.0.dev0)."""
    return name.split("/", 1)[1] if _RELEASE.match(name) else None


def _triple(release: str) -> tuple[int, int, int]:
    major, minor, micro = release.split(".")[:3]
    return int(major), int(minor), int(re.match(r"\d+", micro).group())  # type: ignore[union-attr]


def outdated(
    name: str,
    protocol: int,
    current_protocol: int = VERSION,
    server_release: str = __version__.public(),
) -> str | None:
    """One sentence if the agent is older than this server, else None."""
    if protocol < current_protocol:
        return (
            f"this agent speaks tunnel protocol {protocol}, older than this server's "
            f"{current_protocol}: upgrade cli-server on its machine (a later server may refuse it)"
        )
    release = agent_release(name)
    if release is not None and _triple(release) < _triple(server_release):
        return (
            f"this agent is cli-server {release}, older than this server's {server_release}: "
            "upgrade cli-server on its machine"
        )
    return None


def agent_json(name: str, protocol: int, current_protocol: int = VERSION) -> dict[str, Any]:
    """What the API says about a connected agent."""
    return {
        "version": agent_release(name),
        "protocol": protocol,
        "warning": outdated(name, protocol, current_protocol),
    }

# Keep this module tiny: twistd imports every plugin module when it scans for plugins, and an
# import error here would make the subcommand silently disappear. The real modules load lazily.
from typing import Any

from twisted.application.service import ServiceMaker


class _ServerMaker(ServiceMaker):
    """`twistd cli-server` on an agent-only install says in one line what to install."""

    @property
    def options(self) -> Any:
        from cli_server.extras import require_server

        require_server()
        return super().options


cliServer = _ServerMaker(
    "cli-server",
    "cli_server.tap.server",
    "Workspaces, opencode sandboxes, their subdomain proxy and the agent tunnel hub.",
    "cli-server",
)

cliAgent = ServiceMaker(
    "cli-agent",
    "cli_server.tap.agent",
    "Joins this machine's opencode to a cli-server workspace through the tunnel.",
    "cli-agent",
)

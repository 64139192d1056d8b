"""`twistd cli-agent`: join this machine's opencode to a workspace through the tunnel."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.python import usage

from cli_server.agent.machine import Platform, current
from cli_server.agent.service import AgentError, TunnelAgent, check_url, default_config_path


class Options(usage.Options):
    synopsis = (
        "--server URL --code CODE --name NAME [--opencode-url URL]  (first time)\n"
        "       twistd -n cli-agent [--opencode-url URL]  (afterwards)\n"
        "       add --allow-port 5173,8000 to share those ports of this machine as previews"
    )
    longdesc = (
        "Connects the opencode running on this machine (opencode serve) to a cli-server "
        "workspace as a local sandbox, so the team opens it in the browser. Get a code from "
        "the dashboard's 'Connect a local agent'; the credentials it buys are saved, so later "
        "runs need no code."
    )
    optParameters = [
        ["server", None, None, "The cli-server's URL, e.g. https://cli.example.com."],
        ["code", None, None, "One-time registration code from the dashboard (10 minutes)."],
        ["name", None, None, "This sandbox's name in the workspace [default: the hostname]."],
        [
            "opencode-url",
            None,
            None,
            "Where opencode listens here [default: the saved one, else http://127.0.0.1:4096].",
        ],
        [
            "config",
            None,
            None,
            "Credentials file [default: ~/.cli-server/agent.json if it exists, else on macOS "
            "~/Library/Application Support/cli-server/agent.json, on Windows "
            "%APPDATA%\\cli-server\\agent.json; on Linux always the first].",
        ],
        [
            "ca-file",
            None,
            None,
            "PEM bundle of the CAs to trust for an https server, instead of the system's "
            "[default: $SSL_CERT_FILE]. HTTPS_PROXY, HTTP_PROXY and NO_PROXY are honoured.",
        ],
    ]
    optFlags = [
        [
            "use-server-key",
            None,
            "At registration, ask for a token of the server's Anthropic proxy, so opencode "
            "here can use the server's key (written to anthropic.env next to --config).",
        ],
    ]

    def __init__(self, platform: Platform | None = None) -> None:
        super().__init__()
        self.platform = platform or current()

    def postOptions(self) -> None:
        try:
            for option in ("server", "opencode-url"):
                if self[option] is not None:
                    self[option] = check_url(f"--{option}", self[option])
        except AgentError as e:
            raise usage.UsageError(str(e)) from None
        if self["code"] is not None:
            if not self["server"]:
                raise usage.UsageError("--code needs --server (the cli-server's URL)")
            self["name"] = (self["name"] or socket.gethostname()).strip()
            if not 1 <= len(self["name"]) <= 100:
                raise usage.UsageError("--name must be 1 to 100 characters")
        elif self["use-server-key"]:
            raise usage.UsageError("--use-server-key is chosen at registration: pass --code too")
        config = (
            Path(self["config"]).expanduser()
            if self["config"]
            else default_config_path(self.platform)
        )
        if self["code"] is None and not config.exists():
            raise usage.UsageError(
                f"no saved credentials in {config}: register first with --server URL --code "
                "CODE --name NAME (the dashboard's 'Connect a local agent' shows the command)"
            )
        self["config"] = config.absolute()
        self._allowed_ports()

    def opt_allow_port(self, ports: str) -> None:
        """Share ports of 127.0.0.1 here as previews, e.g. 5173,8000 (repeatable; this run only)."""
        self.setdefault("allow-port", []).append(ports)

    def _allowed_ports(self) -> None:
        from cli_server.tunnel.shared_ports import check_not_opencode, parse_ports

        try:
            self["allow-port"] = parse_ports(self.get("allow-port", []))
            if self["opencode-url"] is not None:  # (else the saved one, checked at start)
                check_not_opencode(self["allow-port"], self["opencode-url"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None


# ``reactor``: the whole reactor (Any: it provides every interface, and Python has no
# intersection type); each part it is given to names the interfaces it uses.
def makeService(options: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor as globalReactor

        reactor = globalReactor
    from cli_server.agent.machine import StopOnSignals
    from cli_server.agent.network import Network
    from cli_server.agent.service import exit_with_error
    from cli_server.agent.tls import Trust
    from cli_server.plumbing.threads import ThreadPoolService

    platform = options.platform
    trust = Trust.choose(
        options["ca-file"], os.environ, platform.default_ca_file, platform.system_store
    )
    root = MultiService()
    files = ThreadPoolService(reactor, "cli-agent-files", 1)  # (started before the agent)
    files.setName("files")
    files.setServiceParent(root)
    agent = TunnelAgent(
        reactor,
        options["config"],
        opencode_url=options["opencode-url"],
        server=options["server"],
        code=options["code"],
        name=options["name"],
        use_server_key=bool(options["use-server-key"]),
        allowed_ports=options["allow-port"],
        on_fatal=exit_with_error(reactor),
        platform=platform,
        network=Network(trust, dict(os.environ)),
        runner=files.run,
    )
    agent.setName("agent")
    agent.setServiceParent(root)
    stop = StopOnSignals(reactor, reactor, platform)
    stop.setName("signals")
    stop.setServiceParent(root)
    return root

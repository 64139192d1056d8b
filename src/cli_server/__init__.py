"""cli-server: the opencode coding agent in the browser, self-hosted."""

from cli_server._version import __version__

__all__ = ["__version__"]

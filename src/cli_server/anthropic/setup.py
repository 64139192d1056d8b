"""Whether sandboxes can reach Claude, said in words to the people who can change it."""

from __future__ import annotations

from typing import Any

from attrs import frozen

# The documentation an owner is sent to: the page and GitHub's anchor for its heading.
HELP_SECTION = "docs/anthropic.md#claude-in-sandboxes-the-anthropic-proxy"

NOT_CONFIGURED = (
    "Claude is not set up on this server: the administrator sets ANTHROPIC_API_KEY (or "
    "ANTHROPIC_AUTH_TOKEN) in the server's environment and restarts it."
)
CONFIGURED = "Claude is set up: sandboxes reach it through this server's Anthropic proxy."


@frozen
class ClaudeSetup:
    """The proxy forwards only with a key or an auth token: a base URL alone is not enough."""

    configured: bool

    @classmethod
    def of(cls, api_key: str | None, auth_token: str | None) -> ClaudeSetup:
        return cls(bool(api_key or auth_token))

    def report(self) -> dict[str, Any]:
        """What the usage route tells a workspace's members."""
        return {
            "configured": self.configured,
            "message": CONFIGURED if self.configured else NOT_CONFIGURED,
            "help": HELP_SECTION,
        }

    @property
    def readiness(self) -> str:
        return "configured" if self.configured else "not configured"

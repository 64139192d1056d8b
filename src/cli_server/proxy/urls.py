"""The public addresses of sandboxes and of their previews."""

from __future__ import annotations

from attrs import frozen


@frozen
class SandboxUrls:
    scheme: str
    base_domain: str  # host[:port]

    def home(self, sandbox_id: str, port: int | None = None) -> str:
        """opencode's address (``port`` None), or the preview of ``port`` in the sandbox."""
        label = f"oc-{sandbox_id}" if port is None else f"oc-{sandbox_id}-p{port}"
        return f"{self.scheme}://{label}.{self.base_domain}/"

    def opener(self, sandbox_id: str, ticket: str, port: int | None = None) -> str:
        return f"{self.home(sandbox_id, port)}_cli/auth?ticket={ticket}"

    @property
    def base_host(self) -> bytes:
        return self.base_domain.rsplit(":", 1)[0].encode()

    @property
    def dashboard(self) -> str:
        return f"{self.scheme}://{self.base_domain}/"

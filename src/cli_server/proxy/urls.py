"""The public addresses of sandboxes."""

from __future__ import annotations

from attrs import frozen


@frozen
class SandboxUrls:
    scheme: str
    base_domain: str  # host[:port]

    def home(self, sandbox_id: str) -> str:
        return f"{self.scheme}://oc-{sandbox_id}.{self.base_domain}/"

    def opener(self, sandbox_id: str, ticket: str) -> str:
        return f"{self.home(sandbox_id)}_cli/auth?ticket={ticket}"

    @property
    def base_host(self) -> bytes:
        return self.base_domain.rsplit(":", 1)[0].encode()

    @property
    def dashboard(self) -> str:
        return f"{self.scheme}://{self.base_domain}/"

"""The one twisted.web Site behind the router, and what its access log keeps."""

from __future__ import annotations

from twisted.web import http, server
from twisted.web.resource import IResource

from cli_server.plumbing.client_address import TrustedProxies
from cli_server.plumbing.request_line import RequestLineChannel
from cli_server.plumbing.timeouts import IDLE_TIMEOUT
from cli_server.web.access_log import api_read, redacting_log_formatter
from cli_server.web.open_requests import OpenRequests
from cli_server.web.request import BodyBudget, for_sandbox


class QuietSandboxSite(server.Site):
    """Access-logs the main site only (a sandbox's UI makes hundreds of asset, event and
    terminal requests per minute, and logging each would cost more than proxying it), and
    never a credential in a query string (the tunnel accepts ``?token=``)."""

    noisy = False  # (no "Starting factory" lines: the start-up line says where we listen)
    # (its requests learn their request line before the body; twisted.web types this as
    # its private wrapper, which adds only HTTP/2 negotiation, and h2 is not installed)
    protocol = RequestLineChannel  # type: ignore[assignment]
    # (``request.RequestSite``: what its requests read of it)
    only_anthropic = False
    body_budget: BodyBudget | None = None  # the shared one (a test gives its own)

    def __init__(
        self,
        resource: IResource,
        base_host: bytes | None = None,
        trusted_proxies: TrustedProxies | None = None,
        *,
        access_log: str = "changes",
        display_tracebacks: bool = False,
        **kwargs: object,  # (twisted.web's Site: requestFactory, reactor, timeout...)
    ) -> None:
        kwargs.setdefault("timeout", IDLE_TIMEOUT)
        super().__init__(resource, logFormatter=redacting_log_formatter, **kwargs)
        self.access_log = access_log  # all, changes or off (config.parse_access_log)
        self.displayTracebacks = display_tracebacks
        self.base_host = base_host
        self.trusted_proxies = trusted_proxies or TrustedProxies()
        self.requests = OpenRequests()

    def log(self, request: http.Request) -> None:
        if self.access_log == "off" or for_sandbox(request, self):
            return
        if self.access_log == "changes" and api_read(request):
            return  # (an open dashboard polls: its reads would be most of the log)
        super().log(request)

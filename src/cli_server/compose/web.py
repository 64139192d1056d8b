"""What the listening ports serve: the main site (the REST API, the web UI, /readyz,
/metrics), the host dispatcher in front of it and the proxy, the one twisted.web Site, and
the router that hands sandbox requests to the relay workers."""

from __future__ import annotations

from attrs import define

from cli_server.compose.anthropic import Anthropic
from cli_server.compose.domain import Domain
from cli_server.compose.proxy import Proxy
from cli_server.compose.reactor import IServerReactor
from cli_server.compose.shared import Shared
from cli_server.compose.store import Store
from cli_server.compose.tunnel import Tunnels
from cli_server.config import ServerConfig
from cli_server.domain.instance_admin import InstanceAdmin
from cli_server.plumbing.client_address import TrustedProxies
from cli_server.proxy.access import SandboxAccess
from cli_server.proxy.router import RouterFactory
from cli_server.replicas.drain import Draining
from cli_server.sandboxes.manager import SandboxManager
from cli_server.web.admin_api import AdminAPI
from cli_server.web.agents_api import AgentsAPI
from cli_server.web.dispatch import HostDispatcher
from cli_server.web.invitations_api import InvitationsAPI
from cli_server.web.request import BoundedRequest
from cli_server.web.sandboxes_api import SandboxesAPI, WorkspaceSandboxesAPI
from cli_server.web.serving import QuietSandboxSite
from cli_server.web.site import MainSite
from cli_server.web.sso_api import SsoAPI
from cli_server.web.workspaces_api import WorkspacesAPI


@define(frozen=True)
class Web:
    main: MainSite
    site: QuietSandboxSite  # twisted.web's, behind the router
    router: RouterFactory  # what the listening ports serve


def build_web(
    config: ServerConfig,
    reactor: IServerReactor,
    store: Store,
    domain: Domain,
    anthropic: Anthropic,
    manager: SandboxManager,
    access: SandboxAccess,
    tunnels: Tunnels,
    proxy: Proxy,
    shared: Shared,
    draining: Draining,
) -> Web:
    db, urls = store.db, shared.urls
    audit, cookies, workspaces = domain.audit, domain.cookies, domain.workspaces
    main = MainSite(
        db,
        anthropic.proxy,
        domain.auth,
        WorkspacesAPI(
            workspaces,
            cookies,
            manager,
            WorkspaceSandboxesAPI(manager, audit=audit),
            anthropic.usage,
            tunnels.agents,
            anthropic.claude,
            audit=audit,
        ),
        SandboxesAPI(manager, cookies, access, urls, audit=audit),
        AgentsAPI(tunnels.agents, tunnels.hub),
        store.readiness,
        metrics=shared.metrics,
        invitations=InvitationsAPI(workspaces, cookies, audit=audit),
        claude=anthropic.claude,
        admin=AdminAPI(
            InstanceAdmin(db, domain.accounts.passwords, domain.events),
            cookies,
            config.origin,
            config.registration,
            audit=audit,
        ),
        sso=SsoAPI(
            domain.sso_providers,
            domain.sign_ins,
            domain.accounts,
            cookies,
            config.secure_cookies,
            audit=audit,
        ),
        draining=draining,
    )
    root = HostDispatcher(main.app.resource(), proxy.site, urls.base_host, proxy.internal)
    site = QuietSandboxSite(
        root,
        urls.base_host,
        TrustedProxies(config.trusted_proxies),
        access_log=config.access_log,
        display_tracebacks=False,
        requestFactory=BoundedRequest,
    )
    return Web(main, site, RouterFactory(site, proxy.routes, reactor))

"""The composition root's builders: ``cli_server.server.build`` calls them in this order.

``hooks`` (the events between parts built in order), ``store`` (PostgreSQL, the database
service and its start-up steps), ``replicas`` (registry, leadership, event bus), ``domain``
(accounts, workspaces, audit, tokens, rate limits, single sign-on), ``shared`` (metrics,
activity, the opencode client, the sandboxes' URLs), ``tunnel`` (hub,
holders, registrations), ``backends`` (process, docker or k8s, their thread pools),
``anthropic`` (the Anthropic proxy and its doors), ``sandboxes`` (the manager, the leader's
sweeps), ``proxy`` (access, endpoints, SandboxSite, relay workers, routes, internal
channel), ``listeners`` (who hears the domain's events), ``web`` (MainSite and the APIs,
HostDispatcher, the twisted.web Site, the router), ``periodic`` (housekeeping and the other
periodic services), ``drain`` (the listening ports and what SIGTERM does first).

Each builder takes what it needs as arguments and returns an attrs value (or services) with
what the next ones need; none starts anything or does I/O. ``reactor`` names the interfaces
the whole tree needs (``IServerReactor``).
"""

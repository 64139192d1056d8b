"""Prometheus metrics, on a registry of our own (tests build as many servers as they like)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from attrs import define, field
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


@define(eq=False)
class Metrics:
    registry: CollectorRegistry = field(factory=CollectorRegistry)
    proxied: Counter = field(init=False)
    anthropic_calls: Counter = field(init=False)
    anthropic_tokens: Counter = field(init=False)
    sandboxes: Gauge = field(init=False)
    tunnels: Gauge = field(init=False)
    relayed_streams: Gauge = field(init=False)
    leader: Gauge = field(init=False)
    live_streams: Gauge = field(init=False)
    replica_info: Gauge = field(init=False)
    # Counts kept elsewhere as plain integers (on hot paths), added in before each scrape.
    _flushes: list[Callable[[], None]] = field(factory=list, init=False)

    def __attrs_post_init__(self) -> None:
        self.proxied = Counter(
            "cli_proxied_requests",
            "Requests proxied to sandboxes",
            ["kind"],
            registry=self.registry,
        )
        self.anthropic_calls = Counter(
            "cli_anthropic_requests",
            "Calls to the Anthropic proxy",
            ["outcome"],
            registry=self.registry,
        )
        self.anthropic_tokens = Counter(
            "cli_anthropic_tokens", "Tokens metered by the proxy", ["kind"], registry=self.registry
        )
        self.sandboxes = Gauge(
            "cli_sandboxes", "Sandboxes by status", ["status"], registry=self.registry
        )
        self.tunnels = Gauge(
            "cli_tunnels", "Local agents connected to this process", registry=self.registry
        )
        self.relayed_streams = Gauge(
            "cli_relayed_streams",
            "Browser connections the relay workers carry now (all workers together)",
            registry=self.registry,
        )

        self.leader = Gauge(
            "cli_leader",
            "1 while this replica leads the periodic work (idle monitor, reconciler)",
            registry=self.registry,
        )
        self.live_streams = Gauge(
            "cli_live_streams",
            "Terminals and event streams this process carries itself (not the relay workers)",
            registry=self.registry,
        )
        self.replica_info = Gauge(
            "cli_replica_info",
            "This replica: its id in the replica registry, its host and its backend",
            ["replica", "hostname", "backend"],
            registry=self.registry,
        )

    def replica(self, replica_id: str, hostname: str, backend: str) -> None:
        """Names this process, so each scrape says which replica answered it."""
        self.replica_info.labels(replica_id, hostname, backend).set(1)

    def sandbox_counts(self, counts: Mapping[str, int]) -> None:
        """Sets ``cli_sandboxes`` per status (read from the database on a timer rather than at
        scrape time; every status is named, 0 included, so no gauge sticks at an old value)."""
        for status, n in counts.items():
            self.sandboxes.labels(status).set(n)

    def flush_before_render(self, flush: Callable[[], None]) -> None:
        self._flushes.append(flush)

    def render(self) -> bytes:
        for flush in self._flushes:
            flush()
        return bytes(generate_latest(self.registry))

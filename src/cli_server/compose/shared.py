"""What most areas use: the metrics, the activity recorder, the opencode client, the
sandboxes' URLs."""

from __future__ import annotations

from attrs import define
from twisted.internet.interfaces import IReactorTime

from cli_server.compose.replicas import Cluster
from cli_server.config import ServerConfig
from cli_server.db.pool import Database
from cli_server.plumbing.metrics import Metrics
from cli_server.proxy.urls import SandboxUrls
from cli_server.sandboxes.activity import ActivityRecorder
from cli_server.sandboxes.opencode import OpencodeClient


@define(frozen=True)
class Shared:
    metrics: Metrics
    activity: ActivityRecorder  # proxied requests, WebSocket traffic, Anthropic calls
    opencode: OpencodeClient  # asks a sandbox's opencode (health, busy sessions)
    urls: SandboxUrls


def build_shared(
    config: ServerConfig, reactor: IReactorTime, db: Database, cluster: Cluster
) -> Shared:
    metrics = Metrics()
    replica = cluster.replica
    metrics.replica(replica.id, replica.hostname, replica.backend)
    leadership = cluster.leadership
    metrics.flush_before_render(lambda: metrics.leader.set(int(leadership.leading)))
    return Shared(
        metrics,
        ActivityRecorder(db, reactor),
        OpencodeClient(reactor),
        SandboxUrls(config.base_scheme, config.base_domain),
    )

"""The Prometheus registry: its own per instance, what a scrape shows, counts flushed in
before rendering, and the sandbox gauge read from the database."""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.defer import Deferred

from cli_server.db.pool import Database
from cli_server.plumbing.metrics import Metrics
from cli_server.sandboxes.model import Status
from tests.unit.deferreds import result_of


class StatusCounts:
    """A database stand-in answering the status count query with fixed rows."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.sent: list[str] = []

    async def query(self, sql: str, args: Any = ()) -> list[dict[str, Any]]:
        self.sent.append(sql)
        return self.rows


def lines(metrics: Metrics) -> list[str]:
    return [line for line in metrics.render().decode().splitlines() if not line.startswith("#")]


def test_registries_are_independent() -> None:
    """Two servers in one process do not share (or collide on) metrics."""
    a, b = Metrics(), Metrics()
    a.proxied.labels("http").inc()
    assert 'cli_proxied_requests_total{kind="http"} 1.0' in lines(a)
    assert not any(line.startswith("cli_proxied_requests_total{") for line in lines(b))


def test_render_shows_counters_and_gauges() -> None:
    """A scrape is the Prometheus text format with our names and labels."""
    m = Metrics()
    m.anthropic_calls.labels("ok").inc(3)
    m.anthropic_tokens.labels("input").inc(120)
    m.tunnels.set(2)
    m.leader.set(1)
    got = lines(m)
    assert 'cli_anthropic_requests_total{outcome="ok"} 3.0' in got
    assert 'cli_anthropic_tokens_total{kind="input"} 120.0' in got
    assert "cli_tunnels 2.0" in got
    assert "cli_leader 1.0" in got


def test_replica_names_the_process() -> None:
    """``replica`` sets one info series labelled with id, host and backend."""
    m = Metrics()
    m.replica("r-1", "host-a", "docker")
    assert 'cli_replica_info{backend="docker",hostname="host-a",replica="r-1"} 1.0' in lines(m)


def test_flushes_run_before_each_render() -> None:
    """Counts kept elsewhere are added in at scrape time, every scrape."""
    m = Metrics()
    pending = [2, 5]

    def flush() -> None:
        m.relayed_streams.set(pending.pop(0))

    m.flush_before_render(flush)
    assert "cli_relayed_streams 2.0" in lines(m)
    assert "cli_relayed_streams 5.0" in lines(m)


def test_refresh_sets_every_status_even_absent_ones() -> None:
    """Statuses the database has no rows for read 0, so a gauge never sticks at an old value."""
    m = Metrics()
    db = StatusCounts([{"status": Status.RUNNING.value, "n": 4}])
    result_of(Deferred.fromCoroutine(m.refresh(cast(Database, db))))
    got = lines(m)
    assert f'cli_sandboxes{{status="{Status.RUNNING.value}"}} 4.0' in got
    for status in Status:
        if status is not Status.RUNNING:
            assert f'cli_sandboxes{{status="{status.value}"}} 0.0' in got
    db.rows = []
    result_of(Deferred.fromCoroutine(m.refresh(cast(Database, db))))
    assert f'cli_sandboxes{{status="{Status.RUNNING.value}"}} 0.0' in lines(m)
    assert len(db.sent) == 2

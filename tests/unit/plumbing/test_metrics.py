"""The Prometheus registry: its own per instance, what a scrape shows, counts flushed in
before rendering, and the sandbox gauge set from the manager's counts."""

from __future__ import annotations

from cli_server.plumbing.metrics import Metrics


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


def test_sandbox_counts_set_each_status_given() -> None:
    """Each status's gauge reads what the last count said, 0 included."""
    m = Metrics()
    m.sandbox_counts({"running": 4, "paused": 0})
    got = lines(m)
    assert 'cli_sandboxes{status="running"} 4.0' in got
    assert 'cli_sandboxes{status="paused"} 0.0' in got
    m.sandbox_counts({"running": 0, "paused": 1})
    got = lines(m)
    assert 'cli_sandboxes{status="running"} 0.0' in got
    assert 'cli_sandboxes{status="paused"} 1.0' in got

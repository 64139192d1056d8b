"""RunningEndpoints: the proxy's short memory of where running sandboxes answer."""

from __future__ import annotations

from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from cli_server.proxy.endpoints import RunningEndpoints
from cli_server.sandboxes.backend import BackendDefaults, Endpoint, Observed, State
from tests.unit.deferreds import failure_of, result_of

HERE = Endpoint("127.0.0.1", 40001)
MOVED = Endpoint("127.0.0.1", 40002)


@define
class ScriptedBackend(BackendDefaults):
    """describe() answers only when the test says so: one pending Deferred per call."""

    calls: list[Deferred[Observed]] = field(factory=list)
    previews: list[tuple[int, Deferred[Endpoint | None]]] = field(factory=list)

    def describe(self, sandbox_id: str) -> Deferred[Observed]:
        d: Deferred[Observed] = Deferred()
        self.calls.append(d)
        return d

    def preview_endpoint(self, sandbox_id: str, port: int) -> Deferred[Endpoint | None]:
        d: Deferred[Endpoint | None] = Deferred()
        self.previews.append((port, d))
        return d


def _cache() -> tuple[RunningEndpoints, ScriptedBackend, Clock]:
    backend, clock = ScriptedBackend(), Clock()
    backend_any: Any = backend
    return RunningEndpoints(backend_any, clock, ttl=1.0), backend, clock


def test_an_answer_is_reused_within_the_ttl_and_asked_again_after() -> None:
    cache, backend, clock = _cache()
    first = cache.get("s")
    backend.calls[0].callback(Observed(State.RUNNING, HERE))
    assert result_of(first) == HERE
    clock.advance(0.9)
    assert result_of(cache.get("s")) == HERE
    assert len(backend.calls) == 1
    clock.advance(0.2)
    later = cache.get("s")
    assert len(backend.calls) == 2
    backend.calls[1].callback(Observed(State.RUNNING, MOVED))
    assert result_of(later) == MOVED


def test_concurrent_requests_share_one_backend_call() -> None:
    cache, backend, _ = _cache()
    waiting = [cache.get("s") for _ in range(50)]
    assert len(backend.calls) == 1
    backend.calls[0].callback(Observed(State.RUNNING, HERE))
    assert [result_of(d) for d in waiting] == [HERE] * 50


def test_a_sandbox_that_is_not_running_has_no_endpoint_and_is_not_remembered() -> None:
    cache, backend, _ = _cache()
    first = cache.get("s")
    backend.calls[0].callback(Observed(State.STOPPED))
    assert result_of(first) is None
    cache.get("s")
    assert len(backend.calls) == 2


def test_forget_drops_the_answer_at_once() -> None:
    cache, backend, _ = _cache()
    first = cache.get("s")
    backend.calls[0].callback(Observed(State.RUNNING, HERE))
    result_of(first)
    cache.forget("s")
    cache.get("s")
    assert len(backend.calls) == 2


def test_an_answer_that_crosses_a_status_change_is_passed_on_but_not_remembered() -> None:
    cache, backend, _ = _cache()
    asked = cache.get("s")
    cache.forget("s")  # e.g. paused while the backend was being asked
    backend.calls[0].callback(Observed(State.RUNNING, HERE))
    assert result_of(asked) == HERE
    cache.get("s")
    assert len(backend.calls) == 2


def test_a_backend_failure_reaches_every_waiter_and_nothing_is_remembered() -> None:
    cache, backend, _ = _cache()
    waiting = [cache.get("s"), cache.get("s")]
    backend.calls[0].errback(RuntimeError("engine down"))
    for d in waiting:
        assert failure_of(d).check(RuntimeError)
    cache.get("s")
    assert len(backend.calls) == 2


def test_sandboxes_are_remembered_separately() -> None:
    cache, backend, _ = _cache()
    a, b = cache.get("a"), cache.get("b")
    backend.calls[0].callback(Observed(State.RUNNING, HERE))
    backend.calls[1].callback(Observed(State.RUNNING, MOVED))
    assert (result_of(a), result_of(b)) == (HERE, MOVED)


def test_a_request_after_a_status_change_does_not_join_the_lookup_before_it() -> None:
    cache, backend, _ = _cache()
    early = cache.get("s")
    cache.forget("s")  # e.g. paused while the backend was being asked
    late = cache.get("s")
    assert len(backend.calls) == 2  # the late request asks afresh
    backend.calls[1].callback(Observed(State.STOPPED))
    backend.calls[0].callback(Observed(State.RUNNING, HERE))
    assert result_of(early) == HERE and result_of(late) is None
    cache.get("s")
    assert len(backend.calls) == 3  # neither answer was remembered as running


def test_a_clock_stepped_backwards_makes_an_answer_stale() -> None:
    cache, backend, clock = _cache()
    clock.advance(1000)
    first = cache.get("s")
    backend.calls[0].callback(Observed(State.RUNNING, HERE))
    result_of(first)
    clock.rightNow -= 3600  # an NTP step of an hour back
    cache.get("s")
    assert len(backend.calls) == 2


def test_a_malformed_backend_answer_fails_its_waiters_and_the_next_request_asks_again() -> None:
    cache, backend, _ = _cache()
    first = cache.get("s")
    backend.calls[0].callback(None)  # type: ignore[arg-type]
    assert failure_of(first).check(AttributeError)
    cache.get("s")
    assert len(backend.calls) == 2


def test_previews_are_remembered_per_port_and_forgotten_with_their_sandbox() -> None:
    """A preview's address comes from ``preview_endpoint`` and is kept per (sandbox, port),
    apart from opencode's; a status change forgets them all."""
    cache, backend, _ = _cache()
    opencode, vite, api = cache.get("s"), cache.get("s", 5173), cache.get("s", 8000)
    assert [port for port, _ in backend.previews] == [5173, 8000] and len(backend.calls) == 1
    backend.calls[0].callback(Observed(State.RUNNING, HERE))
    backend.previews[0][1].callback(Endpoint("10.0.0.2", 5173))
    backend.previews[1][1].callback(None)  # (not running: nothing is remembered)
    assert result_of(opencode) == HERE and result_of(api) is None
    assert result_of(vite) == Endpoint("10.0.0.2", 5173)
    assert cache.cached("s", 5173) == Endpoint("10.0.0.2", 5173) and cache.cached("s") == HERE
    assert cache.cached("s", 8000) is None
    cache.forget("s")
    assert cache.cached("s", 5173) is None and cache.cached("s") is None

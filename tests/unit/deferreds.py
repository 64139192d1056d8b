"""Reading fired Deferreds in plain test functions (SynchronousTestCase has its own
successResultOf / failureResultOf; these serve helpers and pytest-style tests alike)."""

from __future__ import annotations

from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

T = TypeVar("T")


def result_of(d: Deferred[T]) -> T:
    """The result of a Deferred that has fired successfully (raises its failure otherwise)."""
    results: list[T] = []
    failures: list[Failure] = []
    d.addCallbacks(results.append, failures.append)
    if failures:
        failures[0].raiseException()
    assert results, "the Deferred has not fired"
    return results[0]


def failure_of(d: Deferred[Any]) -> Failure:
    """The failure of a Deferred that has failed (and handles it)."""
    results: list[Any] = []
    failures: list[Failure] = []
    d.addCallbacks(results.append, failures.append)
    assert not results, f"the Deferred succeeded with {results[0]!r}"
    assert failures, "the Deferred has not fired"
    return failures[0]

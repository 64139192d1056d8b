"""What parts built in order tell parts built later: the composition root's one hook object.

A part built early (a backend, the tunnel hub, the proxy's sessions, the relay workers) is
handed one of these hooks at construction and calls it; the parts that must hear of it are
built later and subscribe once, in the builder that makes them. So no object is given its
listener by assigning its attributes after construction, and no closure names something
built further down. (What the *domain* tells the rest, revocations and status changes
committed to the database, goes through ``domain.events.Events`` instead: those are
awaited, and reach other replicas.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, ParamSpec

from attrs import define, field

P = ParamSpec("P")


@define(eq=False)
class Hook(Generic[P]):
    """One named event: calling it calls each subscriber, in the order they subscribed.

    A subscriber's exception reaches the caller (the later subscribers are not called), as
    when the caller held that one function itself.
    """

    name: str
    _subscribers: list[Callable[P, None]] = field(factory=list, init=False)

    def subscribe(self, subscriber: Callable[P, None]) -> None:
        self._subscribers.append(subscriber)

    @property
    def subscribers(self) -> int:
        """How many subscribed (a hook nobody heard is a wiring mistake)."""
        return len(self._subscribers)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> None:
        for subscriber in list(self._subscribers):
            subscriber(*args, **kwargs)


def _sandbox_exited() -> Hook[[str, str]]:
    return Hook("sandbox_exited")


def _tunnel_changed() -> Hook[[str]]:
    return Hook("tunnel_changed")


def _streams_cut() -> Hook[...]:
    return Hook("streams_cut")


def _relayed() -> Hook[[str, int]]:
    return Hook("relayed")


@define(eq=False)
class ServerHooks:
    """The events between the server's parts, each from one teller to its hearers."""

    # (sandbox_id, why): the backend saw a sandbox's opencode end by itself -> the manager
    # fails it at once.
    sandbox_exited: Hook[[str, str]] = field(factory=_sandbox_exited)
    # (sandbox_id): a local agent's tunnel came or went -> the proxy's cached status, the
    # Anthropic proxy's, and the other replicas drop what they knew.
    tunnel_changed: Hook[[str]] = field(factory=_tunnel_changed)
    # (**match: user_id / sandbox_id / workspace_id): sessions were revoked -> the long
    # streams open through twisted.web and through every relay worker end.
    streams_cut: Hook[...] = field(factory=_streams_cut)
    # (sandbox_id, count): requests the relay workers carried -> the routes count them as
    # the sandbox's activity.
    relayed: Hook[[str, int]] = field(factory=_relayed)

    def all(self) -> list[Hook[...]]:
        return [self.sandbox_exited, self.tunnel_changed, self.streams_cut, self.relayed]

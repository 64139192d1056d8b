"""The domain's event hook: every subscriber hears every event, in order; a failing one is
logged, keeps no other from hearing, and its failure reaches whoever fired the event."""

from __future__ import annotations

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from cli_server.domain.events import Events, Listener


@define(eq=False)
class Heard:
    """A listener that writes down what it hears, in a list shared with others."""

    name: str
    said: list[tuple[str, ...]]
    broken: bool = False

    async def _hear(self, *what: str) -> None:
        self.said.append((self.name, *what))
        if self.broken:
            raise RuntimeError(f"{self.name} is broken")

    async def user_revoked(self, user_id: str) -> None:
        await self._hear("user_revoked", user_id)

    async def user_disabled(self, user_id: str) -> None:
        await self._hear("user_disabled", user_id)

    async def member_changed(self, user_id: str, workspace_id: str) -> None:
        await self._hear("member_changed", user_id, workspace_id)

    async def sandbox_deleted(self, sandbox_id: str) -> None:
        await self._hear("sandbox_deleted", sandbox_id)

    async def sandbox_status_changed(self, sandbox_id: str) -> None:
        await self._hear("sandbox_status_changed", sandbox_id)


@define(eq=False)
class Waiting:
    """A listener whose revocation takes time: the next one hears only once it is done."""

    said: list[tuple[str, ...]]
    done: Deferred[None] = field(factory=Deferred)

    async def user_revoked(self, user_id: str) -> None:
        await self.done
        self.said.append(("waiting", "user_revoked", user_id))

    async def user_disabled(self, user_id: str) -> None:
        pass

    async def member_changed(self, user_id: str, workspace_id: str) -> None:
        pass

    async def sandbox_deleted(self, sandbox_id: str) -> None:
        pass

    async def sandbox_status_changed(self, sandbox_id: str) -> None:
        pass


def fire(events: Events, name: str, *args: str) -> Deferred[None]:
    return Deferred.fromCoroutine(getattr(events, name)(*args))


class EventsTests(SynchronousTestCase):
    def test_every_subscriber_hears_every_event_in_order(self) -> None:
        """Each of the five events reaches each subscriber, in the order they subscribed."""
        said: list[tuple[str, ...]] = []
        events = Events()
        for name in ("proxy", "agents"):
            listener: Listener = Heard(name, said)
            events.subscribe(listener)
        cases = [
            ("user_revoked", "u"),
            ("user_disabled", "u"),
            ("member_changed", "u", "w"),
            ("sandbox_deleted", "s"),
            ("sandbox_status_changed", "s"),
        ]
        for name, *args in cases:
            self.successResultOf(fire(events, name, *args))
        self.assertEqual(
            said, [(who, name, *args) for name, *args in cases for who in ("proxy", "agents")]
        )

    def test_no_subscriber_is_no_error(self) -> None:
        """A domain object made without a hook (tests, tools) fires into an empty fan-out."""
        self.successResultOf(fire(Events(), "member_changed", "u", "w"))

    def test_a_failure_is_logged_and_raised_after_all_have_heard(self) -> None:
        """A broken subscriber neither silences the others nor is swallowed: each failure is
        logged with the event, and the first reaches the caller once every one has heard."""
        said: list[tuple[str, ...]] = []
        events = Events()
        events.subscribe(Heard("first", said, broken=True))
        events.subscribe(Heard("second", said))
        events.subscribe(Heard("third", said, broken=True))
        with capturedLogs() as logged:
            failure = self.failureResultOf(fire(events, "user_disabled", "u1"), RuntimeError)
        self.assertEqual(str(failure.value), "first is broken")
        self.assertEqual([who for who, *_ in said], ["first", "second", "third"])
        failures = [e for e in logged if e.get("log_failure") is not None]
        self.assertEqual(len(failures), 2)
        self.assertEqual({(e["event"], e["about"]) for e in failures}, {("user_disabled", "u1")})
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)  # (seen, so not reported)

    def test_each_subscriber_is_awaited_before_the_next(self) -> None:
        """A revocation that awaits the database finishes before the next subscriber hears,
        and before the caller goes on."""
        said: list[tuple[str, ...]] = []
        events = Events()
        waiting = Waiting(said)
        events.subscribe(waiting)
        events.subscribe(Heard("after", said))
        fired = fire(events, "user_revoked", "u")
        self.assertNoResult(fired)
        self.assertEqual(said, [])
        waiting.done.callback(None)
        self.successResultOf(fired)
        self.assertEqual(said, [("waiting", "user_revoked", "u"), ("after", "user_revoked", "u")])

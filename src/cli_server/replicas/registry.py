"""The replicas serving one database: each registers, heartbeats, and refuses to join where it
cannot work (embedded PostgreSQL and the process backend are single-replica)."""

from __future__ import annotations

from collections.abc import Sequence

from attrs import define, field, frozen
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from cli_server.db.pool import Database, DatabaseUnavailable, Row, Transaction

HEARTBEAT_SECONDS = 5.0
# A replica silent this long is dead: its row goes, and it no longer blocks anyone.
EXPIRY_SECONDS = 30.0


class ReplicaRefused(Exception):
    """This replica cannot serve this database next to the replicas already on it."""


@frozen
class Replica:
    """What a replica says about itself in the registry."""

    id: str  # new at each start
    hostname: str
    instance: str  # its data directory: with the hostname, the same replica after a restart
    advertise_url: str | None
    backend: str
    embedded_db: bool
    backend_instance: str | None = None  # docker and k8s: the label on the objects it makes


def refusal(me: Replica, others: Sequence[Row]) -> str | None:
    """Why ``me`` must not join the live replicas ``others`` (rows of the table), or None."""
    for other in others:
        where = f"replica {other['id']} on {other['hostname']}"
        if me.embedded_db:
            return (
                f"{where} already uses this embedded PostgreSQL; embedded PostgreSQL is "
                "single-replica: give every replica --db-url (DATABASE_URL) of one external "
                "PostgreSQL"
            )
        if other["embedded_db"]:
            return (
                f"{where} runs this database embedded (single-replica); give every replica "
                "--db-url (DATABASE_URL) of one external PostgreSQL"
            )
        theirs = other.get("backend_instance")
        if other["backend"] == me.backend and theirs != me.backend_instance:
            return (
                f"{where} labels its {me.backend} sandboxes {theirs!r}, this one "
                f"{me.backend_instance!r}: each would take the other's sandboxes for gone; give "
                "every replica the same K8S_INSTANCE (--k8s-instance)"
            )
        if "process" in (me.backend, other["backend"]) and other["hostname"] != me.hostname:
            return (
                f"{where} uses the {other['backend']} backend next to this {me.backend} one: "
                "process sandboxes run on one host only, unreachable from the others; run "
                "one replica, or --backend docker or k8s on every replica"
            )
        if "process" in (me.backend, other["backend"]):
            return (
                f"{where} already serves this database with the process backend: its "
                "sandboxes are child processes of one server; run one replica, or --backend "
                "docker or k8s on every replica"
            )
    return None


@define(eq=False)
class Registry:
    """This replica's row in ``replicas``, and the live others."""

    _db: Database
    me: Replica
    _expiry: float = EXPIRY_SECONDS
    # No other live replica when this one joined: what the table says is connected to a
    # replica (local agents' tunnels) is stale.
    alone: bool = field(default=False, init=False)
    _log = Logger()

    async def join(self) -> None:
        """Register, unless a live replica makes this one unable to work (ReplicaRefused).
        Under a table lock: of two replicas starting at once, the second sees the first."""

        async def work(tx: Transaction) -> str | None:
            await tx.execute("LOCK TABLE replicas IN SHARE ROW EXCLUSIVE MODE")
            await self._expire(tx)
            # (this data directory's earlier life, killed before it could leave)
            await tx.execute(
                "DELETE FROM replicas WHERE hostname = %s AND instance = %s",
                (self.me.hostname, self.me.instance),
            )
            others = await tx.query("SELECT * FROM replicas ORDER BY started_at")
            why = refusal(self.me, others)
            if why is None:
                await self._insert(tx)
                self.alone = not others
            return why

        why = await self._db.transaction(work)
        if why is not None:
            raise ReplicaRefused(why)
        self._log.info(
            "replica {id} on {hostname} registered (advertised at {url})",
            id=self.me.id,
            hostname=self.me.hostname,
            url=self.me.advertise_url or "nowhere",
        )

    async def heartbeat(self) -> None:
        async def work(tx: Transaction) -> None:
            updated = await tx.execute(
                "UPDATE replicas SET heartbeat_at = now() WHERE id = %s", (self.me.id,)
            )
            if not updated:  # (silent too long, say the database was away: expired)
                await self._insert(tx)
            await self._expire(tx)

        await self._db.transaction(work)

    async def leave(self) -> None:
        await self._db.execute("DELETE FROM replicas WHERE id = %s", (self.me.id,))

    async def live(self) -> list[Row]:
        """The replicas that heartbeat lately, this one included, oldest first."""
        return await self._db.query(
            "SELECT id, hostname, advertise_url, backend, embedded_db, started_at, heartbeat_at"
            " FROM replicas WHERE heartbeat_at > now() - make_interval(secs => %s)"
            " ORDER BY started_at",
            (self._expiry,),
        )

    async def _insert(self, tx: Transaction) -> None:
        me = self.me
        await tx.execute(
            "INSERT INTO replicas (id, hostname, instance, advertise_url, backend,"
            " backend_instance, embedded_db) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (
                me.id,
                me.hostname,
                me.instance,
                me.advertise_url,
                me.backend,
                me.backend_instance,
                me.embedded_db,
            ),
        )

    async def _expire(self, tx: Transaction) -> None:
        await tx.execute(
            "DELETE FROM replicas WHERE heartbeat_at < now() - make_interval(secs => %s)",
            (self._expiry,),
        )


@define(eq=False)
class RegistryService(Service):
    """Leaves the registry on a clean stop (before the database closes), so this replica no
    longer counts as live; a killed one expires instead."""

    _registry: Registry
    _clock: IReactorTime
    _timeout: float = 5.0
    joined: bool = field(default=False, init=False)
    _log = Logger()

    async def join(self) -> None:
        await self._registry.join()
        self.joined = True

    def stopService(self) -> Deferred[None]:
        super().stopService()
        d = Deferred.fromCoroutine(self._leave())
        d.addTimeout(self._timeout, self._clock)
        d.addErrback(self._unregistered)
        return d

    async def _leave(self) -> None:
        if self.joined:
            self.joined = False
            await self._registry.leave()

    def _unregistered(self, failure: Failure) -> None:
        why = failure.value if failure.check(DatabaseUnavailable) else failure.getErrorMessage()
        self._log.warn("could not leave the replica registry ({why}); the row expires", why=why)

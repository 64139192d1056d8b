"""Which replica holds each local sandbox's tunnel, in ``tunnel_holders``.

A tunnel that lands here takes the row (whoever held it before) and the sandbox is
``running``, in one transaction: the newest tunnel wins, across replicas as within one. The
replica that lost the row hears it (``sandbox_status_changed`` from the others, and its own
sweep) and closes its older tunnel as replaced; nothing ever takes a row back. A tunnel's end
releases the row only if it is still this replica's (an agent that moved to another replica
must not be made offline by its old tunnel's end) and only then says ``offline``. A replica
that dies cannot release its rows: the survivors release the rows of every replica whose
heartbeat expired, and the sandbox goes ``offline`` in the same statement, so exactly one
survivor does it once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from urllib.parse import urlsplit

from attrs import define, field, frozen

from cli_server.db.pool import Database, Transaction
from cli_server.replicas.registry import EXPIRY_SECONDS

_CACHE_SECONDS = 1.0  # a holder found is used this long without asking again
# (a replica counts while its heartbeat is younger than the registry's expiry)
_LIVE = "r.heartbeat_at > now() - make_interval(secs => %(expiry)s)"


@frozen
class Holder:
    """Where the replica holding a tunnel is reached."""

    replica_id: str
    host: str
    port: int


def holder_address(url: str | None) -> tuple[str, int] | None:
    """Host and port of an ``http://`` advertise URL, None if there is none to reach."""
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        return None
    return parts.hostname, parts.port or 80


@frozen
class Details:
    """What the holder knows of a tunnel's agent, for the replicas that do not hold it."""

    ports: tuple[int, ...] = ()  # the ports its laptop shares
    agent: str | None = None  # its release name, from its hello
    protocol: int | None = None


@frozen
class Swept:
    released: list[str]  # sandboxes of replicas gone, now offline
    lost: list[str]  # tunnels held here whose row another replica took: replaced there


@define(eq=False)
class TunnelHolders:
    _db: Database
    _replica_id: str
    _seconds: Callable[[], float]  # the clock's, for the lookup cache
    _expiry: float = EXPIRY_SECONDS
    _known: dict[str, tuple[Holder | None, float]] = field(factory=dict, init=False)

    async def hold(self, sandbox_id: str, details: Details = Details()) -> None:
        """The tunnel landed here: the row is ours, and the sandbox is running."""

        async def work(tx: Transaction) -> None:
            await tx.execute(
                "INSERT INTO tunnel_holders (sandbox_id, replica_id, shared_ports, agent,"
                " protocol) VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT (sandbox_id) DO UPDATE"
                " SET replica_id = EXCLUDED.replica_id, since = now(),"
                " shared_ports = EXCLUDED.shared_ports, agent = EXCLUDED.agent,"
                " protocol = EXCLUDED.protocol",
                (sandbox_id, self._replica_id, *_columns(details)),
            )
            await tx.execute(
                "UPDATE sandboxes SET status = 'running', error = NULL, updated_at = now(),"
                " last_activity_at = now() WHERE id = %s AND is_local AND status <> 'running'",
                (sandbox_id,),
            )

        await self._db.transaction(work)
        self._known.pop(sandbox_id, None)

    async def release(self, sandbox_id: str) -> bool:
        """The tunnel ended here: offline, unless another replica holds it by now (then
        False, and nothing is written)."""
        rows = await self._db.query(
            "WITH mine AS (DELETE FROM tunnel_holders WHERE sandbox_id = %s AND replica_id = %s"
            " RETURNING sandbox_id)"
            " UPDATE sandboxes SET status = 'offline', error = NULL, updated_at = now()"
            " WHERE id IN (SELECT sandbox_id FROM mine) AND is_local AND status <> 'offline'"
            " RETURNING id",
            (sandbox_id, self._replica_id),
        )
        self._known.pop(sandbox_id, None)
        return bool(rows)

    async def holder(self, sandbox_id: str) -> Holder | None:
        """The live other replica holding the sandbox's tunnel, if any (asked at most once a
        second per sandbox; ``forget`` after it failed)."""
        known = self._known.get(sandbox_id)
        now = self._seconds()
        if known is not None and 0 <= now - known[1] < _CACHE_SECONDS:
            return known[0]
        rows = await self._db.query(
            "SELECT r.id, r.advertise_url FROM tunnel_holders h"
            " JOIN replicas r ON r.id = h.replica_id"
            f" WHERE h.sandbox_id = %(sandbox)s AND r.id <> %(me)s AND {_LIVE}",
            {"sandbox": sandbox_id, "me": self._replica_id, "expiry": self._expiry},
        )
        found = None
        if rows:
            address = holder_address(rows[0]["advertise_url"])
            if address is not None:
                found = Holder(str(rows[0]["id"]), *address)
        if len(self._known) > 10_000:
            self._known.clear()
        self._known[sandbox_id] = (found, now)
        return found

    async def details(self, sandbox_ids: Iterable[str]) -> dict[str, Details]:
        """What the live holders of these sandboxes' tunnels know of their agents."""
        wanted = list(sandbox_ids)
        if not wanted:
            return {}
        rows = await self._db.query(
            "SELECT h.sandbox_id, h.shared_ports, h.agent, h.protocol FROM tunnel_holders h"
            " JOIN replicas r ON r.id = h.replica_id"
            f" WHERE h.sandbox_id = ANY(%(ids)s::uuid[]) AND {_LIVE}",
            {"ids": wanted, "expiry": self._expiry},
        )
        return {
            str(row["sandbox_id"]): Details(
                tuple(sorted(row["shared_ports"] or ())), row["agent"], row["protocol"]
            )
            for row in rows
        }

    def forget(self, sandbox_id: str) -> None:
        self._known.pop(sandbox_id, None)

    async def held_elsewhere(self, sandbox_id: str) -> bool:
        """Whether another replica has taken the sandbox's row (a newer tunnel landed there)."""
        rows = await self._db.query(
            "SELECT 1 FROM tunnel_holders WHERE sandbox_id = %s AND replica_id <> %s",
            (sandbox_id, self._replica_id),
        )
        return bool(rows)

    async def sweep(self, held_here: Mapping[str, Details]) -> Swept:
        """Every few seconds, on every replica: release the rows of replicas whose heartbeat
        expired (their sandboxes go offline, by exactly one survivor), then say again that the
        tunnels held here are running and ours, if their row was lost (to the database's
        absence, or released as if this replica were gone). A row another live replica holds
        is never taken back: its tunnel is newer, and ours is ``lost``."""
        mine = dict(held_here)

        async def work(tx: Transaction) -> Swept:
            rows = await tx.query(
                "WITH dead AS (DELETE FROM tunnel_holders h WHERE h.replica_id <> %(me)s AND"
                f" NOT EXISTS (SELECT 1 FROM replicas r WHERE r.id = h.replica_id AND {_LIVE})"
                " RETURNING sandbox_id)"
                " UPDATE sandboxes SET status = 'offline', updated_at = now()"
                " WHERE id IN (SELECT sandbox_id FROM dead) AND is_local"
                " AND status <> 'offline' RETURNING id",
                {"me": self._replica_id, "expiry": self._expiry},
            )
            lost = []
            for sandbox_id, details in mine.items():
                await tx.execute(
                    "INSERT INTO tunnel_holders (sandbox_id, replica_id, shared_ports, agent,"
                    " protocol) VALUES (%s, %s, %s, %s, %s) ON CONFLICT (sandbox_id) DO NOTHING",
                    (sandbox_id, self._replica_id, *_columns(details)),
                )
                held = await tx.one(
                    "SELECT replica_id FROM tunnel_holders WHERE sandbox_id = %s", (sandbox_id,)
                )
                if held is not None and held["replica_id"] != self._replica_id:
                    lost.append(sandbox_id)
                    continue
                await tx.execute(
                    "UPDATE sandboxes SET status = 'running', updated_at = now()"
                    " WHERE id = %s AND is_local AND status <> 'running'",
                    (sandbox_id,),
                )
            released = [str(row["id"]) for row in rows if str(row["id"]) not in mine]
            return Swept(released, lost)

        swept = await self._db.transaction(work)
        for sandbox_id in swept.lost:
            self._known.pop(sandbox_id, None)
        return swept

    async def settle_at_start(self) -> None:
        """At start nothing is connected here: release the rows of replicas gone (an earlier
        life of this one included), and local sandboxes no live replica holds are offline."""
        await self.sweep({})
        await self._db.execute(
            "UPDATE sandboxes s SET status = 'offline', updated_at = now()"
            " WHERE s.is_local AND s.status <> 'offline'"
            " AND NOT EXISTS (SELECT 1 FROM tunnel_holders h WHERE h.sandbox_id = s.id)"
        )


def _columns(details: Details) -> tuple[list[int], str | None, int | None]:
    return list(details.ports), details.agent, details.protocol

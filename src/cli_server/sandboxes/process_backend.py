"""The default backend: each sandbox is `opencode serve` under bubblewrap on this host.

Per sandbox, as root:
- a network namespace of its own (a bind-mounted nsfs file), with slirp4netns giving it a
  user-mode uplink and one forward from 127.0.0.1:<port> on the host to port 4096 inside;
  a preview adds one more forward per port asked for, also on the host's 127.0.0.1 only,
  which lives as long as that slirp4netns (so a stop, a pause or a server restart ends it)
  or until newer ones push it out: at most ``MAX_FORWARDS`` per sandbox, and only for a port
  something listens on in the sandbox at that moment (a host port taken by a listener is one
  the kernel no longer gives to the server's own outgoing connections, so a member opening
  port after port must not use them up); forwards take host ports outside the kernel's range
  for outgoing connections where it leaves enough, and only the server's uid may connect to
  them (a host nftables rule, see forward_guard.py);
  ``--disable-host-loopback`` keeps the host's loopback services (our API, PostgreSQL) out
  of reach, and other sandboxes live in other namespaces;
- an nftables table in that namespace, loaded before anything runs there: the sandbox
  reaches the internet, its own loopback (opencode, the Anthropic door) and slirp's DNS, and
  nothing of this host or private networks (see egress.py; ``--egress-allow`` opens ranges);
- bubblewrap, entered as the unprivileged ``cli-sandbox`` account, with new user, pid, ipc,
  uts and cgroup namespaces, no capabilities, no further user namespaces, a seccomp filter
  (see seccomp.py), read-only /usr, a read-only root and /dev, a private HOME kept across
  pause/resume and the workspace disk at /data/disk0; /tmp and /dev/shm are in memory, each
  with a size bound (a quarter and an eighth of the memory limit), so filling them fails
  with ENOSPC instead of taking the host's memory;
- HOME and the workspace disk each their own loop-mounted ext4 image of a fixed size
  (disk_quota.py), so a sandbox that fills one gets ENOSPC and the host's disk stays free;
- the sandbox's environment, its secrets with it, given to bubblewrap through a descriptor
  (``--args``), never on a command line, which every local user can read in /proc;
- a cgroup with the memory and pids limits (v1 memory and pids controllers, or one v2
  group under /sys/fs/cgroup/cli-server), when the machine lets us write one; where it does
  not, the server says once that sandboxes run without these limits.

slirp4netns, which runs as root, runs with its own sandbox and seccomp filter
(``--enable-sandbox --enable-seccomp``): an empty root, no capabilities beyond what it needs.

Every helper process dies with the server: bubblewrap has ``--die-with-parent`` and
slirp4netns ``--exit-fd`` on a pipe we hold, so even a SIGKILLed server leaves nothing running.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import stat
from collections import OrderedDict
from collections.abc import Callable, Container, Mapping, Sequence
from pathlib import Path

from attrs import Factory, define, field, frozen
from twisted.internet.defer import Deferred, DeferredLock, TimeoutError, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import (
    IListeningPort,
    IProcessTransport,
    IReactorTime,
    IReactorUNIX,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from cli_server.plumbing.networks import Network
from cli_server.plumbing.process import ProcessReactor, run_process
from cli_server.plumbing.system_accounts import SystemAccount, ensure_system_account
from cli_server.plumbing.threads import Runner, synchronous_runner
from cli_server.sandboxes import seccomp
from cli_server.sandboxes.backend import (
    PREVIEW_PORTS,
    BackendDefaults,
    BackendError,
    Door,
    Endpoint,
    ExitListener,
    LogTail,
    Observed,
    SandboxSpec,
    State,
    deferred,
    exit_reason,
    redact,
    secret_forms,
)
from cli_server.sandboxes.disk_quota import DiskQuotas, DiskSizes
from cli_server.sandboxes.egress import EgressPolicy
from cli_server.sandboxes.forward_guard import ForwardGuard
from cli_server.sandboxes.listening import listening_ports
from cli_server.sandboxes.opencode import OpencodeClient
from cli_server.sandboxes.output_log import LOG_NAME, OutputLog, read_tail
from cli_server.sandboxes.unixjson import unix_json_call

SANDBOX_ACCOUNT = "cli-sandbox"
GUEST_PORT = 4096
ANTHROPIC_PORT = 4097  # the Anthropic proxy's door, on the sandbox's own loopback
SLIRP_DNS = "10.0.2.3"  # slirp4netns's resolver, the one private address a sandbox may use
SLIRP_GUEST = "10.0.2.100"  # the sandbox's own address, where slirp4netns's forwards arrive
# Dev servers listen on localhost by default (Vite does): a preview's forwarded connection is
# passed on to the sandbox's loopback, which also serves those listening on every address.
# Only slirp4netns's forwards arrive at the sandbox's address from outside; opencode's own
# forward is left as it is, and the Anthropic door (on that loopback) stays out of reach.
_LOOPBACK_PREVIEWS = f"""
table ip cli_previews
delete table ip cli_previews
table ip cli_previews {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname "tap0" ip daddr {SLIRP_GUEST} tcp dport != {{ {GUEST_PORT}, {ANTHROPIC_PORT} }} \\
      dnat to 127.0.0.1
  }}
}}
"""
MAX_FORWARDS = 16  # preview forwards per sandbox; the least recently used goes first
# What a preview of a port nothing listens on gets: TCP port 0 is never listened on, so
# connecting is refused at once and the proxy shows its "nothing is listening" page.
NOT_LISTENING = Endpoint("127.0.0.1", 0)
_RESTING = 30.0  # seconds a removed forward's host port is not given to another forward
ARGS_FD = 3  # bubblewrap reads its --setenv arguments from this descriptor
SECCOMP_FD = 4  # and its seccomp filter from this one
_CGROUP_ROOT = Path("/sys/fs/cgroup")
_OUTPUT_TAIL = 4000


@frozen
class Limits:
    memory_bytes: int = 2 * 1024**3
    pids: int = 1024

    @property
    def tmp_bytes(self) -> int:
        """/tmp's size in a sandbox: a quarter of its memory (a tmpfs takes from it)."""
        return self.memory_bytes // 4

    @property
    def shm_bytes(self) -> int:
        """/dev/shm's size: an eighth of its memory."""
        return self.memory_bytes // 8


def sandbox_account() -> SystemAccount | None:
    """Root runs sandboxes as ``cli-sandbox``; others run them as themselves."""
    return ensure_system_account(SANDBOX_ACCOUNT)


def find_opencode(explicit: str | None) -> Path | None:
    """``--opencode-bin``, else ``opencode`` on PATH, else ./node_modules (npm install here)."""
    if explicit:
        return Path(explicit)
    candidates = [
        Path.cwd() / "node_modules" / "opencode-linux-x64" / "bin" / "opencode",
        Path(__file__).resolve().parents[3]
        / "node_modules"
        / "opencode-linux-x64"
        / "bin"
        / "opencode",
    ]
    on_path = shutil.which("opencode")
    if on_path:
        candidates.insert(0, Path(on_path))
    return next((c for c in candidates if c.is_file()), None)


def _reachable_by_others(path: Path) -> bool:
    return all(p.stat().st_mode & stat.S_IXOTH for p in path.parents)


def publish_binary(binary: Path, data_dir: Path) -> Path:
    """A path to ``binary`` that the sandbox account can open.

    An install under /root (mode 0700) hides it; we hard-link (or copy) it into the data dir
    once, keyed by size and mtime, instead of opening up the operator's home.
    """
    if _reachable_by_others(binary.resolve()) and binary.stat().st_mode & stat.S_IXOTH:
        return binary
    st = binary.stat()
    target = data_dir / "bin" / f"{binary.name}-{st.st_size}-{int(st.st_mtime)}"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_suffix(".tmp")
        staging.unlink(missing_ok=True)
        try:
            os.link(binary, staging)
        except OSError:
            shutil.copy2(binary, staging)
        staging.chmod(0o755)
        staging.rename(target)
    return target


class _Watched(ProcessProtocol):
    """A helper process we wait on: ``ready`` fires when ``is_ready`` says so (or fails if the
    process exits first), ``ended`` when it exits. The tail of its output explains failures."""

    def __init__(
        self,
        what: str,
        is_ready: Callable[[int, bytes], bool],
        log: OutputLog | None = None,
    ) -> None:
        self._what = what
        self._is_ready = is_ready
        self.log = log
        self.ready: Deferred[None] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.output = bytearray()
        self.reason: BaseException | None = None  # ProcessDone or ProcessTerminated

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD in (1, 2):
            if self.log is not None:
                self.log.write(data)
            self.output += data
            del self.output[:-_OUTPUT_TAIL]
            data = bytes(self.output)
        if not self.ready.called and self._is_ready(childFD, data):
            self.ready.callback(None)

    def processEnded(self, reason: Failure) -> None:
        self.reason = reason.value
        if self.log is not None:
            self.log.flush()
        if not self.ready.called:
            self.ready.errback(BackendError(f"{self._what} exited: {self.tail()}"))
        self.ended.callback(None)

    def tail(self) -> str:
        """The last lines it wrote (shown as a failed start's ``error``: its secrets blanked)."""
        text = self.output.decode("utf-8", "replace").strip()
        lines = text.splitlines()[-5:]
        if self.log is not None:
            lines = redact(lines, list(self.log.secrets))
        return " | ".join(lines) or "(no output)"


def _opencode_watch(log: OutputLog | None = None) -> _Watched:
    return _Watched("opencode", lambda fd, output: b"listening on" in output, log)


def _slirp_watch() -> _Watched:
    return _Watched("slirp4netns", lambda fd, data: fd == 3)  # it writes to --ready-fd=3


@frozen
class _Forward:
    host_port: int  # on the host's 127.0.0.1
    id: int  # slirp4netns's, for remove_hostfwd


@define(eq=False)
class _Live:
    port: int
    sandbox: IProcessTransport
    sandbox_proto: _Watched
    slirp: IProcessTransport | None  # None when unisolated
    slirp_proto: _Watched | None
    # previews: port inside -> its forward, added on first use, least recently used first
    # (under the lock: two requests at once add one forward)
    forwards: OrderedDict[int, _Forward] = Factory(OrderedDict)
    forwarding: DeferredLock = Factory(DeferredLock)


@define(eq=False)
class Cgroups:
    """The sandboxes' cgroups under ``root`` (v2's one group per sandbox, or v1's two, in
    cli-server's own group), with ``limits`` written: the kernel bounds a sandbox's memory
    and processes, and says when its OOM killer acted."""

    root: Path
    limits: Limits
    _unlimited_said: bool = field(default=False, init=False)
    _log = Logger(namespace="cli_server.sandboxes.process_backend.ProcessBackend")

    def paths(self, sandbox_id: str) -> list[Path]:
        """Where a sandbox's cgroups are (or would be): v2's one group, or v1's two."""
        root = self.root
        if (root / "cgroup.controllers").exists():
            return [root / "cli-server" / sandbox_id]
        return [root / c / "cli-server" / sandbox_id for c in ("memory", "pids")]

    def make(self, sandbox_id: str) -> list[Path]:
        """The sandbox's cgroups with its limits written; an empty list (said once) where the
        machine does not let us make them."""
        memory, pids = str(self.limits.memory_bytes), str(self.limits.pids)
        groups = self.paths(sandbox_id)
        try:
            if len(groups) == 1:  # v2: our group's parent hands down both controllers
                parent = groups[0].parent
                parent.mkdir(exist_ok=True)
                for delegating in (parent.parent, parent):
                    (delegating / "cgroup.subtree_control").write_text("+memory +pids")
                settings = [{"memory.max": memory, "memory.swap.max": "0", "pids.max": pids}]
            else:
                settings = [{"memory.limit_in_bytes": memory}, {"pids.max": pids}]
            for group, values in zip(groups, settings, strict=True):
                group.mkdir(parents=True, exist_ok=True)
                for name, value in values.items():
                    if name != "memory.swap.max" or (group / name).exists():
                        (group / name).write_text(value)
        except OSError as e:
            self.remove(sandbox_id)
            if not self._unlimited_said:
                self._unlimited_said = True
                self._log.warn(
                    "sandboxes run WITHOUT memory and pids limits: cannot write their cgroup "
                    "under {root} ({why})",
                    root=self.root,
                    why=e,
                )
            return []
        return groups

    def remove(self, sandbox_id: str) -> None:
        """Removes the sandbox's groups (their processes gone); what cannot go stays."""
        for group in self.paths(sandbox_id):
            try:
                group.rmdir()
            except OSError:
                pass

    def oom_killed(self, sandbox_id: str) -> bool:
        """Whether the kernel's OOM killer acted in the sandbox's memory cgroup."""
        for group in self.paths(sandbox_id):
            for events in ("memory.events", "memory.oom_control"):  # v2, v1
                try:
                    lines = (group / events).read_text().splitlines()
                except OSError:
                    continue
                for line in lines:
                    name, _, value = line.partition(" ")
                    if name == "oom_kill" and value.strip().isdigit():
                        return int(value) > 0
        return False


@define(eq=False)
class ProcessBackend(BackendDefaults):
    """Sandboxes as local processes; see the module docstring."""

    # the clock (deadlines, resting ports); by default also what spawns the processes and
    # connects to slirp4netns' API socket (``processes``, ``unix``): the server's reactor is all
    _reactor: IReactorTime
    _data_dir: Path
    _opencode: Path
    _opencode_client: OpencodeClient
    _env: Mapping[str, str] = field(factory=dict)  # extra environment for every sandbox
    # the Anthropic proxy's door into a sandbox, taking only that sandbox's token
    _door: Door | None = None
    _anthropic_url: str | None = None  # ANTHROPIC_PROXY_URL: overrides the door's address
    _limits: Limits = field(factory=Limits)
    _account: SystemAccount | None = field(factory=sandbox_account)
    _isolated: bool = True  # False only with --allow-unisolated
    _egress_allow: tuple[Network, ...] = ()  # --egress-allow: private ranges a sandbox may reach
    _start_timeout: float = 60.0
    _disk_sizes: DiskSizes = field(factory=DiskSizes)  # 0: a plain directory, no quota
    # (the same reactor unless given: attrs cannot check these defaults, the server's reactor
    # provides IReactorProcess and IReactorUNIX)
    _processes: ProcessReactor = field(default=Factory(lambda self: self._reactor, takes_self=True))
    _unix: IReactorUNIX = field(default=Factory(lambda self: self._reactor, takes_self=True))
    _quotas: DiskQuotas = field(
        default=Factory(lambda self: DiskQuotas.on(self._processes), takes_self=True)
    )
    _cgroup_root: Path = _CGROUP_ROOT
    # runs the blocking reads of /proc (the server passes a bounded pool's)
    _threads: Runner = synchronous_runner
    # the host's rule that only our uid connects to the forwards
    _guard: ForwardGuard = field(
        default=Factory(
            lambda self: ForwardGuard.on(self._processes, self._data_dir), takes_self=True
        )
    )
    # a free host port for a forward, the resting ones left out (a test passes a fixed order)
    _pick_port: Callable[[Container[int]], int] = field(default=Factory(lambda: _forward_port))
    _live: dict[str, _Live] = field(factory=dict, init=False)
    # workspace id -> sandboxes started since its disk was mounted; unmounted when none is left
    _disk_users: dict[str, set[str]] = field(factory=dict, init=False)
    _doors: dict[str, IListeningPort] = field(factory=dict, init=False)
    # host port -> when its forward was removed: a request that picked that forward a moment
    # before must not reach another sandbox's forward on the same port
    _resting: dict[int, float] = field(factory=dict, init=False)
    # Told when a sandbox's opencode ends by itself (the manager fails it at once).
    on_exit: ExitListener | None = field(default=None, kw_only=True)
    # the sandboxes' cgroups, with their limits (public: tests and diagnostics read them)
    cgroups: Cgroups = field(
        default=Factory(lambda self: Cgroups(self._cgroup_root, self._limits), takes_self=True),
        init=False,
    )
    name = "process"
    _log = Logger()

    def live(self, sandbox_id: str) -> _Live | None:
        """What runs here for ``sandbox_id`` (its processes and preview forwards), if it
        runs (read-only: for tests and diagnostics)."""
        return self._live.get(sandbox_id)

    def track(self, sandbox_id: str, live: _Live) -> None:
        """From now on ``live`` runs ``sandbox_id`` here: what a start does once its processes
        are spawned (public: a test stands in for a start with it). When its opencode ends
        by itself, the sandbox is said failed (``on_exit``) and its slirp4netns stopped."""
        self._live[sandbox_id] = live
        live.sandbox_proto.ended.addCallback(lambda _: self._exited(sandbox_id, live))

    def resting(self, host_port: int) -> bool:
        """Whether ``host_port`` rests: its forward was removed moments ago, and no other
        sandbox's forward takes it yet."""
        return host_port in self._resting

    # -- layout -------------------------------------------------------------------------------

    def _sandbox_dir(self, sandbox_id: str) -> Path:
        return self._data_dir / "sandboxes" / sandbox_id

    def _disk(self, workspace_id: str) -> Path:
        return self._data_dir / "workspaces" / workspace_id / "disk"

    def _owned_dir(self, path: Path) -> None:
        """A directory only the sandbox account (and root) can use."""
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o700)
        if self._account is not None:
            os.chown(path, self._account.uid, self._account.gid)

    async def prepare(self, spec: SandboxSpec) -> Path:
        """A start's first step (public: tests make a sandbox's disks with it): the sandbox's
        directory, its HOME and its workspace's disk, each under its quota where sizes are
        set, owned by the sandbox account. Returns the sandbox's directory; ``stop`` and
        ``delete`` release what it mounted."""
        for shared in (self._data_dir, self._data_dir / "sandboxes", self._data_dir / "workspaces"):
            shared.mkdir(parents=True, exist_ok=True)
            shared.chmod(shared.stat().st_mode | stat.S_IXOTH)  # enter, not list
        if self._account is not None and not _reachable_by_others(self._data_dir):
            raise BackendError(
                f"the sandbox account cannot enter {self._data_dir}; make its parents "
                "searchable (chmod o+x) or use another --data-dir"
            )
        box = self._sandbox_dir(spec.id)
        box.mkdir(exist_ok=True)
        box.chmod(0o711)
        disk, home = self._disk(spec.workspace_id), box / "home"
        disk.parent.mkdir(exist_ok=True)
        disk.parent.chmod(0o711)
        # Counted before the mount, so a sibling stopping meanwhile does not unmount it.
        self._disk_users.setdefault(spec.workspace_id, set()).add(spec.id)
        await self._under_quota(disk, self._disk_sizes.workspace)
        await self._under_quota(home, self._disk_sizes.home)
        self._owned_dir(disk)
        self._owned_dir(home)
        return box

    async def _under_quota(self, directory: Path, size: int) -> None:
        if size:
            account = self._account
            owner = (account.uid, account.gid) if account is not None else None
            await self._quotas.attach(directory, size, owner)

    async def _release(self, sandbox_id: str, *, removing: bool = False) -> None:
        """Unmount what the sandbox's start mounted: its HOME, and its workspace's disk when no
        other sandbox started since uses it. A busy mount stays (adopted at the next start)
        unless the directory is about to be removed."""
        home = self._sandbox_dir(sandbox_id) / "home"
        await self._quotas.detach(home, lazy=removing)
        for workspace_id, users in list(self._disk_users.items()):
            if sandbox_id in users:
                users.discard(sandbox_id)
                if not users:
                    del self._disk_users[workspace_id]
                    await self._quotas.detach(self._disk(workspace_id))

    # -- start --------------------------------------------------------------------------------

    @deferred
    async def start(self, spec: SandboxSpec) -> Endpoint:
        if spec.id in self._live:
            return Endpoint("127.0.0.1", self._live[spec.id].port)
        try:
            return await self._start(spec)
        except BaseException as e:
            if self._sandbox_dir(spec.id).exists():
                why = str(e) if isinstance(e, BackendError) else type(e).__name__
                self._output_log(spec).note(f"the start failed: {why}")
            raise

    def _output_log(self, spec: SandboxSpec) -> OutputLog:
        """Where this run's opencode output goes; its secrets never reach the file."""
        secrets = (*secret_forms(spec.password), spec.proxy_token)
        return OutputLog(self._sandbox_dir(spec.id) / LOG_NAME, secrets)

    @deferred
    async def logs(self, sandbox_id: str) -> LogTail:
        return read_tail(self._sandbox_dir(sandbox_id) / LOG_NAME)

    async def _start(self, spec: SandboxSpec) -> Endpoint:
        box = await self.prepare(spec)
        self._output_log(spec).note("opencode starting")
        await self._teardown(spec.id)  # leftovers of a crash: stale netns mount, cgroup
        opencode = publish_binary(self._opencode, self._data_dir)
        if not self._isolated:
            return await self._start_unisolated(spec, box, opencode)
        netns = box / "netns"
        netns.touch()
        await self._must("unshare", [f"--net={netns}", "true"])
        await self._must("nsenter", [f"--net={netns}", "ip", "link", "set", "lo", "up"])
        await self._limit_egress(box, netns)
        anthropic = self._open_door(spec.id, netns)
        slirp, slirp_proto = self.spawn_slirp(box, netns)
        live: _Live | None = None
        port = None
        try:
            await _within(self._reactor, slirp_proto.ready, 10, "slirp4netns did not start")
            port = (await self._forward(box, GUEST_PORT)).host_port
            sandbox, proto = self.spawn_sandbox(spec, box, netns, opencode, anthropic)
            live = _Live(port, sandbox, proto, slirp, slirp_proto)
            return await self._until_healthy(spec, live)
        except BaseException:
            if live is None:
                _signal(slirp, "KILL")
                if port is not None:  # (else _stop_live releases it)
                    await self._guard.release([port])
            await self._stop_live(spec.id)
            await self._teardown(spec.id)
            raise

    async def _forward(self, box: Path, guest_port: int) -> _Forward:
        """Have the sandbox's slirp4netns forward a free port of the host's 127.0.0.1 (never
        another address) to ``guest_port`` inside. A port taken between our pick and slirp's
        bind is picked again."""
        now = self._reactor.seconds()
        for port, since in list(self._resting.items()):
            if not 0 <= now - since < _RESTING:
                del self._resting[port]
        refused = None
        for _ in range(3):
            port = self._pick_port(self._resting)
            await self._guard.admit_only_us(port)  # (before the forward listens)
            try:
                reply = await unix_json_call(
                    self._unix,
                    self._reactor,
                    str(box / "slirp.sock"),
                    {
                        "execute": "add_hostfwd",
                        "arguments": {
                            "proto": "tcp",
                            "host_addr": "127.0.0.1",
                            "host_port": port,
                            "guest_port": guest_port,
                        },
                    },
                    timeout=5,
                )
            except BaseException:
                await self._guard.release([port])
                raise
            refused = reply.get("error")
            if refused is None:
                return _Forward(port, int(reply.get("return", {}).get("id", -1)))
            await self._guard.release([port])
        raise BackendError(f"port forward refused: {refused}")

    async def _unforward(self, box: Path, forward: _Forward) -> None:
        """Remove one of the sandbox's forwards; its host port rests a while."""
        reply = await unix_json_call(
            self._unix,
            self._reactor,
            str(box / "slirp.sock"),
            {"execute": "remove_hostfwd", "arguments": {"id": forward.id}},
            timeout=5,
        )
        if reply.get("error") is not None:
            raise BackendError(f"port forward not removed: {reply['error']}")
        self._resting[forward.host_port] = self._reactor.seconds()
        await self._guard.release([forward.host_port])

    async def _start_unisolated(self, spec: SandboxSpec, box: Path, opencode: Path) -> Endpoint:
        """--allow-unisolated: opencode as a plain process on a loopback port, no namespaces."""
        port = _free_port()
        home = box / "home"
        anthropic = self._open_door(spec.id, None)
        env = {
            **self.environment(spec, anthropic, str(home)),
            "PATH": os.environ.get("PATH", "/usr/bin"),
        }
        argv = [str(opencode), "serve", "--hostname", "127.0.0.1", "--port", str(port)]
        proto = _opencode_watch(self._output_log(spec))
        account = self._account
        transport = self._processes.spawnProcess(
            proto,
            argv[0],
            argv,
            env=env,
            path=str(self._disk(spec.workspace_id)),
            uid=account.uid if account else None,
            gid=account.gid if account else None,
        )
        (box / "pid").write_text(str(transport.pid))
        try:
            return await self._until_healthy(spec, _Live(port, transport, proto, None, None))
        except BaseException:
            await self._stop_live(spec.id)
            raise

    async def _until_healthy(self, spec: SandboxSpec, live: _Live) -> Endpoint:
        """Track a just-spawned opencode; wait for its "listening" line, then for health."""
        self.track(spec.id, live)
        await _within(
            self._reactor,
            live.sandbox_proto.ready,
            self._start_timeout,
            "opencode did not start listening",
        )
        endpoint = Endpoint("127.0.0.1", live.port)
        await self._opencode_client.wait_healthy(
            endpoint, spec.password, timeout=self._start_timeout
        )
        return endpoint

    def _open_door(self, sandbox_id: str, netns: Path | None) -> str:
        """Open the Anthropic proxy's door for a sandbox; returns its ANTHROPIC_BASE_URL."""
        if self._anthropic_url:
            return self._anthropic_url
        if self._door is None:
            return f"http://127.0.0.1:{ANTHROPIC_PORT}/proxy/anthropic/v1"
        try:
            listening, port = self._door(sandbox_id, netns)
        except OSError as e:
            raise BackendError(f"cannot open the Anthropic proxy in the sandbox: {e}") from e
        self._doors[sandbox_id] = listening
        return f"http://127.0.0.1:{port}/proxy/anthropic/v1"

    def _close_door(self, sandbox_id: str) -> None:
        door = self._doors.pop(sandbox_id, None)
        if door is not None:
            door.stopListening()

    def environment(
        self, spec: SandboxSpec, anthropic_url: str, home: str = "/home/opencode"
    ) -> dict[str, str]:
        """A sandbox's whole environment (its secrets included; nothing of the server's own)."""
        return {
            "HOME": home,
            "XDG_CONFIG_HOME": f"{home}/.config",
            "XDG_DATA_HOME": f"{home}/.local/share",
            "XDG_CACHE_HOME": f"{home}/.cache",
            "XDG_STATE_HOME": f"{home}/.local/state",
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "TERM": "xterm-256color",
            "OPENCODE_SERVER_PASSWORD": spec.password,
            "OPENCODE_DISABLE_MODELS_FETCH": "1",
            "OPENCODE_DISABLE_AUTOUPDATE": "1",
            "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1",
            "ANTHROPIC_API_KEY": spec.proxy_token,
            "ANTHROPIC_BASE_URL": anthropic_url,
            **self._env,
        }

    def egress_policy(self) -> EgressPolicy:
        """Read the host's addresses and attached networks at every start: interfaces come
        and go (docker0, VPNs). A sandbox keeps the rules of its start."""
        return EgressPolicy(allow=self._egress_allow).on_this_host()

    async def _limit_egress(self, box: Path, netns: Path) -> None:
        """Load the egress rules into the sandbox's namespace before anything runs in it,
        with the previews' way to its loopback (the kernel takes packets for 127.0.0.1 from
        an interface other than lo only with route_localnet, set in this namespace alone)."""
        rules = box / "egress.nft"
        rules.unlink(missing_ok=True)
        descriptor = os.open(rules, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(self.egress_policy().nft_ruleset(dns=[SLIRP_DNS]) + _LOOPBACK_PREVIEWS)
        try:
            await self._must("nsenter", [f"--net={netns}", _which("nft"), "-f", str(rules)])
        finally:
            rules.unlink(missing_ok=True)
        await self._must(
            "nsenter",
            [f"--net={netns}", _which("sysctl"), "-qw", "net.ipv4.conf.all.route_localnet=1"],
        )

    async def _must(self, tool: str, args: list[str]) -> None:
        result = await run_process(
            self._processes,
            [_which(tool), *args],
            timeout=15,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )
        if result.code != 0:
            raise BackendError(f"{tool} failed: {result.output.strip()[-300:]}")

    def spawn_slirp(self, box: Path, netns: Path) -> tuple[IProcessTransport, _Watched]:
        """Starts slirp4netns, as root, for the namespace ``netns``: the sandbox's uplink,
        sandboxed itself (one step of ``start``; public for tests)."""
        (box / "slirp.sock").unlink(missing_ok=True)
        proto = _slirp_watch()
        argv = [
            _which("slirp4netns"),
            "--configure",
            "--mtu=65520",
            "--disable-host-loopback",
            # it runs as root: an empty root of its own, capabilities dropped, a seccomp filter
            "--enable-sandbox",
            "--enable-seccomp",
            "--netns-type=path",
            f"--api-socket={box / 'slirp.sock'}",
            "--ready-fd=3",
            "--exit-fd=4",
            str(netns),
            "tap0",
        ]
        # fd 4 is a pipe only we write to: when this process dies, slirp4netns sees EOF and exits.
        transport = self._processes.spawnProcess(
            proto, argv[0], argv, env={}, childFDs={0: "w", 1: "r", 2: "r", 3: "r", 4: "w"}
        )
        return transport, proto

    def spawn_sandbox(
        self, spec: SandboxSpec, box: Path, netns: Path, opencode: Path, anthropic_url: str
    ) -> tuple[IProcessTransport, _Watched]:
        """Starts the sandbox's opencode (``sandbox_argv``), handing bubblewrap its environment
        and seccomp filter on descriptors closed here once the child has them; writes its pid
        to ``box`` (one step of ``start``; public for tests)."""
        proto = _opencode_watch(self._output_log(spec))
        argv = sandbox_argv(
            box=box,
            disk=self._disk(spec.workspace_id),
            netns=netns,
            opencode=opencode,
            limits=self._limits,
            account=self._account,
            cgroups=self.cgroups.make(spec.id),
        )
        args = _memory_file("bwrap-args", bwrap_args(self.environment(spec, anthropic_url)))
        try:
            rules = _memory_file("bwrap-seccomp", seccomp.sandbox_filter())
            try:
                transport = self._processes.spawnProcess(
                    proto,
                    argv[0],
                    argv,
                    env={},
                    path="/",
                    childFDs={0: "w", 1: "r", 2: "r", ARGS_FD: args, SECCOMP_FD: rules},
                )
            finally:
                os.close(rules)
        finally:
            os.close(args)
        (box / "pid").write_text(str(transport.pid))
        return transport, proto

    def check_limits(self) -> None:
        """At server start: make and remove a probe group, so that a machine where limits
        cannot be written is said at once (the warning is given once)."""
        if self._isolated and self.cgroups.make(".probe"):
            self.cgroups.remove(".probe")

    def _exited(self, sandbox_id: str, live: _Live) -> None:
        """opencode ended. A stop we asked for took it out of ``_live`` first, so reaching the
        branch below means it died by itself (killed, OOM-killed, crashed): say so at once."""
        if self._live.get(sandbox_id) is live:
            del self._live[sandbox_id]
            if live.slirp is not None:
                _signal(live.slirp, "TERM")
            if live.slirp_proto is not None:

                def gone(result: object) -> object:
                    self._forwards_gone(sandbox_id, live)
                    return result

                live.slirp_proto.ended.addBoth(gone)
            ended = live.sandbox_proto.reason
            # (probed: a BaseException, ProcessDone or ProcessTerminated, or None if not told)
            why = exit_reason(
                getattr(ended, "exitCode", None),
                getattr(ended, "signal", None),
                oom=self.cgroups.oom_killed(sandbox_id),
                via_init=live.slirp is not None,  # (bubblewrap)
            )
            # (the reason is the exit status or signal; its last output is the log panel's)
            self._log.warn("sandbox {sandbox_id}: {why}", sandbox_id=sandbox_id, why=why)
            if live.sandbox_proto.log is not None:
                live.sandbox_proto.log.note(why)
            if self.on_exit is not None:
                self.on_exit(sandbox_id, why)

    # -- stop, delete -------------------------------------------------------------------------

    async def _stop_live(self, sandbox_id: str) -> None:
        self._close_door(sandbox_id)
        live = self._live.pop(sandbox_id, None)
        if live is None:
            return
        await self._terminate(live.sandbox, live.sandbox_proto, grace=10)
        if live.slirp is not None and live.slirp_proto is not None:
            await self._terminate(live.slirp, live.slirp_proto, grace=5)
            await self._forwards_gone(sandbox_id, live)

    def _forwards_gone(self, sandbox_id: str, live: _Live) -> Deferred[None]:
        """Its slirp4netns has ended: its forwards' host ports are anyone's again."""
        now = self._reactor.seconds()
        for forward in live.forwards.values():
            self._resting[forward.host_port] = now
        ports = [live.port, *(f.host_port for f in live.forwards.values())]
        released = Deferred.fromCoroutine(self._guard.release(ports))
        return released.addErrback(
            lambda f: self._log.warn(
                "sandbox {sandbox_id}: {why}", sandbox_id=sandbox_id, why=f.value
            )
        )

    async def _terminate(
        self, transport: IProcessTransport, watched: _Watched, grace: float
    ) -> None:
        """SIGTERM, and SIGKILL if it has not exited after ``grace`` seconds."""
        _signal(transport, "TERM")
        try:
            await _within(self._reactor, watched.ended, grace, "")
        except BackendError:
            _signal(transport, "KILL")
            await _within(self._reactor, watched.ended, 10, "process did not die")

    async def _teardown(self, sandbox_id: str) -> None:
        """Undo what a start set up outside our processes: netns mount, cgroups, pid file."""
        box = self._sandbox_dir(sandbox_id)
        self._kill_leftover(box)
        netns = box / "netns"
        if netns.exists():
            if os.path.ismount(netns):
                await run_process(self._processes, [_which("umount"), str(netns)], timeout=15)
            netns.unlink(missing_ok=True)
        (box / "slirp.sock").unlink(missing_ok=True)
        self.cgroups.remove(sandbox_id)

    def _kill_leftover(self, box: Path) -> None:
        """A process recorded in the pid file that still runs our sandbox (after a crash)."""
        pid_file = box / "pid"
        try:
            pid = int(pid_file.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            pid_file.unlink(missing_ok=True)
            return
        if str(box).encode() in cmdline:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        pid_file.unlink(missing_ok=True)

    @deferred
    async def stop(self, sandbox_id: str) -> None:
        await self._stop_live(sandbox_id)
        await self._teardown(sandbox_id)
        await self._release(sandbox_id)

    @deferred
    async def delete(self, sandbox_id: str) -> None:
        await self._stop_live(sandbox_id)
        await self._teardown(sandbox_id)
        await self._release(sandbox_id, removing=True)  # never remove files through a mount
        shutil.rmtree(self._sandbox_dir(sandbox_id), ignore_errors=True)

    @deferred
    async def delete_workspace(self, workspace_id: str) -> None:
        self._disk_users.pop(workspace_id, None)
        await self._quotas.detach(self._disk(workspace_id), lazy=True)
        shutil.rmtree(self._data_dir / "workspaces" / workspace_id, ignore_errors=True)

    knows_endpoints = True

    def endpoint_now(self, sandbox_id: str) -> Endpoint | None:
        """Where a running sandbox answers, known here without waiting (the proxy's hot path)."""
        live = self._live.get(sandbox_id)
        return Endpoint("127.0.0.1", live.port) if live is not None else None

    @deferred
    async def preview_endpoint(self, sandbox_id: str, port: int) -> Endpoint | None:
        """The host end of the sandbox's forward to ``port``, added on first use if something
        listens on it (else ``NOT_LISTENING``) and reused while its slirp4netns lives, unless
        ``MAX_FORWARDS`` newer ones pushed it out. Nothing of this host is a preview:
        unisolated sandboxes, which share the host's loopback, have none."""
        live = self._live.get(sandbox_id)
        if live is None:
            return None
        if live.slirp is None:
            raise BackendError("previews need isolated sandboxes (not --allow-unisolated)")
        async with live.forwarding:
            if self._live.get(sandbox_id) is not live:  # stopped while we waited
                return None
            known = live.forwards.get(port)
            if known is not None:
                live.forwards.move_to_end(port)
                return Endpoint("127.0.0.1", known.host_port)
            if port not in await self.listening_ports(sandbox_id):
                return NOT_LISTENING if self._live.get(sandbox_id) is live else None
            box = self._sandbox_dir(sandbox_id)
            while len(live.forwards) >= MAX_FORWARDS and self._live.get(sandbox_id) is live:
                oldest, forward = next(iter(live.forwards.items()))
                await self._unforward(box, forward)
                del live.forwards[oldest]
            if self._live.get(sandbox_id) is not live:
                return None
            forward = await self._forward(box, port)
            if self._live.get(sandbox_id) is not live:
                return None
            live.forwards[port] = forward
            return Endpoint("127.0.0.1", forward.host_port)

    @property
    def lists_ports(self) -> bool:
        return self._isolated  # (unisolated sandboxes have no previews)

    def listening_ports(self, sandbox_id: str) -> Deferred[list[int]]:
        """Read through the sandbox's outer bubblewrap, which sits in its network namespace,
        on the thread pool; opencode and the Anthropic door are not previews."""
        live = self._live.get(sandbox_id)
        if live is None or live.slirp is None or live.sandbox.pid is None:
            return succeed([])
        net = Path(f"/proc/{live.sandbox.pid}/net")
        return self._threads(listening_ports, net, PREVIEW_PORTS, (GUEST_PORT, ANTHROPIC_PORT))

    @deferred
    async def describe(self, sandbox_id: str) -> Observed:
        live = self._live.get(sandbox_id)
        if live is not None:
            return Observed(State.RUNNING, Endpoint("127.0.0.1", live.port))
        if self._sandbox_dir(sandbox_id).exists():
            return Observed(State.STOPPED)
        return Observed(State.MISSING)

    @deferred
    async def list_owned(self) -> list[str]:
        root = self._data_dir / "sandboxes"
        on_disk = {p.name for p in root.iterdir()} if root.exists() else set()
        return sorted(on_disk | set(self._live))

    @deferred
    async def close(self) -> None:
        """Server shutdown: stop every sandbox (their HOME and disks stay, unmounted)."""
        for sandbox_id in list(self._live):
            await self._stop_live(sandbox_id)
            await self._teardown(sandbox_id)
        await self._guard.close()
        self._disk_users.clear()
        await self._quotas.detach_all(self._data_dir)


def sandbox_argv(
    *,
    box: Path,
    disk: Path,
    netns: Path,
    opencode: Path,
    limits: Limits,
    account: SystemAccount | None,
    cgroups: Sequence[Path],
) -> list[str]:
    """The command line that starts a sandbox's opencode: in its network namespace
    (``netns``), as the sandbox ``account``, joined to its ``cgroups`` before exec, under
    bubblewrap with ``box``'s home and the workspace's ``disk`` bound, its memory-backed
    mounts bounded by ``limits``. The environment (secrets included) and the seccomp filter
    are not in it: bubblewrap reads them from ``ARGS_FD`` and ``SECCOMP_FD``."""
    bwrap = [
        _which("bwrap"),
        "--unshare-user",
        "--disable-userns",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--uid",
        "1000",
        "--gid",
        "1000",
        "--hostname",
        "sandbox",
        "--ro-bind",
        "/usr",
        "/usr",
        "--symlink",
        "usr/lib",
        "/lib",
        "--symlink",
        "usr/lib64",
        "/lib64",
        "--symlink",
        "usr/bin",
        "/bin",
        "--symlink",
        "usr/sbin",
        "/sbin",
        "--ro-bind-try",
        "/etc/ssl",
        "/etc/ssl",
        "--ro-bind-try",
        "/etc/ca-certificates",
        "/etc/ca-certificates",
        "--ro-bind-try",
        "/etc/resolv.conf",
        "/etc/resolv.conf",
        "--ro-bind-try",
        "/etc/hosts",
        "/etc/hosts",
        "--ro-bind-try",
        "/etc/localtime",
        "/etc/localtime",
        "--ro-bind-try",  # where Debian's cc, c++, editor... links point
        "/etc/alternatives",
        "/etc/alternatives",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        # Memory the sandbox may fill, each with a bound (without one a tmpfs takes half
        # the host's memory); the root and /dev are made read-only below.
        "--size",
        str(limits.shm_bytes),
        "--tmpfs",
        "/dev/shm",
        "--size",
        str(limits.tmp_bytes),
        "--tmpfs",
        "/tmp",
        "--bind",
        str(box / "home"),
        "/home/opencode",
        "--bind",
        str(disk),
        "/data/disk0",
        "--ro-bind",
        str(opencode),
        "/opt/opencode/bin/opencode",
        "--remount-ro",
        "/dev",
        "--remount-ro",
        "/",
        "--chdir",
        "/data/disk0",
        "--seccomp",
        str(SECCOMP_FD),
        "--clearenv",
        "--args",  # the environment, secrets included, from a descriptor
        str(ARGS_FD),
        "/opt/opencode/bin/opencode",
        "serve",
        "--hostname",
        "0.0.0.0",
        "--port",
        str(GUEST_PORT),
    ]
    enter = [_which("nsenter"), f"--net={netns}"]
    if account is not None:
        enter += ["-S", str(account.uid), "-G", str(account.gid)]
    argv = enter + bwrap
    if cgroups:
        # Join the cgroups before exec, so no process of the sandbox ever runs outside them.
        joins = " && ".join(f'echo $$ > "{c}/cgroup.procs"' for c in cgroups)
        argv = ["/bin/sh", "-c", f'{joins} && exec "$@"', "sh", *argv]
    return argv


def bwrap_args(environment: Mapping[str, str]) -> bytes:
    """What bubblewrap reads from ARGS_FD: NUL-terminated ``--setenv NAME VALUE`` triples."""
    words = [w for name, value in environment.items() for w in ("--setenv", name, value)]
    return b"".join(w.encode() + b"\0" for w in words)


def _which(tool: str) -> str:
    found = shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if found is None:
        raise BackendError(f"{tool} is not installed")
    return found


def _memory_file(name: str, content: bytes) -> int:
    """A descriptor of an anonymous in-memory file holding ``content``, at its start, for a
    child to read to the end: unlike a pipe it cannot fill up, and nothing goes to disk."""
    descriptor = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        os.write(descriptor, content)
        os.lseek(descriptor, 0, os.SEEK_SET)
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def forward_ports(port_range: str) -> range:
    """Where forwards take their host ports, given the kernel's ``ip_local_port_range``: above
    it (no port there is ever one of the server's outgoing connections'), if that leaves a
    thousand; else the whole unprivileged range."""
    try:
        low, high = (int(n) for n in port_range.split())
    except ValueError:
        return range(1024, 65536)
    above = range(max(high + 1, 1024), 65536)
    return above if len(above) >= 1000 and low <= high else range(1024, 65536)


def _forward_port(resting: Container[int]) -> int:
    """A port of the host's 127.0.0.1 free now for a forward, ``resting`` ones left out; one
    the kernel picks if none turns up."""
    try:
        wanted = forward_ports(_PORT_RANGE.read_text())
    except OSError:
        wanted = range(1024, 65536)
    for _ in range(64):
        port = random.choice(wanted)
        if port in resting:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    return _free_port()


def _signal(transport: IProcessTransport, sig: str) -> None:
    try:
        transport.signalProcess(sig)
    except (ProcessExitedAlready, OSError):
        pass


async def _within(clock: IReactorTime, d: Deferred[None], seconds: float, message: str) -> None:
    """Wait for a signal Deferred (fired once by a protocol) with a deadline.

    ``d`` itself is never cancelled: its protocol will fire it later, and a cancelled Deferred
    would then raise AlreadyCalledError inside the protocol.
    """
    outcome: Deferred[None] = Deferred()

    def settle(result: None | Failure) -> None:
        if not outcome.called:
            outcome.callback(result)  # a Failure runs outcome's errbacks

    d.addBoth(settle)
    outcome.addTimeout(seconds, clock)
    try:
        await outcome
    except TimeoutError:
        raise BackendError(message or "timed out") from None


def check_isolation_tools(
    which: Callable[..., str | None] = shutil.which,
    euid: Callable[[], int] = os.geteuid,
    seccomp_filter: Callable[[], bytes] = seccomp.sandbox_filter,
) -> str | None:
    """Why this machine cannot isolate sandboxes, or None if it can."""
    tools = ("bwrap", "slirp4netns", "nsenter", "unshare", "ip", "nft")
    missing = [t for t in tools if not which(t, path="/usr/sbin:/usr/bin:/sbin:/bin")]
    if missing:
        return (
            f"{', '.join(missing)} not found "
            "(apt-get install bubblewrap slirp4netns iproute2 nftables)"
        )
    if euid() != 0:
        return "each sandbox needs its own network namespace, which only root can create"
    try:
        seccomp_filter()
    except seccomp.SeccompError as e:
        return str(e)
    return None

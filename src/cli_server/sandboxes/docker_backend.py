"""``--backend docker``: each sandbox is a labelled container on a Docker engine.

All engine calls go through the blocking ``docker`` SDK on our own bounded thread pool
(``_thd_*`` methods: plain values in and out, a timeout on every call, no logging there).

- Workspace disk: a named volume ``cli-ws-<workspace id>`` at ``/data/disk0``; the sandbox's
  HOME (opencode's sessions) a volume ``cli-home-<sandbox id>``: both outlive the container.
- Start (create and resume alike) **recreates** the container: every start issues a new
  Anthropic proxy token, which lives in the container's environment, and nothing of value
  lives in the container itself. Pause **stops** it (frees its memory, unlike
  ``docker pause``), so a paused sandbox costs only disk.
- opencode's port is published on 127.0.0.1 only, at a port the engine picks; the address is
  re-read after every start. The containers sit on a bridge network of our own with
  inter-container traffic disabled, so a sandbox cannot reach another sandbox's ports (the
  engine's default bridge allows that). A preview (any other port) is reached at the
  container's own address on that network: the server must be beside the engine, or on
  ``--docker-network``. ``host.docker.internal`` is that network's gateway,
  where our Anthropic proxy is reached.
- Egress (docker_firewall.py): before every start the host's firewall is told that our bridge
  reaches the internet and, of the host, only the Anthropic door; private, link-local and
  other denied networks are rejected unless allowed. Where the server cannot write the rules
  (not root, the engine on another host, or turned off) it logs, at start, the commands an
  operator must run. With ``--docker-network`` the operator's network is theirs to guard.
- Kernel surface: uid 1000, every capability dropped, ``no-new-privileges`` and the engine's
  default seccomp profile (which refuses new user namespaces); an engine without seccomp is
  refused.
- Disk: the root file system is read-only, so the container's layer on the engine's disk
  never grows; /tmp and /var/tmp are memory file systems of a quarter of the memory limit
  each. As root beside the engine, each volume is a bind of its own loop-mounted ext4 image
  (disk_quota.py) of --workspace-disk-size / --sandbox-home-size: a full one answers ENOSPC.
  A volume made before quotas keeps no limit.
- Everything we create carries ``cli-server.instance=<this server's id>``; reconciliation and
  cleanup touch only those, never foreign containers or volumes.
- Containers keep running across a server restart; the server adopts them.
"""

from __future__ import annotations

import shutil
import socket
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from attrs import define, field
from twisted.application.service import Service
from twisted.logger import Logger

from cli_server.plumbing.threads import Runner
from cli_server.sandboxes import docker_firewall
from cli_server.sandboxes.backend import (
    LOG_TAIL_LINES,
    PREVIEW_PORTS,
    BackendDefaults,
    BackendError,
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
    tail_lines,
)
from cli_server.sandboxes.disk_quota import DiskQuotas, DiskSizes, check_disk_quota, image_of
from cli_server.sandboxes.docker_firewall import EgressRules
from cli_server.sandboxes.egress import EgressPolicy
from cli_server.sandboxes.listening import listening_ports
from cli_server.sandboxes.opencode import OpencodeClient

# The docker SDK is untyped (no py.typed, no stubs): its client and the engine's JSON answers are
# Any in this module, and only those; the Twisted side (the runner, its Deferreds) is typed.

R = TypeVar("R")

GUEST_PORT = 4096
ENGINE_DNS = "127.0.0.11"  # the engine's resolver in a container: its TCP port is no preview
LABEL = "cli-server"
SCRATCH = ("/tmp", "/var/tmp")  # writable, in memory; everything else but the volumes is not


@define(frozen=True)
class DockerSettings:
    url: str | None  # DOCKER_HOST form; None: the SDK's defaults (environment, local socket)
    image: str
    anthropic_url: str  # ANTHROPIC_BASE_URL as a container sees it
    # A user-defined network to join instead of publishing a port: for a server that itself
    # runs in a container on that network (compose); sandboxes are then reached by address.
    network: str | None = None
    memory_bytes: int = 2 * 1024**3
    pids: int = 1024
    nano_cpus: int = 2 * 10**9
    timeout: float = 60.0  # per engine call
    # Egress: False leaves the host's firewall alone (the operator applies the rules we log).
    firewall: bool = True
    # Host addresses and attached networks are read at each start (on_this_host).
    egress: EgressPolicy = EgressPolicy()
    # Volume quotas: each volume a bind of a loop-mounted image under disk_root (on the
    # engine's host); 0 or no disk_root: plain volumes on the engine's disk.
    disks: DiskSizes = DiskSizes()
    disk_root: Path | None = None

    @property
    def scratch_bytes(self) -> int:
        """Each of /tmp and /var/tmp: a quarter of the memory limit (they take from it)."""
        return self.memory_bytes // 4

    @property
    def door(self) -> tuple[str, int] | None:
        """The host name and port sandboxes reach our Anthropic proxy at."""
        url = urlsplit(self.anthropic_url)
        if not url.hostname:
            return None
        return url.hostname, url.port or (443 if url.scheme == "https" else 80)


@define(eq=False)
class DockerBackend(BackendDefaults):
    _run: Runner
    _settings: DockerSettings
    _instance: str  # this server's id, on every label
    _opencode_client: OpencodeClient
    _start_timeout: float = 90.0
    # Where the host's firewall is written (tests give fakes); the engine host's own by default.
    _firewall_apply: Callable[[EgressRules], None] = docker_firewall.apply
    _firewall_refusal: Callable[[str], str | None] = docker_firewall.cannot_apply
    _quotas: DiskQuotas | None = None  # None: no volume quotas
    _quota_refusal: Callable[[], str | None] = check_disk_quota
    # the docker SDK's client (tests give fakes); made at first use from the settings if None
    _client: Any = field(default=None, kw_only=True)
    _network_lock: threading.Lock = field(factory=threading.Lock, init=False)
    # Not called: a container that dies is found by the reconciler's next sweep.
    on_exit: ExitListener | None = field(default=None, kw_only=True)
    _sources: dict[str, frozenset[str]] = field(factory=dict, init=False)  # see source_addresses
    _firewall_lock: threading.Lock = field(factory=threading.Lock, init=False)
    _seccomp_checked: bool = field(default=False, init=False)
    _quota_why_not: str | None = field(default=None, init=False)  # decided once, at first use
    _quota_decided: bool = field(default=False, init=False)
    # Whether this server saw a container's ports (the engine's processes in its view).
    lists_ports: bool = field(default=True, init=False)
    _log = Logger()
    name = "docker"
    survives_restart = True

    @property
    def settings(self) -> DockerSettings:
        """The settings this backend was made with."""
        return self._settings

    # -- thread side ------------------------------------------------------------------------

    def _thd_client(self) -> Any:
        import docker

        if self._client is None:  # the SDK's client is thread-safe (one requests session)
            if self._settings.url:
                self._client = docker.DockerClient(
                    base_url=self._settings.url, timeout=int(self._settings.timeout)
                )
            else:
                self._client = docker.from_env(timeout=int(self._settings.timeout))
        return self._client

    def _labels(self, **more: str) -> dict[str, str]:
        return {f"{LABEL}.instance": self._instance, **{f"{LABEL}.{k}": v for k, v in more.items()}}

    def _thd_start(
        self, sandbox_id: str, workspace_id: str, env: dict[str, str], disks: dict[str, Path]
    ) -> tuple[tuple[str, int], list[str]]:
        """Recreate and start the container: (where opencode answers, the volumes that should
        have a quota but were made without one)."""
        import docker.errors

        client = self._thd_client()
        try:
            client.images.get(self._settings.image)
        except docker.errors.ImageNotFound:
            raise BackendError(
                f"image {self._settings.image} is not on the Docker engine: build it "
                "(docker/build-offline-image) or pull it, or set --agent-image"
            ) from None
        self._thd_check_seccomp()
        self._thd_remove_container(sandbox_id)
        networking = self._thd_networking()
        unbounded: list[str] = []
        for volume, labels in (
            (f"cli-ws-{workspace_id}", self._labels(workspace=workspace_id, kind="workspace")),
            (f"cli-home-{sandbox_id}", self._labels(sandbox=sandbox_id, kind="home")),
        ):
            try:
                found = client.volumes.get(volume)
                options = found.attrs.get("Options") or {}
                if volume in disks and options.get("device") != str(disks[volume]):
                    unbounded.append(volume)  # made before quotas: kept, data and all
            except docker.errors.NotFound:
                if volume in disks:  # the engine binds our quota file system at each start
                    device = {"type": "none", "o": "bind", "device": str(disks[volume])}
                    client.volumes.create(name=volume, labels=labels, driver_opts=device)
                else:
                    client.volumes.create(name=volume, labels=labels)
        container = client.containers.create(
            self._settings.image,
            name=f"cli-sbx-{sandbox_id}",
            labels=self._labels(sandbox=sandbox_id, workspace=workspace_id, kind="sandbox"),
            environment=env,
            user="1000:1000",
            init=True,
            working_dir="/data/disk0",
            volumes={
                f"cli-ws-{workspace_id}": {"bind": "/data/disk0", "mode": "rw"},
                f"cli-home-{sandbox_id}": {"bind": "/home/opencode", "mode": "rw"},
            },
            **networking,
            mem_limit=self._settings.memory_bytes,
            pids_limit=self._settings.pids,
            nano_cpus=self._settings.nano_cpus,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            # Nothing is written to the container's own layer, which lies on the engine's
            # disk without a limit: scratch space is memory (counted in mem_limit), sized.
            read_only=True,
            tmpfs={
                path: f"rw,nosuid,nodev,size={self._settings.scratch_bytes},mode=1777"
                for path in SCRATCH
            },
        )
        container.start()
        return self._thd_address(sandbox_id), unbounded

    def _thd_networking(self) -> dict[str, Any]:
        """The container's network settings; on our own network, with its firewall rules
        written first (a refusal to write them fails the start: never an unguarded sandbox)."""
        if self._settings.network:
            return {"network": self._settings.network}
        name, rules = self._thd_isolated_network()
        if self._thd_firewall_refusal(rules) is None:
            try:
                with self._firewall_lock:  # two starts at once would both add a jump
                    self._firewall_apply(rules)
            except (RuntimeError, OSError) as e:
                raise BackendError(f"cannot write the sandboxes' firewall rules: {e}") from e
        return {
            "network": name,
            "ports": {f"{GUEST_PORT}/tcp": ("127.0.0.1", None)},
            # Our gateway, not the engine's host-gateway (docker0): the firewall lets our
            # bridge reach the host there, at the Anthropic door only.
            "extra_hosts": {"host.docker.internal": rules.gateway or "host-gateway"},
        }

    def _thd_firewall_refusal(self, rules: EgressRules) -> str | None:
        """Why we do not write the rules ourselves, or None if we do."""
        return firewall_refusal(self._settings, rules.bridge, self._firewall_refusal)

    def _thd_isolated_network(self) -> tuple[str, EgressRules]:
        """Our bridge network without inter-container traffic, made on first use, and the
        firewall rules for its bridge. The lock matters: an engine happily creates two
        networks with one name."""
        import docker.errors

        name = f"cli-sandboxes-{self._instance}"
        with self._network_lock:
            client = self._thd_client()
            try:
                network = client.networks.get(name)
            except docker.errors.NotFound:
                network = client.networks.create(
                    name,
                    driver="bridge",
                    labels=self._labels(kind="network"),
                    options={
                        "com.docker.network.bridge.enable_icc": "false",
                        "com.docker.network.bridge.name": docker_firewall.bridge_name(
                            self._instance
                        ),
                    },
                    check_duplicate=True,
                )
                network.reload()
        attrs = network.attrs
        # A network made before we named bridges has the engine's name for it.
        bridge = (attrs.get("Options") or {}).get("com.docker.network.bridge.name") or (
            "br-" + str(attrs["Id"])[:12]
        )
        gateways = [
            c["Gateway"]
            for c in (attrs.get("IPAM") or {}).get("Config") or []
            if c.get("Gateway") and ":" not in c["Gateway"]
        ]
        gateway = gateways[0] if gateways else None
        rules = EgressRules(
            docker_firewall.chain_prefix(self._instance),
            bridge,
            gateway,
            self._thd_doors(gateway),
            tuple(self._settings.egress.on_this_host().denied()),
            self._settings.egress.allow,
        )
        return name, rules

    def _thd_doors(self, gateway: str | None) -> tuple[tuple[str, int], ...]:
        return door_addresses(self._settings.door, gateway)

    def _thd_check_seccomp(self) -> None:
        """The engine's default seccomp profile is what refuses new user namespaces and other
        kernel surface inside a container: an engine without one (or with it switched off by
        default) runs no sandbox of ours."""
        if self._seccomp_checked:
            return
        why = seccomp_refusal(self._thd_client().info().get("SecurityOptions") or [])
        if why is not None:
            raise BackendError(why)
        self._seccomp_checked = True

    def _thd_prepare(self) -> tuple[str, str] | None:
        """At server start: our network and its rules now; or (why not, the operator's
        commands) when we do not write them."""
        if self._settings.network:
            return None
        _, rules = self._thd_isolated_network()
        why = self._thd_firewall_refusal(rules)
        if why is not None:
            return why, rules.operator_script()
        with self._firewall_lock:
            self._firewall_apply(rules)
        return None

    def _thd_address(self, sandbox_id: str) -> tuple[str, int]:
        """Where opencode answers, re-read from the engine (it changes at every start)."""
        container = self._thd_client().containers.get(f"cli-sbx-{sandbox_id}")
        settings = container.attrs["NetworkSettings"]
        if self._settings.network:
            ip = (settings.get("Networks") or {}).get(self._settings.network, {}).get("IPAddress")
            if not ip:
                raise BackendError(f"the sandbox has no address on {self._settings.network}")
            return str(ip), GUEST_PORT
        bindings = (settings["Ports"] or {}).get(f"{GUEST_PORT}/tcp")
        if not bindings:
            raise BackendError("the engine published no port for opencode")
        return "127.0.0.1", int(bindings[0]["HostPort"])

    def _thd_inside(self, sandbox_id: str) -> tuple[str, int, str] | None:
        """A running container's (address on its network, main process id as the engine's
        host numbers it, container id); None when it is not running."""
        import docker.errors

        try:
            container = self._thd_client().containers.get(f"cli-sbx-{sandbox_id}")
        except docker.errors.NotFound:
            return None
        if container.status != "running":
            return None
        network = self._settings.network or f"cli-sandboxes-{self._instance}"
        networks = container.attrs["NetworkSettings"].get("Networks") or {}
        ip = (networks.get(network) or {}).get("IPAddress")
        if not ip:
            raise BackendError(f"the sandbox has no address on {network}")
        pid = int((container.attrs.get("State") or {}).get("Pid") or 0)
        return str(ip), pid, str(container.id)

    def _thd_state(self, sandbox_id: str) -> tuple[str, tuple[str, int] | None, str | None]:
        import docker.errors

        client = self._thd_client()
        try:
            container = client.containers.get(f"cli-sbx-{sandbox_id}")
        except docker.errors.NotFound:
            try:
                client.volumes.get(f"cli-home-{sandbox_id}")
                return "stopped", None, None
            except docker.errors.NotFound:
                return "missing", None, None
        if container.status == "running":
            try:
                return "running", self._thd_address(sandbox_id), None
            except BackendError:
                # Running but unreachable as we are configured now (made under another
                # networking setting): treated as stopped, so it is paused and recreated.
                return "stopped", None, None
        return "stopped", None, _container_exit(container.attrs.get("State") or {})

    def _thd_stop(self, sandbox_id: str) -> None:
        import docker.errors

        try:
            self._thd_client().containers.get(f"cli-sbx-{sandbox_id}").stop(timeout=10)
        except docker.errors.NotFound:
            pass

    def _thd_logs(self, sandbox_id: str) -> LogTail:
        """The container's output tail, with the secrets of its environment blanked."""
        import docker.errors

        try:
            container = self._thd_client().containers.get(f"cli-sbx-{sandbox_id}")
        except docker.errors.NotFound:
            return LogTail((), False)
        raw = container.logs(stdout=True, stderr=True, tail=LOG_TAIL_LINES + 1)
        environment = (container.attrs.get("Config") or {}).get("Env") or []
        variables = dict(entry.partition("=")[::2] for entry in environment)
        password = variables.get("OPENCODE_SERVER_PASSWORD", "")
        secrets = [*secret_forms(password), variables.get("ANTHROPIC_API_KEY", "")]
        # Blanked whole, before the tail is cut: a cut must not leave half a secret behind.
        (text,) = redact([raw.decode("utf-8", "replace")], secrets)
        tail = tail_lines(text, cut=False)
        lines = list(tail.lines)
        truncated = tail.truncated or len(lines) > LOG_TAIL_LINES
        return LogTail(tuple(lines[-LOG_TAIL_LINES:]), truncated)

    def _thd_remove_container(self, sandbox_id: str) -> None:
        import docker.errors

        try:
            self._thd_client().containers.get(f"cli-sbx-{sandbox_id}").remove(force=True)
        except docker.errors.NotFound:
            pass

    def _thd_remove_volume(self, name: str) -> None:
        import docker.errors

        try:
            volume = self._thd_client().volumes.get(name)
        except docker.errors.NotFound:
            return
        if volume.attrs.get("Labels", {}).get(f"{LABEL}.instance") == self._instance:
            volume.remove(force=True)

    def _thd_owned(self) -> list[str]:
        client = self._thd_client()
        mine = f"{LABEL}.instance={self._instance}"
        ids = {
            c.labels.get(f"{LABEL}.sandbox")
            for c in client.containers.list(all=True, filters={"label": mine})
        }
        ids |= {
            v.attrs.get("Labels", {}).get(f"{LABEL}.sandbox")
            for v in client.volumes.list(filters={"label": [mine, f"{LABEL}.kind=home"]})
        }
        return sorted(i for i in ids if i)

    def _thd_sources(self, sandbox_id: str) -> frozenset[str]:
        import docker.errors

        try:
            container = self._thd_client().containers.get(f"cli-sbx-{sandbox_id}")
        except docker.errors.NotFound:
            return frozenset()
        if container.status != "running":
            return frozenset()
        networks = (container.attrs["NetworkSettings"].get("Networks") or {}).values()
        return frozenset(
            str(a) for n in networks for a in (n.get("IPAddress"), n.get("GlobalIPv6Address")) if a
        )

    def _thd_ping(self) -> None:
        self._thd_client().ping()

    # -- reactor side ---------------------------------------------------------------------------

    def _environment(self, spec: SandboxSpec) -> dict[str, str]:
        return {
            "OPENCODE_SERVER_PASSWORD": spec.password,
            "ANTHROPIC_API_KEY": spec.proxy_token,
            "ANTHROPIC_BASE_URL": self._settings.anthropic_url,
            "OPENCODE_DISABLE_MODELS_FETCH": "1",
            "OPENCODE_DISABLE_AUTOUPDATE": "1",
            "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1",
            "HOME": "/home/opencode",
        }

    async def _engine(self, f: Callable[..., R], *args: object) -> R:
        """Run an engine call on the pool; engine failures become readable BackendErrors."""
        try:
            return await self._run(f, *args)
        except BackendError:
            raise
        except Exception as e:
            raise BackendError(f"Docker engine: {_short(e)}") from e

    def forget(self, sandbox_id: str) -> None:
        """The sandbox changed status, maybe through another replica: its addresses are asked
        of the engine again."""
        self._sources.pop(sandbox_id, None)

    @deferred
    async def source_addresses(self, sandbox_id: str) -> frozenset[str]:
        """The running container's addresses: the Anthropic proxy takes the sandbox's token
        only from there. Asked of the engine once per start (addresses change at each)."""
        known = self._sources.get(sandbox_id)
        if known is None:
            known = await self._engine(self._thd_sources, sandbox_id)
            if known:
                self._sources[sandbox_id] = known
        return known

    @deferred
    async def prepare(self) -> None:
        """Server start: write the firewall rules, or say what the operator must apply. Never
        fails: every sandbox start tries again (and refuses if writing them fails)."""
        try:
            undone = await self._engine(self._thd_prepare)
        except (BackendError, RuntimeError, OSError) as e:
            self._log.warn("docker backend: not prepared yet: {why}", why=str(e))
            return
        if self._settings.network:
            self._log.info(
                "docker backend: sandboxes join {network}; what they can reach there is "
                "up to that network's firewall",
                network=self._settings.network,
            )
        refused = self.quota_refused()
        if refused is not None and self._settings.disks != DiskSizes(0, 0):
            self._log.warn(
                "docker backend: sandbox volumes have NO size limit ({why}); a sandbox can "
                "fill the engine's disk",
                why=refused,
            )
        if undone is not None:
            why, script = undone
            self._log.warn(
                "docker backend: sandboxes' egress rules NOT applied ({why}); without them a "
                "sandbox reaches every host address and private network. As root on the "
                "engine's host, run:\n{script}",
                why=why,
                script=script,
            )

    # -- volume quotas --------------------------------------------------------------------------

    def quota_refused(self) -> str | None:
        """Why volumes get no quota, or None when they do (decided once)."""
        if not self._quota_decided:
            self._quota_decided = True
            if self._quotas is None or self._settings.disk_root is None:
                self._quota_why_not = "no disk root configured"
            elif not (self._settings.disks.workspace or self._settings.disks.home):
                self._quota_why_not = "turned off (--workspace-disk-size/--sandbox-home-size)"
            elif self._settings.url and not self._settings.url.startswith("unix://"):
                self._quota_why_not = "the engine is not on this host"
            else:
                self._quota_why_not = self._quota_refusal()
        return self._quota_why_not

    def _disk_dir(self, kind: str, name: str) -> Path:
        assert self._settings.disk_root is not None
        return self._settings.disk_root / kind / name

    async def _attach_disks(self, spec: SandboxSpec) -> dict[str, Path]:
        """Mount the sandbox's quota file systems; {volume name: directory} for those it has."""
        if self.quota_refused() is not None or self._quotas is None:
            return {}
        sizes = self._settings.disks
        wanted = [
            (f"cli-ws-{spec.workspace_id}", self._disk_dir("workspaces", spec.workspace_id)),
            (f"cli-home-{spec.id}", self._disk_dir("homes", spec.id)),
        ]
        disks = {}
        for (volume, directory), size in zip(wanted, (sizes.workspace, sizes.home), strict=True):
            if size:
                directory.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
                await self._quotas.attach(directory, size, (1000, 1000))
                directory.chmod(0o700)
                disks[volume] = directory
        return disks

    async def _detach(self, directory: Path, *, removing: bool) -> None:
        """Unmount a quota file system (a busy one stays unless it is being removed); when
        removing, then delete its image and directory."""
        if self._quotas is None or self._settings.disk_root is None:
            return
        await self._quotas.detach(directory, lazy=removing)
        if removing:
            await self._run(_remove_disk, directory)

    @deferred
    async def start(self, spec: SandboxSpec) -> Endpoint:
        self._sources.pop(spec.id, None)
        disks = await self._attach_disks(spec)
        (host, port), unbounded = await self._engine(
            self._thd_start, spec.id, spec.workspace_id, self._environment(spec), disks
        )
        for volume in unbounded:
            self._log.warn(
                "docker backend: volume {volume} was made before disk quotas and has no size "
                "limit; move its files into a new volume to give it one",
                volume=volume,
            )
        endpoint = Endpoint(host, port)
        await self._opencode_client.wait_healthy(
            endpoint, spec.password, timeout=self._start_timeout
        )
        return endpoint

    @deferred
    async def stop(self, sandbox_id: str) -> None:
        self._sources.pop(sandbox_id, None)
        await self._engine(self._thd_stop, sandbox_id)
        self._sources.pop(sandbox_id, None)  # (asked again while it stopped)
        if self._settings.disk_root is not None:  # a paused sandbox holds no loop device
            await self._detach(self._disk_dir("homes", sandbox_id), removing=False)

    @deferred
    async def delete(self, sandbox_id: str) -> None:
        self._sources.pop(sandbox_id, None)
        await self._engine(self._thd_remove_container, sandbox_id)
        self._sources.pop(sandbox_id, None)
        await self._engine(self._thd_remove_volume, f"cli-home-{sandbox_id}")
        if self._settings.disk_root is not None:
            await self._detach(self._disk_dir("homes", sandbox_id), removing=True)

    @deferred
    async def delete_workspace(self, workspace_id: str) -> None:
        await self._engine(self._thd_remove_volume, f"cli-ws-{workspace_id}")
        if self._settings.disk_root is not None:
            await self._detach(self._disk_dir("workspaces", workspace_id), removing=True)

    @deferred
    async def preview_endpoint(self, sandbox_id: str, port: int) -> Endpoint | None:
        """The container's address and ``port``: the host reaches its bridge directly (the
        firewall lets answers to the host's own connections back), while other containers
        cannot (no inter-container traffic on our network)."""
        inside = await self._engine(self._thd_inside, sandbox_id)
        return Endpoint(inside[0], port) if inside is not None else None

    @deferred
    async def listening_ports(self, sandbox_id: str) -> list[int]:
        """Read from the container's network tables where this server sees the engine's
        processes (the same host and process namespace); otherwise none are known."""
        inside = await self._engine(self._thd_inside, sandbox_id)
        if inside is None:
            return []
        ports: list[int] | None = await self._run(_container_ports, inside[1], inside[2])
        self.lists_ports = ports is not None
        return ports or []

    @deferred
    async def describe(self, sandbox_id: str) -> Observed:
        state, address, ended = await self._engine(self._thd_state, sandbox_id)
        if state == "running" and address is not None:
            return Observed(State.RUNNING, Endpoint(*address))
        return Observed(State.STOPPED if state == "stopped" else State.MISSING, exit=ended)

    @deferred
    async def logs(self, sandbox_id: str) -> LogTail:
        tail: LogTail = await self._engine(self._thd_logs, sandbox_id)
        return tail

    @deferred
    async def list_owned(self) -> list[str]:
        owned: list[str] = await self._engine(self._thd_owned)
        return owned

    @deferred
    async def close(self) -> None:
        """Containers keep running across a server restart; the next start adopts them."""

    @deferred
    async def check(self) -> None:
        await self._engine(self._thd_ping)


def seccomp_refusal(security_options: Sequence[str]) -> str | None:
    """Why an engine with these security options (``docker info``'s) runs no sandbox of
    ours: it applies no seccomp profile to containers, or none by default (unconfined); None
    when it applies one (its default profile refuses new user namespaces and other kernel
    surface inside a container)."""
    seccomp = [o for o in security_options if "name=seccomp" in o]
    if not seccomp or any("profile=unconfined" in o for o in seccomp):
        return (
            "the Docker engine applies no seccomp profile to containers "
            f"(its security options: {', '.join(security_options) or 'none'}); "
            "sandboxes need one"
        )
    return None


def firewall_refusal(
    settings: DockerSettings, bridge: str, refusal: Callable[[str], str | None]
) -> str | None:
    """Why the server does not write the firewall rules of our network on ``bridge`` itself
    (turned off in ``settings``, or ``refusal``'s reason: no iptables, no privilege...); None
    when it does."""
    if not settings.firewall:
        return "the docker firewall is turned off (--docker-firewall off)"
    return refusal(bridge)


def door_addresses(
    door: tuple[str, int] | None, gateway: str | None
) -> tuple[tuple[str, int], ...]:
    """Where the Anthropic proxy is, as addresses: our ``gateway`` for host.docker.internal,
    else what ANTHROPIC_PROXY_URL's name resolves to now (the host's public name, say;
    looked up again at every start: blocking, so on a thread). A name that does not
    resolve opens nothing."""
    if door is None:
        return ()
    host, port = door
    if host == "host.docker.internal":
        return ((gateway, port),) if gateway else ()
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return ()
    # (an IPv6 link-local address comes with its scope, "%eth0", which rules cannot use)
    return tuple(dict.fromkeys((str(info[4][0]).split("%")[0], port) for info in found))


def _container_exit(state: dict[str, Any]) -> str | None:
    """How an exited container's opencode ended, from the engine's ``State`` (under
    ``init=True`` a signal N shows as status 128 + N); None if it never ran."""
    if state.get("Status") != "exited":
        return None
    code = state.get("ExitCode")
    return exit_reason(
        code if isinstance(code, int) else None,
        None,
        oom=bool(state.get("OOMKilled")),
        via_init=True,
    )


@define(eq=False)
class DockerPreparation(Service):
    """Prepares the backend once the service tree (and the engine's thread pool) runs."""

    _backend: DockerBackend

    def startService(self) -> None:
        super().startService()
        self._backend.prepare()


def _container_ports(pid: int, container_id: str) -> list[int] | None:
    """The preview ports listening in the container whose main process the engine numbers
    ``pid``, if this host's process of that number is it (its cgroup names the container:
    a server in a namespace of its own must not read some other process's ports); else None."""
    try:
        cgroup = Path(f"/proc/{pid}/cgroup").read_text() if pid else ""
    except OSError:
        return None
    if container_id not in cgroup:
        return None
    net = Path(f"/proc/{pid}/net")
    return listening_ports(net, PREVIEW_PORTS, (GUEST_PORT,), hidden=(ENGINE_DNS,))


def _remove_disk(directory: Path) -> None:
    """A quota file system's directory and image, once it is unmounted (blocking)."""
    shutil.rmtree(directory, ignore_errors=True)
    image_of(directory).unlink(missing_ok=True)


def _short(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]

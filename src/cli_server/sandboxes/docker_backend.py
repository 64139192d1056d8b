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
  engine's default bridge allows that); they still reach the internet and our Anthropic proxy
  through the host.
- Everything we create carries ``cli-server.instance=<this server's id>``; reconciliation and
  cleanup touch only those, never foreign containers or volumes.
- Containers keep running across a server restart; the server adopts them.
"""

from __future__ import annotations

import threading
from typing import Any

from attrs import define, field

from cli_server.sandboxes.backend import (
    BackendError,
    Endpoint,
    ExitListener,
    Observed,
    SandboxSpec,
    State,
    deferred,
    exit_reason,
)
from cli_server.sandboxes.opencode import OpencodeClient
from cli_server.threads import Runner

GUEST_PORT = 4096
LABEL = "cli-server"


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


@define(eq=False)
class DockerBackend:
    _run: Runner
    _settings: DockerSettings
    _instance: str  # this server's id, on every label
    _opencode_client: OpencodeClient
    _start_timeout: float = 90.0
    _client: Any = field(default=None, init=False)
    _network_lock: threading.Lock = field(factory=threading.Lock, init=False)
    # Not called: a container that dies is found by the reconciler's next sweep.
    on_exit: ExitListener | None = field(default=None, init=False)
    _sources: dict[str, frozenset[str]] = field(factory=dict, init=False)  # see source_addresses
    name = "docker"
    survives_restart = True

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
        self, sandbox_id: str, workspace_id: str, env: dict[str, str]
    ) -> tuple[str, int]:
        import docker.errors

        client = self._thd_client()
        try:
            client.images.get(self._settings.image)
        except docker.errors.ImageNotFound:
            raise BackendError(
                f"image {self._settings.image} is not on the Docker engine: build it "
                "(docker/build-offline-image) or pull it, or set --agent-image"
            ) from None
        self._thd_remove_container(sandbox_id)
        for volume, labels in (
            (f"cli-ws-{workspace_id}", self._labels(workspace=workspace_id, kind="workspace")),
            (f"cli-home-{sandbox_id}", self._labels(sandbox=sandbox_id, kind="home")),
        ):
            try:
                client.volumes.get(volume)
            except docker.errors.NotFound:
                client.volumes.create(name=volume, labels=labels)
        networking = self._networking()
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
        )
        container.start()
        return self._thd_address(sandbox_id)

    def _networking(self) -> dict[str, Any]:
        if self._settings.network:
            return {"network": self._settings.network}
        return {
            "network": self._thd_isolated_network(),
            "ports": {f"{GUEST_PORT}/tcp": ("127.0.0.1", None)},
            "extra_hosts": {"host.docker.internal": "host-gateway"},
        }

    def _thd_isolated_network(self) -> str:
        """Our bridge network without inter-container traffic, made on first use. The lock
        matters: an engine happily creates two networks with one name."""
        import docker.errors

        name = f"cli-sandboxes-{self._instance}"
        with self._network_lock:
            client = self._thd_client()
            try:
                client.networks.get(name)
            except docker.errors.NotFound:
                client.networks.create(
                    name,
                    driver="bridge",
                    labels=self._labels(kind="network"),
                    options={"com.docker.network.bridge.enable_icc": "false"},
                    check_duplicate=True,
                )
        return name

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

    async def _engine(self, f: Any, *args: Any) -> Any:
        """Run an engine call on the pool; engine failures become readable BackendErrors."""
        try:
            return await self._run(f, *args)
        except BackendError:
            raise
        except Exception as e:
            raise BackendError(f"Docker engine: {_short(e)}") from e

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
    async def start(self, spec: SandboxSpec) -> Endpoint:
        self._sources.pop(spec.id, None)
        host, port = await self._engine(
            self._thd_start, spec.id, spec.workspace_id, self._environment(spec)
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

    @deferred
    async def delete(self, sandbox_id: str) -> None:
        self._sources.pop(sandbox_id, None)
        await self._engine(self._thd_remove_container, sandbox_id)
        self._sources.pop(sandbox_id, None)
        await self._engine(self._thd_remove_volume, f"cli-home-{sandbox_id}")

    @deferred
    async def delete_workspace(self, workspace_id: str) -> None:
        await self._engine(self._thd_remove_volume, f"cli-ws-{workspace_id}")

    @deferred
    async def describe(self, sandbox_id: str) -> Observed:
        state, address, ended = await self._engine(self._thd_state, sandbox_id)
        if state == "running" and address is not None:
            return Observed(State.RUNNING, Endpoint(*address))
        return Observed(State.STOPPED if state == "stopped" else State.MISSING, exit=ended)

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


def _short(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]

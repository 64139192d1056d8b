"""Where sandboxes run: the process backend (bubblewrap), Docker or Kubernetes, each with the
thread pools and the preparation service it needs; and the names they go by."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path

from attrs import define, field
from twisted.application.service import IService
from twisted.internet.interfaces import IListeningPort

from cli_server.compose.hooks import ServerHooks
from cli_server.compose.reactor import IServerReactor
from cli_server.config import ServerConfig
from cli_server.plumbing.threads import ThreadPoolService
from cli_server.replicas.registry import Replica
from cli_server.sandboxes.backend import SandboxBackend
from cli_server.sandboxes.disk_quota import DiskQuotas, DiskSizes
from cli_server.sandboxes.docker_backend import DockerBackend, DockerPreparation, DockerSettings
from cli_server.sandboxes.egress import EgressPolicy
from cli_server.sandboxes.opencode import OpencodeClient
from cli_server.sandboxes.process_backend import ANTHROPIC_PORT, Limits, ProcessBackend

# (sandbox_id, netns or None) -> the listening port of its door to the Anthropic proxy, and
# the port's number (``compose.anthropic.AnthropicDoors.open``)
Door = Callable[[str, Path | None], tuple[IListeningPort, int]]


@define(frozen=True)
class Backends:
    backend: SandboxBackend
    # its thread pools and preparation, in the order they start (before the sandboxes')
    services: list[IService] = field(factory=list)
    # The host whose backend runs sandboxes on it alone (process): recorded at each start, so
    # a server on another host leaves them alone. None: any replica reaches them.
    host: str | None = None


def labelled_instance(config: ServerConfig, injected: SandboxBackend | None) -> str | None:
    """The instance id on a docker or k8s backend's labels (None for the others)."""
    if injected is not None or config.backend not in ("docker", "k8s"):
        return None
    return config.k8s_instance or instance_id(config.data_dir)


def build_backends(  # (its reactor also spawns processes: sandboxes, disk quota tools)
    config: ServerConfig,
    reactor: IServerReactor,
    opencode: OpencodeClient,
    short_threads: ThreadPoolService,
    hooks: ServerHooks,
    door: Door,
    replica: Replica,
    injected: SandboxBackend | None,
) -> Backends:
    if injected is not None:
        # A test's backend, built before the server: it reports exits through the hook too.
        # (the one attribute the composition root sets, on an object it did not build)
        injected.on_exit = hooks.sandbox_exited
        return Backends(injected)
    if config.backend == "docker":
        instance = replica.backend_instance or instance_id(config.data_dir)
        return docker_backend(config, reactor, opencode, instance, hooks)
    if config.backend == "k8s":
        return k8s_backend(config, reactor, opencode, hooks)
    backend = ProcessBackend(
        reactor,
        config.data_dir,
        Path(config.opencode_bin or "opencode"),
        opencode,
        door=door,
        anthropic_url=anthropic_base_url(config) if config.anthropic_proxy_url else None,
        isolated=not config.allow_unisolated,
        limits=Limits(config.sandbox_memory, config.sandbox_pids),
        disk_sizes=DiskSizes(config.workspace_disk_size, config.sandbox_home_size),
        egress_allow=config.egress_allow,
        threads=short_threads.run,  # (reads of sandboxes' listening ports: short, bounded)
        on_exit=hooks.sandbox_exited,  # a sandbox whose opencode dies is failed at once
    )
    backend.check_limits()
    # (its sandboxes are reached from this host only)
    return Backends(backend, host=replica.hostname)


def docker_backend(
    config: ServerConfig,
    reactor: IServerReactor,
    opencode: OpencodeClient,
    instance: str,
    hooks: ServerHooks,
) -> Backends:
    """The docker backend on its own pool of engine calls."""
    engine = ThreadPoolService(reactor, "docker", 4)
    engine.setName("docker-threads")
    settings = DockerSettings(
        config.docker_url,
        config.agent_image or "",
        docker_anthropic_url(config),
        network=config.docker_network,
        memory_bytes=config.sandbox_memory,
        pids=config.sandbox_pids,
        nano_cpus=int(config.sandbox_cpus * 1e9),
        firewall=config.docker_firewall,
        egress=EgressPolicy(allow=config.egress_allow),
        disks=DiskSizes(config.workspace_disk_size, config.sandbox_home_size),
        disk_root=config.data_dir / "docker-disks",
    )
    backend = DockerBackend(
        engine.run,
        settings,
        instance,
        opencode,
        quotas=DiskQuotas.on(reactor),
        on_exit=hooks.sandbox_exited,  # (unused: the reconciler finds a dead container)
    )
    return Backends(backend, [engine, DockerPreparation(backend)])


def k8s_backend(
    config: ServerConfig, reactor: IServerReactor, opencode: OpencodeClient, hooks: ServerHooks
) -> Backends:
    """The k8s backend on its own bounded pool (a start holds a thread while it waits)."""
    from cli_server.sandboxes.k8s_backend import K8sBackend, K8sPreparation, K8sSettings
    from cli_server.sandboxes.k8s_objects import PodSettings, quantity

    pool = ThreadPoolService(reactor, "kubernetes", 8)
    pool.setName("kubernetes-threads")
    waits = ThreadPoolService(reactor, "kubernetes-waits", 32)  # starts waiting for Ready
    waits.setName("kubernetes-wait-threads")
    cpus = f"{config.sandbox_cpus:g}"
    resources = config.sandbox_resources or {
        "limits": {"memory": quantity(config.sandbox_memory), "cpu": cpus}
    }
    proxy = config.anthropic_proxy_url or config.in_cluster_url + "/proxy/anthropic"
    pod = PodSettings(
        image=config.agent_image or "",
        anthropic_url=proxy.rstrip("/") + ("" if proxy.rstrip("/").endswith("/v1") else "/v1"),
        resources=resources,
        runtime_class=config.runtime_class,
        storage_class=config.storage_class,
        workspace_access_mode=config.workspace_access_mode,
        workspace_size=quantity(config.workspace_disk_size),
        home_size=quantity(config.sandbox_home_size),
    )
    settings = K8sSettings(pod, config.sandbox_namespace, config.kubeconfig)
    instance = config.k8s_instance or instance_id(config.data_dir)
    backend = K8sBackend(
        pool.run,
        settings,
        instance,
        opencode,
        reactor,
        wait_run=waits.run,
        on_exit=hooks.sandbox_exited,  # (unused: the reconciler finds a dead pod)
    )
    return Backends(backend, [pool, waits, K8sPreparation(backend)])


def anthropic_base_url(config: ServerConfig) -> str:
    """What sandboxes get as ANTHROPIC_BASE_URL: the server's proxy, ending in /v1."""
    base = config.anthropic_proxy_url or f"http://127.0.0.1:{ANTHROPIC_PORT}/proxy/anthropic"
    return base.rstrip("/") + ("" if base.rstrip("/").endswith("/v1") else "/v1")


def docker_anthropic_url(config: ServerConfig) -> str:
    """How a container reaches our Anthropic proxy: ANTHROPIC_PROXY_URL, else the host's
    gateway at the port of our first TCP listener."""
    if config.anthropic_proxy_url:
        return anthropic_base_url(config)
    port = 8080
    for description in config.listen:
        parts = description.split(":")
        if parts[0] == "tcp" and len(parts) > 1 and parts[1].isdigit():
            port = int(parts[1])
            break
    return f"http://host.docker.internal:{port}/proxy/anthropic/v1"


def instance_id(data_dir: Path) -> str:
    """This server's name on the engine's labels: random once, then kept in the data directory,
    so it survives restarts and a recreated container, and two servers (two compose projects on
    one engine, say) never take each other's sandboxes for their own."""
    path = data_dir / "instance-id"

    def known() -> str:
        text = path.read_text().strip()
        if not re.fullmatch(r"[0-9a-f]{16}", text):
            raise RuntimeError(f"{path} should hold 16 hex digits (this server's instance id)")
        return text

    if path.exists():
        return known()
    made = secrets.token_hex(8)
    draft = path.with_name(f".instance-id.{made}")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with open(draft, "w") as f:
            f.write(made + "\n")
            f.flush()
            os.fsync(f.fileno())  # never an empty id after a power cut
        os.link(draft, path)  # whole or not at all, and never over an id written meanwhile
    except FileExistsError:
        return known()  # another start wrote it first
    except OSError as e:
        raise RuntimeError(f"cannot write this server's instance id to {path}: {e}") from e
    finally:
        with contextlib.suppress(OSError):  # (never made, or a directory that is not one)
            draft.unlink()
    return made

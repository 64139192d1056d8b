"""``--backend k8s``: each sandbox is an agent-sandbox ``Sandbox`` object on a cluster.

Every API call goes through the blocking official ``kubernetes`` client on our own bounded
thread pool (``_thd_*`` methods: plain values in and out, a timeout on every call, no logging
there); waits for Ready, which take minutes, on a second one. The objects themselves are built
in k8s_objects.py.

- Start (create and resume alike): the workspace claim and the sandbox's HOME claim are made
  if missing; its Secret is written with this run's Anthropic proxy token; the Sandbox is
  created, or set Running if it was Suspended (a Sandbox found running already is recreated:
  its pod holds an older token). Then we wait for its Ready condition (a watch, in rounds,
  re-reading the object between them) and take ``status.serviceFQDN``, else its pod's address.
- Previews go to the same Service name (headless: the pod itself, on any port); without one,
  to the pod's address read afresh, never from the shared listing.
- Pause: ``operatingMode: Suspended`` (``replicas: 0`` where only v1alpha1 is served); the
  claims stay, so opencode's sessions survive. The served version is found by discovery.
- Everything we create carries ``cli-server/instance=<id>``; listing, adoption and deletion
  touch only those, never foreign objects. Sandboxes keep running across a server restart.
  ``describe`` answers "running" from one shared listing at most ``snapshot_ttl`` old.
- API errors (403, 404, 409, 422, timeouts, an unreachable server) become BackendErrors with
  a readable message: the sandbox is ``failed`` with it, and the server keeps serving.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from attrs import define, field, frozen
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from cli_server.plumbing.threads import Runner
from cli_server.sandboxes import k8s_objects as objects
from cli_server.sandboxes.backend import (
    LOG_TAIL_LINES,
    BackendDefaults,
    BackendError,
    Endpoint,
    ExitListener,
    LogTail,
    Observed,
    SandboxSpec,
    State,
    deferred,
    redact,
    secret_forms,
    tail_lines,
)
from cli_server.sandboxes.opencode import OpencodeClient

# The kubernetes SDK is not type-checked here (follow_imports = skip): its clients, API methods
# and answers are Any in this module, and only those; the Twisted side (the runners, their
# Deferreds, the clock) is typed.

R = TypeVar("R")

IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@frozen
class K8sSettings:
    pod: objects.PodSettings
    namespace: str | None = None  # None: the server pod's own (or the kubeconfig context's)
    kubeconfig: str | None = None  # None: in-cluster, else KUBECONFIG / ~/.kube/config
    timeout: float = 30.0  # per API call
    start_timeout: float = 600.0  # to Ready (an image pull may take minutes)
    watch_round: float = 30.0  # each watch ends after this and the object is read again
    port: int = objects.PORT  # where opencode listens in the pod (tests move it)
    # describe() answers "running" from one listing of all our Sandboxes this young (anything
    # else it confirms by reading the object): a sweep over N sandboxes costs one call, not N.
    snapshot_ttl: float = 2.0


@define(eq=False)
class K8sBackend(BackendDefaults):
    _run: Runner
    _settings: K8sSettings
    _instance: str  # this deployment's id, on every label
    _opencode_client: OpencodeClient
    _clock: IReactorTime
    # Waits for Ready hold a thread for minutes (an image pull): on a pool of their own, so
    # they never hold up other calls (the proxy's, the reconciler's). None: ``_run``.
    _wait_run: Runner | None = None
    _health_timeout: float = 120.0  # after Ready, until opencode answers
    # (given, as every backend is; unused: the reconciler finds exits)
    on_exit: ExitListener | None = field(default=None, kw_only=True)
    _api: Any = field(default=None, init=False)
    _namespace: str = field(default="", init=False)
    _version: str | None = field(default=None, init=False)
    _api_lock: threading.Lock = field(factory=threading.Lock, init=False)
    _sources: dict[str, frozenset[str]] = field(factory=dict, init=False)
    calls: int = field(default=0, init=False)  # API requests made (for measurements)
    _snapshot: dict[str, dict[str, Any]] | None = field(default=None, init=False)
    _snapshot_at: float = field(default=0.0, init=False)
    _snapshot_lock: DeferredLock = field(factory=DeferredLock, init=False)
    _changes: int = field(default=0, init=False)  # our own starts, stops and deletes
    _log = Logger()
    name = "k8s"
    lists_ports = False  # (see listening_ports)
    survives_restart = True

    # -- thread side ------------------------------------------------------------------------

    def _thd_client(self) -> Any:
        from kubernetes import client, config

        with self._api_lock:
            if self._api is not None:
                return self._api
            configuration = client.Configuration()
            namespace = None
            if self._settings.kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
                config.load_incluster_config(client_configuration=configuration)
                if IN_CLUSTER_NAMESPACE.exists():
                    namespace = IN_CLUSTER_NAMESPACE.read_text().strip()
            else:
                config.load_kube_config(
                    config_file=self._settings.kubeconfig, client_configuration=configuration
                )
                _, context = config.list_kube_config_contexts(self._settings.kubeconfig)
                namespace = (context or {}).get("context", {}).get("namespace")
            configuration.retries = 1
            self._namespace = self._settings.namespace or namespace or "default"
            self._api = client.ApiClient(configuration)
            return self._api

    def _thd_call(self, f: Callable[..., R], *args: object, **kwargs: object) -> R:
        self.calls += 1
        return f(*args, _request_timeout=self._settings.timeout, **kwargs)

    def _thd_custom(self) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(self._thd_client())

    def _thd_core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self._thd_client())

    def _thd_served_version(self) -> str:
        """The Sandbox version to use, by discovery (found once; v1beta1 preferred)."""
        if self._version is not None:
            return self._version
        api = self._thd_client()
        params = api.param_serialize(
            "GET",
            "/apis/{group}",
            path_params={"group": objects.GROUP},
            auth_settings=["BearerToken"],
        )
        self.calls += 1
        try:
            response = api.call_api(*params, _request_timeout=self._settings.timeout)
            response.read()
            group = api.response_deserialize(response, {"200": "object"}).data or {}
        except Exception as e:
            if getattr(e, "status", None) == 404:  # (the SDK's errors: ApiException's)
                raise BackendError(
                    "the cluster serves no Sandbox resource (agents.x-k8s.io): install the "
                    "agent-sandbox controller (the chart's agentSandbox.install)"
                ) from None
            raise
        served = {v.get("version") for v in group.get("versions") or []}
        for version in objects.VERSIONS:
            if version in served:
                self._version = version
                return version
        raise BackendError(
            f"the cluster serves agents.x-k8s.io in {', '.join(sorted(map(str, served)))}, "
            f"not in {' or '.join(objects.VERSIONS)}"
        )

    def _thd_get_sandbox(self, sandbox_id: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = self._thd_get(
            self._thd_custom().get_namespaced_custom_object,
            objects.GROUP,
            self._thd_served_version(),
            self._namespace,
            objects.PLURAL,
            objects.sandbox_name(sandbox_id),
        )
        return found

    def _thd_get(self, f: Callable[..., Any], *args: object) -> dict[str, Any] | None:
        """The object, or None if there is none."""
        from kubernetes.client.exceptions import ApiException

        try:
            found = self._thd_call(f, *args)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        # (a core API's model has to_dict; a custom object comes as a dict already)
        as_dict: dict[str, Any] = found.to_dict() if hasattr(found, "to_dict") else found
        return as_dict

    def _thd_create(self, f: Callable[..., object], body: dict[str, Any], *args: object) -> bool:
        """Create; False if it exists already (409)."""
        from kubernetes.client.exceptions import ApiException

        body["metadata"]["namespace"] = self._namespace
        try:
            self._thd_call(f, *args, body)
        except ApiException as e:
            if e.status == 409:
                return False
            raise
        return True

    def _thd_start(self, sandbox_id: str, workspace_id: str, password: str, token: str) -> str:
        """Everything the sandbox needs, submitted; its Sandbox running. Returns the version."""
        version = self._thd_served_version()
        core, custom, ns = self._thd_core(), self._thd_custom(), self._namespace
        pod = self._settings.pod
        self._thd_create(
            core.create_namespaced_persistent_volume_claim,
            objects.workspace_disk(self._instance, workspace_id, pod),
            ns,
        )
        self._thd_create(
            core.create_namespaced_persistent_volume_claim,
            objects.home(self._instance, sandbox_id, workspace_id, pod),
            ns,
        )
        secret = objects.secret(self._instance, sandbox_id, workspace_id, password, token)
        name = objects.sandbox_name(sandbox_id)
        if not self._thd_create(core.create_namespaced_secret, secret, ns):
            existing = self._thd_get(core.read_namespaced_secret, name, ns)
            if existing is not None and not objects.ours(existing, self._instance):
                raise BackendError(f"a Secret {name} not made by this server is in the way")
            self._thd_call(core.patch_namespaced_secret, name, ns, secret)
        found = self._thd_get_sandbox(sandbox_id)
        if found is not None and not objects.ours(found, self._instance):
            raise BackendError(f"a Sandbox {name} not made by this server is in the way")
        if found is not None and not objects.suspended(found):
            # Running from an earlier start (a crash between start and record): its pod
            # holds an older token, so it is made anew; nothing of value lives in it.
            self._thd_delete_sandbox(sandbox_id)
            deadline = time.monotonic() + self._settings.timeout
            while self._thd_get_sandbox(sandbox_id) is not None:  # (its pod goes first)
                if time.monotonic() > deadline:
                    raise BackendError(f"Sandbox {name} is still being deleted; try again")
                time.sleep(0.5)
            found = None
        body = objects.sandbox(version, self._instance, sandbox_id, workspace_id, pod)
        if found is None:
            if not self._thd_create(
                custom.create_namespaced_custom_object,
                body,
                objects.GROUP,
                version,
                ns,
                objects.PLURAL,
            ):
                raise BackendError(f"Sandbox {name} is still being deleted; try again")
        else:
            patch = objects.running_patch(version, True)
            patch["spec"]["service"] = True  # (one made before we asked for its Service)
            template = body["spec"]["podTemplate"]  # today's settings (a merge patch:
            template["spec"].setdefault("runtimeClassName", None)  # null removes a key)
            patch["spec"]["podTemplate"] = template
            self._thd_call(
                custom.patch_namespaced_custom_object,
                objects.GROUP,
                version,
                ns,
                objects.PLURAL,
                name,
                patch,
            )
        return version

    def _thd_wait_ready(self, sandbox_id: str, seconds: float) -> tuple[str, list[str]]:
        """Wait for the Ready condition: (address, pod addresses); BackendError with the
        cluster's reason if it does not come in time or the Sandbox goes away."""
        from kubernetes import watch
        from urllib3.exceptions import ReadTimeoutError

        deadline = time.monotonic() + seconds
        custom, version = self._thd_custom(), self._thd_served_version()
        name = objects.sandbox_name(sandbox_id)
        while True:
            found = self._thd_get_sandbox(sandbox_id)
            if found is None:
                raise BackendError("the Sandbox was deleted while it started")
            if objects.ready(found):
                where = objects.address(found)
                if where:
                    return where, list((found.get("status") or {}).get("podIPs") or [])
            left = deadline - time.monotonic()
            if left <= 0:
                why = objects.not_ready_reason(found, self._thd_events(name))
                raise BackendError(f"the sandbox did not become ready in {seconds:.0f}s: {why}")
            round_ = max(1.0, min(left, self._settings.watch_round))
            rv = (found.get("metadata") or {}).get("resourceVersion")
            stream = watch.Watch()
            self.calls += 1
            try:
                for event in stream.stream(
                    custom.list_namespaced_custom_object,
                    objects.GROUP,
                    version,
                    self._namespace,
                    objects.PLURAL,
                    field_selector=f"metadata.name={name}",
                    resource_version=rv,
                    timeout_seconds=int(round_),
                    _request_timeout=round_ + 1,
                ):
                    obj = event.get("object") or {}
                    if (obj.get("metadata") or {}).get("name") != name:
                        continue  # (a server that ignores the field selector)
                    if event.get("type") == "DELETED" or objects.ready(obj):
                        break
            except ReadTimeoutError:
                pass  # the round ended; read the object again
            finally:
                stream.stop()

    def _thd_events(self, name: str) -> list[dict[str, Any]]:
        """The cluster's events about the Sandbox and its pod, oldest first (best effort)."""
        try:
            found = self._thd_call(
                self._thd_core().list_namespaced_event,
                self._namespace,
                field_selector=f"involvedObject.name={name}",
            )
        except Exception:
            return []
        items = [e.to_dict() if hasattr(e, "to_dict") else e for e in found.items or []]
        items = [e for e in items if (e.get("involved_object") or {}).get("name") == name]
        return sorted(items, key=lambda e: str(e.get("last_timestamp") or ""))

    def _thd_state(self, sandbox_id: str) -> tuple[str, str | None, list[str], str | None]:
        """(running/stopped/missing, address, pod addresses, why it is not ready)."""
        found = self._thd_get_sandbox(sandbox_id)
        if found is None or not objects.ours(found, self._instance):
            home = self._thd_get(
                self._thd_core().read_namespaced_persistent_volume_claim,
                objects.home_claim(sandbox_id),
                self._namespace,
            )
            if home is not None and objects.ours(home, self._instance):
                return "stopped", None, [], None  # deleted behind our back: HOME is kept
            return "missing", None, [], None
        if objects.suspended(found):
            return "stopped", None, [], None
        if objects.ready(found) and objects.address(found):
            ips = list((found.get("status") or {}).get("podIPs") or [])
            return "running", objects.address(found), ips, None
        condition = objects.condition(found, "Ready")
        if condition is not None and condition.get("status") == "False":
            return "stopped", None, [], objects.not_ready_reason(found, [])
        return "stopped", None, [], None

    def _thd_stop(self, sandbox_id: str) -> None:
        found = self._thd_get_sandbox(sandbox_id)
        if found is None or not objects.ours(found, self._instance):
            return
        version = self._thd_served_version()
        self._thd_call(
            self._thd_custom().patch_namespaced_custom_object,
            objects.GROUP,
            version,
            self._namespace,
            objects.PLURAL,
            objects.sandbox_name(sandbox_id),
            objects.running_patch(version, False),
        )

    def _thd_delete_sandbox(self, sandbox_id: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self._thd_call(
                self._thd_custom().delete_namespaced_custom_object,
                objects.GROUP,
                self._thd_served_version(),
                self._namespace,
                objects.PLURAL,
                objects.sandbox_name(sandbox_id),
            )
        except ApiException as e:
            if e.status != 404:
                raise

    def _thd_delete_core(
        self, read: Callable[..., object], delete: Callable[..., object], name: str
    ) -> None:
        """Delete a core object if it is ours (a foreign one of that name stays)."""
        from kubernetes.client.exceptions import ApiException

        found = self._thd_get(read, name, self._namespace)
        if found is None or not objects.ours(found, self._instance):
            return
        try:
            self._thd_call(delete, name, self._namespace)
        except ApiException as e:
            if e.status != 404:
                raise

    def _thd_delete(self, sandbox_id: str) -> None:
        found = self._thd_get_sandbox(sandbox_id)
        if found is not None and objects.ours(found, self._instance):
            self._thd_delete_sandbox(sandbox_id)
        core = self._thd_core()
        name = objects.sandbox_name(sandbox_id)
        self._thd_delete_core(core.read_namespaced_secret, core.delete_namespaced_secret, name)
        self._thd_delete_core(
            core.read_namespaced_persistent_volume_claim,
            core.delete_namespaced_persistent_volume_claim,
            objects.home_claim(sandbox_id),
        )

    def _thd_delete_workspace(self, workspace_id: str) -> None:
        core = self._thd_core()
        self._thd_delete_core(
            core.read_namespaced_persistent_volume_claim,
            core.delete_namespaced_persistent_volume_claim,
            objects.workspace_claim(workspace_id),
        )

    def _thd_our_sandboxes(self) -> dict[str, dict[str, Any]]:
        """Our Sandbox objects by sandbox id (label-selected, and checked again)."""
        found = self._thd_call(
            self._thd_custom().list_namespaced_custom_object,
            objects.GROUP,
            self._thd_served_version(),
            self._namespace,
            objects.PLURAL,
            label_selector=f"{objects.INSTANCE_LABEL}={self._instance}",
        )
        mine = {}
        for item in found.get("items") or []:
            sandbox_id = ((item.get("metadata") or {}).get("labels") or {}).get(
                objects.SANDBOX_LABEL
            )
            if sandbox_id and objects.ours(item, self._instance):
                mine[str(sandbox_id)] = item
        return mine

    def _thd_owned(self) -> list[str]:
        """Sandbox ids of our Sandboxes and HOME claims (label-selected, and checked again)."""
        selector = f"{objects.INSTANCE_LABEL}={self._instance}"
        found = self._thd_call(
            self._thd_custom().list_namespaced_custom_object,
            objects.GROUP,
            self._thd_served_version(),
            self._namespace,
            objects.PLURAL,
            label_selector=selector,
        )
        items = list(found.get("items") or [])
        claims = self._thd_call(
            self._thd_core().list_namespaced_persistent_volume_claim,
            self._namespace,
            label_selector=f"{selector},{objects.KIND_LABEL}=home",
        )
        items += [c.to_dict() if hasattr(c, "to_dict") else c for c in claims.items or []]
        ids = set()
        for item in items:
            if objects.ours(item, self._instance):
                item_labels = (item.get("metadata") or {}).get("labels") or {}
                ids.add(item_labels.get(objects.SANDBOX_LABEL))
        return sorted(i for i in ids if i)

    def _thd_logs(self, sandbox_id: str) -> LogTail:
        from kubernetes.client.exceptions import ApiException

        name = objects.sandbox_name(sandbox_id)
        core = self._thd_core()
        try:
            text = self._thd_call(
                core.read_namespaced_pod_log, name, self._namespace, tail_lines=LOG_TAIL_LINES + 1
            )
        except ApiException as e:
            if e.status in (400, 404):  # no pod (paused), or its container not started
                return LogTail((), False)
            raise
        secret = self._thd_get(core.read_namespaced_secret, name, self._namespace) or {}
        values = {k: _decoded(v) for k, v in (secret.get("data") or {}).items()}
        values.update(secret.get("string_data") or {})  # (a server that echoes stringData)
        password = values.get("opencode-password", "")
        (text,) = redact([str(text)], [*secret_forms(password), values.get("anthropic-token", "")])
        tail = tail_lines(text, cut=False)
        lines = list(tail.lines)
        return LogTail(
            tuple(lines[-LOG_TAIL_LINES:]), tail.truncated or len(lines) > LOG_TAIL_LINES
        )

    def _thd_ping(self) -> None:
        self._version = None  # (a controller installed meanwhile is found now)
        self._thd_served_version()

    # -- reactor side ---------------------------------------------------------------------------

    async def _api_call(self, f: Callable[..., R], *args: object, run: Runner | None = None) -> R:
        """Run on the pool; API failures become readable BackendErrors."""
        try:
            return await (run or self._run)(f, *args)
        except BackendError:
            raise
        except Exception as e:
            raise BackendError(readable(e, self._settings.timeout)) from e

    def _changed(self) -> None:
        """Our own change: the listing describe() answers from is out of date."""
        self._changes += 1
        self._snapshot = None

    def forget(self, sandbox_id: str) -> None:
        """The sandbox changed status, maybe through another replica: its pod's addresses and
        the listing ``describe`` answers from are read again."""
        self._sources.pop(sandbox_id, None)
        self._changed()

    @contextmanager
    def _changing(self, sandbox_id: str) -> Iterator[None]:
        """Our own change to a sandbox: its pod's addresses are forgotten, and the listing
        ``describe`` answers from is out of date before it and again once it is done."""
        self._sources.pop(sandbox_id, None)
        self._changed()
        try:
            yield
        finally:
            self._changed()

    async def _listing(self) -> dict[str, dict[str, Any]]:
        """All our Sandboxes, listed at most once per ``snapshot_ttl`` (callers share it)."""
        async with self._snapshot_lock:
            now = self._clock.seconds()
            if self._snapshot is not None and now - self._snapshot_at < self._settings.snapshot_ttl:
                return self._snapshot
            changes = self._changes
            listed: dict[str, dict[str, Any]] = await self._api_call(self._thd_our_sandboxes)
            if changes == self._changes:  # (not if we changed something while it was listed)
                self._snapshot, self._snapshot_at = listed, now
            return listed

    @deferred
    async def start(self, spec: SandboxSpec) -> Endpoint:
        with self._changing(spec.id):
            await self._api_call(
                self._thd_start, spec.id, spec.workspace_id, spec.password, spec.proxy_token
            )
            host, ips = await self._api_call(
                self._thd_wait_ready, spec.id, self._settings.start_timeout, run=self._wait_run
            )
        self._sources[spec.id] = frozenset(ips)
        endpoint = Endpoint(host, self._settings.port)
        await self._opencode_client.wait_healthy(
            endpoint, spec.password, timeout=self._health_timeout
        )
        return endpoint

    @deferred
    async def stop(self, sandbox_id: str) -> None:
        with self._changing(sandbox_id):
            await self._api_call(self._thd_stop, sandbox_id)

    @deferred
    async def delete(self, sandbox_id: str) -> None:
        with self._changing(sandbox_id):
            await self._api_call(self._thd_delete, sandbox_id)

    @deferred
    async def delete_workspace(self, workspace_id: str) -> None:
        await self._api_call(self._thd_delete_workspace, workspace_id)

    @deferred
    async def preview_endpoint(self, sandbox_id: str, port: int) -> Endpoint | None:
        """The sandbox's Service name and ``port``: the Service is headless, so its name
        resolves to the sandbox's ready pod itself, on any port (the chart's NetworkPolicy
        admits the server on every preview port), and never to another sandbox's pod.

        A preview carries no credential, yet must not reach another team's pod, and a pod's
        address is handed to the next pod once it is gone. So without a Service name, the pod's
        address comes from the object read now, never from the listing (up to
        ``snapshot_ttl`` old) that ``describe`` answers from."""
        listed = (await self._listing()).get(sandbox_id)
        if listed is not None and _running(listed) and objects.service_name(listed):
            return Endpoint(str(objects.service_name(listed)), port)
        found = await self._api_call(self._thd_get_sandbox, sandbox_id)
        if found is None or not objects.ours(found, self._instance) or not _running(found):
            return None
        name = objects.service_name(found)
        if name is not None:
            return Endpoint(name, port)
        ips = sorted(objects.pod_addresses(found))
        v4 = [ip for ip in ips if ":" not in ip]
        return Endpoint((v4 or ips)[0], port) if ips else None

    def listening_ports(self, sandbox_id: str) -> Deferred[list[int]]:
        """Unknown without running a command in the pod: users type the port."""
        return succeed([])

    @deferred
    async def describe(self, sandbox_id: str) -> Observed:
        listed = (await self._listing()).get(sandbox_id)
        if listed is not None and not objects.suspended(listed) and objects.ready(listed):
            host = objects.address(listed)
            if host is not None:
                ips = (listed.get("status") or {}).get("podIPs") or []
                self._sources[sandbox_id] = frozenset(map(str, ips))
                return Observed(State.RUNNING, Endpoint(host, self._settings.port))
        # Anything but running is confirmed by reading the object (the listing may be old).
        state, host, ips, why = await self._api_call(self._thd_state, sandbox_id)
        if state == "running" and host is not None:
            self._sources[sandbox_id] = frozenset(ips)
            return Observed(State.RUNNING, Endpoint(host, self._settings.port))
        self._sources.pop(sandbox_id, None)
        return Observed(State.STOPPED if state == "stopped" else State.MISSING, exit=why)

    @deferred
    async def source_addresses(self, sandbox_id: str) -> frozenset[str]:
        """The pod's addresses: the Anthropic proxy takes the sandbox's token only from there."""
        known = self._sources.get(sandbox_id)
        if known is None:
            await self.describe(sandbox_id)
            known = self._sources.get(sandbox_id, frozenset())
        return known

    @deferred
    async def logs(self, sandbox_id: str) -> LogTail:
        tail: LogTail = await self._api_call(self._thd_logs, sandbox_id)
        return tail

    @deferred
    async def list_owned(self) -> list[str]:
        owned: list[str] = await self._api_call(self._thd_owned)
        return owned

    @deferred
    async def close(self) -> None:
        """Sandboxes keep running across a server restart; the next start adopts them."""

    @deferred
    async def check(self) -> None:
        await self._api_call(self._thd_ping)

    @deferred
    async def prepare(self) -> None:
        """Server start: say where sandboxes go, or why they cannot yet (never fails)."""
        try:
            await self._api_call(self._thd_ping)
        except BackendError as e:
            self._log.warn("k8s backend: not ready yet: {why}", why=str(e))
            return
        self._log.info(
            "k8s backend: Sandbox {version} objects in namespace {namespace}",
            version=self._version,
            namespace=self._namespace,
        )


@define(eq=False)
class K8sPreparation(Service):
    """Checks the cluster once the service tree (and the backend's thread pool) runs."""

    _backend: K8sBackend

    def startService(self) -> None:
        super().startService()
        self._backend.prepare()


def _running(obj: dict[str, Any]) -> bool:
    return not objects.suspended(obj) and objects.ready(obj)


def readable(error: Exception, timeout: float) -> str:
    """An API client failure as one sentence for a sandbox's ``error``."""
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config.config_exception import ConfigException
    from urllib3.exceptions import (
        MaxRetryError,
        NewConnectionError,
        ProtocolError,
        ReadTimeoutError,
        TimeoutError,
    )

    if isinstance(error, ApiException):
        message = error.reason or ""
        try:
            message = json.loads(error.body or "{}").get("message") or message
        except (ValueError, AttributeError):
            pass
        message = str(message).splitlines()[0][:300] if message else ""
        what = {
            401: "the Kubernetes API refused our credentials",
            403: "the Kubernetes API forbids it (RBAC: see the chart's Role)",
            404: "the Kubernetes API has no such object or resource",
            409: "the Kubernetes API reports a conflict",
            422: "the Kubernetes API rejected the object as invalid",
        }.get(error.status or 0, f"the Kubernetes API answered {error.status}")
        return f"{what}: {message}" if message else what
    if isinstance(error, MaxRetryError):
        error = error.reason if isinstance(error.reason, Exception) else error
    if isinstance(error, NewConnectionError):  # (a TimeoutError too, in urllib3 2)
        return f"the Kubernetes API server is unreachable ({_short(error)})"
    if isinstance(error, ReadTimeoutError | TimeoutError):
        return f"the Kubernetes API did not answer within {timeout:.0f}s"
    if isinstance(error, MaxRetryError):
        if isinstance(error.reason, ReadTimeoutError | TimeoutError):
            return f"the Kubernetes API did not answer within {timeout:.0f}s"
        return f"the Kubernetes API server is unreachable ({_short(error.reason)})"
    if isinstance(error, ProtocolError | ConnectionError):
        return f"the Kubernetes API server is unreachable ({_short(error)})"
    if isinstance(error, ConfigException):
        return f"no usable Kubernetes configuration: {_short(error)}"
    return f"Kubernetes: {_short(error)}"


def _short(error: object) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]


def _decoded(value: str | None) -> str:
    """A Secret's base64 value as text (empty if absent or not base64)."""
    import base64

    if not value:
        return ""
    try:
        return base64.b64decode(value).decode("utf-8", "replace")
    except ValueError:
        return ""

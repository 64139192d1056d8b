"""Contract tests of the k8s backend against a FAKE Kubernetes API server (kmock's emulator):
the real ``kubernetes`` client on our bounded pool, the tests playing the agent-sandbox
controller (they set status and conditions). A FAKE sandbox (upstream.py) stands in for opencode
at the address the "controller" reports."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import attrs
import jsonschema
import kmock
import kubernetes_validate
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import Site

from cli_server.plumbing.threads import ThreadPoolService
from cli_server.sandboxes.backend import BackendError, Endpoint, SandboxSpec, State
from cli_server.sandboxes.k8s_backend import K8sBackend, K8sSettings
from cli_server.sandboxes.k8s_objects import PodSettings
from cli_server.sandboxes.opencode import OpencodeClient

from .conftest import FAKE_KEY, _reactor, server_config, start_server, stop_server
from .fake_kubernetes import NAMESPACE, FakeKubernetes, sandbox_schema
from .helpers import remove_dir, scratch_dir, wait_until

INSTANCE = "test-instance"
K8S = "1.35.0"  # the Kubernetes version objects are validated for
SANDBOXES = kmock.resource("agents.x-k8s.io/v1beta1/sandboxes")
CLAIMS = kmock.resource("v1/persistentvolumeclaims")


class Healthy(Resource):
    """A FAKE opencode: answers its health check (the backend's last step of a start) and
    every other GET the same way, keeping each request's Authorization."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bytes, bytes | None]] = []

    def render_GET(self, request: Any) -> bytes:
        self.seen.append((request.uri, request.getHeader(b"authorization")))
        request.setHeader(b"content-type", b"application/json")
        return b'{"healthy": true, "version": "fake"}'


@attrs.define
class Cluster:
    fake: FakeKubernetes
    kubeconfig: Path
    pool: ThreadPoolService
    waits: ThreadPoolService  # (starts waiting for Ready)
    port: int  # where the stand-in opencode listens
    opencode: Healthy
    backends: list[K8sBackend] = attrs.field(factory=list)

    def backend(
        self, timeout: float = 2.0, start_timeout: float = 10.0, snapshot_ttl: float = 2.0
    ) -> K8sBackend:
        pod = PodSettings(
            image="registry.example/cli-server-sandbox:1",
            anthropic_url="http://cli-server.cli.svc:8080/proxy/anthropic/v1",
            resources={"limits": {"memory": "1Gi", "cpu": "1"}},
            runtime_class="gvisor",
            storage_class="fast",
            workspace_access_mode="ReadWriteMany",
        )
        settings = K8sSettings(
            pod,
            kubeconfig=str(self.kubeconfig),
            timeout=timeout,
            start_timeout=start_timeout,
            watch_round=30.0,  # (Ready must come through the watch, not a re-read)
            port=self.port,
            snapshot_ttl=snapshot_ttl,
        )
        backend = K8sBackend(
            self.pool.run,
            settings,
            INSTANCE,
            OpencodeClient(_reactor()),
            _reactor(),
            wait_run=self.waits.run,
            health_timeout=5.0,
        )
        self.backends.append(backend)
        return backend


def _cluster(versions: tuple[str, ...] = ("v1beta1",)) -> Iterator[Cluster]:
    reactor = _reactor()
    fake = FakeKubernetes(versions)
    directory = scratch_dir("cli-test-k8s-")
    pool = ThreadPoolService(reactor, "k8s-test", 2)
    pool.startService()
    waits = ThreadPoolService(reactor, "k8s-test-waits", 8)
    waits.startService()
    opencode = Healthy()
    listening = reactor.listenTCP(0, Site(opencode), interface="127.0.0.1")
    try:
        yield Cluster(
            fake, fake.kubeconfig(directory), pool, waits, listening.getHost().port, opencode
        )
    finally:
        listening.stopListening()
        pool.stopService()
        waits.stopService()
        fake.stop()
        remove_dir(directory)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    yield from _cluster()


@pytest.fixture
def alpha_cluster() -> Iterator[Cluster]:
    yield from _cluster(("v1alpha1",))


def spec(sandbox_id: str | None = None, token: str = "proxy-token-1") -> SandboxSpec:
    return SandboxSpec(sandbox_id or str(uuid.uuid4()), "w-" + uuid.uuid4().hex[:8], "pw-1", token)


async def started(cluster: Cluster, backend: K8sBackend, s: SandboxSpec) -> Endpoint:
    """Start, and play the controller: once the Sandbox is submitted, report it Ready."""
    reactor = _reactor()
    d = backend.start(s)
    name = f"cli-sbx-{s.id}"
    await wait_until(reactor, lambda: name in cluster.fake.objects("sandboxes"), timeout=10)
    await wait_until(
        reactor,
        lambda: cluster.fake.objects("sandboxes")[name]["spec"].get("operatingMode") != "Suspended",
        timeout=10,
    )
    cluster.fake.make_ready(name, "127.0.0.1", ["10.1.2.3"])
    endpoint: Endpoint = await d
    return endpoint


def validate(obj: dict[str, Any], version: str = "v1beta1") -> None:
    jsonschema.validate(obj, sandbox_schema(version))


@pytest_twisted.ensureDeferred
async def test_create_ready_address(cluster: Cluster) -> None:
    """Create -> Ready -> the reported address; the objects are valid and hold no real key."""
    backend = cluster.backend()
    s = spec()
    t0 = time.monotonic()
    d = backend.start(s)
    name = f"cli-sbx-{s.id}"
    await wait_until(_reactor(), lambda: name in cluster.fake.objects("sandboxes"), timeout=10)
    submitted = time.monotonic() - t0
    calls_to_submit = backend.calls
    t1 = time.monotonic()
    cluster.fake.make_ready(name, "127.0.0.1", ["10.1.2.3"])
    endpoint = await d
    noticed = time.monotonic() - t1
    assert noticed < 5.0  # the watch saw it (a watch round lasts 30 s)
    assert endpoint == Endpoint("127.0.0.1", cluster.port)
    calls_to_ready = backend.calls
    warm = spec()
    t0 = time.monotonic()
    warm_before = backend.calls
    again = backend.start(warm)
    warm_name = f"cli-sbx-{warm.id}"
    await wait_until(_reactor(), lambda: warm_name in cluster.fake.objects("sandboxes"))
    warm_submitted = time.monotonic() - t0
    cluster.fake.make_ready(warm_name, "127.0.0.1", ["10.1.2.4"])
    await again
    warm_calls = backend.calls - warm_before
    print(
        f"\nk8s: create -> Sandbox submitted in {submitted * 1000:.0f} ms (first, "
        f"{calls_to_submit} calls incl. discovery), {warm_submitted * 1000:.0f} ms (next); "
        f"Ready -> running in {noticed * 1000:.0f} ms; calls to running: {calls_to_ready} "
        f"(first), {warm_calls} (next)"
    )

    sandbox = cluster.fake.objects("sandboxes")[name]
    validate(sandbox)
    assert sandbox["spec"]["operatingMode"] == "Running"
    assert sandbox["metadata"]["labels"]["cli-server/instance"] == INSTANCE
    assert sandbox["metadata"]["labels"]["cli-server/sandbox"] == s.id
    assert sandbox["metadata"]["labels"]["cli-server/workspace"] == s.workspace_id
    pod = sandbox["spec"]["podTemplate"]["spec"]
    (container,) = pod["containers"]
    assert pod["runtimeClassName"] == "gvisor"
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["image"] == "registry.example/cli-server-sandbox:1"
    assert container["resources"] == {"limits": {"memory": "1Gi", "cpu": "1"}}
    assert container["ports"][0]["containerPort"] == 4096
    env = {e["name"]: e for e in container["env"]}
    assert env["ANTHROPIC_BASE_URL"]["value"] == "http://cli-server.cli.svc:8080/proxy/anthropic/v1"
    for variable in ("OPENCODE_SERVER_PASSWORD", "ANTHROPIC_API_KEY"):
        assert "value" not in env[variable]
        assert env[variable]["valueFrom"]["secretKeyRef"]["name"] == name
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]}
    assert claims[mounts["/data/disk0"]] == f"cli-ws-{s.workspace_id}"
    assert claims[mounts["/home/opencode"]] == f"cli-home-{s.id}"
    text = json.dumps(sandbox)
    assert s.password not in text and s.proxy_token not in text and FAKE_KEY not in text

    # the pod template, Secret and claims are valid for Kubernetes 1.35 (strict)
    template = {"metadata": {"name": "t"}, "template": sandbox["spec"]["podTemplate"]}
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", **template}, K8S, True)
    for plural in ("secrets", "persistentvolumeclaims"):
        for obj in cluster.fake.objects(plural).values():
            kubernetes_validate.validate(obj, K8S, strict=True)

    secret = cluster.fake.secret_values(name)
    assert secret == {"opencode-password": s.password, "anthropic-token": s.proxy_token}
    assert FAKE_KEY not in json.dumps(cluster.fake.objects("secrets"))
    pvcs = cluster.fake.objects("persistentvolumeclaims")
    assert pvcs[f"cli-ws-{s.workspace_id}"]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvcs[f"cli-ws-{s.workspace_id}"]["spec"]["storageClassName"] == "fast"
    assert pvcs[f"cli-home-{s.id}"]["spec"]["resources"]["requests"]["storage"] == "5Gi"

    observed = await backend.describe(s.id)
    assert observed.state is State.RUNNING and observed.endpoint == endpoint
    assert await backend.source_addresses(s.id) == frozenset({"10.1.2.3"})
    assert await backend.list_owned() == sorted([s.id, warm.id])


@pytest_twisted.ensureDeferred
async def test_service_name_else_pod_address(cluster: Cluster) -> None:
    """The address is status.serviceFQDN when set, else the pod's IP."""
    backend = cluster.backend()
    s = spec()
    d = backend.start(s)
    name = f"cli-sbx-{s.id}"
    await wait_until(_reactor(), lambda: name in cluster.fake.objects("sandboxes"), timeout=10)
    cluster.fake.make_ready(name, None, ["127.0.0.1"])
    assert await d == Endpoint("127.0.0.1", cluster.port)
    cluster.fake.make_ready(name, "localhost", ["127.0.0.1"])
    assert (await backend.describe(s.id)).endpoint == Endpoint("localhost", cluster.port)


@pytest_twisted.ensureDeferred
async def test_preview_at_the_service_name(cluster: Cluster) -> None:
    """A preview is the Sandbox's Service name (headless: it resolves to this sandbox's ready
    pod alone, on any port) and the port, from the shared listing; none once paused. Ports
    are not listed (users type one)."""
    backend = cluster.backend(snapshot_ttl=60.0)
    s = spec()
    name = f"cli-sbx-{s.id}"
    await started(cluster, backend, s)
    assert cluster.fake.objects("sandboxes")[name]["spec"]["service"] is True
    assert await backend.preview_endpoint(s.id, 5173) == Endpoint("127.0.0.1", 5173)
    before = backend.calls
    assert await backend.preview_endpoint(s.id, 8000) == Endpoint("127.0.0.1", 8000)
    assert backend.calls == before  # (the name is the sandbox's own: the listing serves)
    assert await backend.listening_ports(s.id) == []
    assert backend.lists_ports is False

    await backend.stop(s.id)
    cluster.fake.set_status(name, {"conditions": [], "podIPs": []})  # the pod is gone
    assert await backend.preview_endpoint(s.id, 8000) is None


@pytest_twisted.ensureDeferred
async def test_preview_without_a_service_reads_the_pods_address_now(cluster: Cluster) -> None:
    """Without a Service name the preview goes to the pod's address (IPv4 first) as the object
    says it now, never as the listing (up to snapshot_ttl old) said: a new pod has a new
    address, and the old one may already be another team's pod's."""
    backend = cluster.backend(snapshot_ttl=60.0)  # (the listing stays old for the whole test)
    s = spec()
    name = f"cli-sbx-{s.id}"
    d = backend.start(s)
    await wait_until(_reactor(), lambda: name in cluster.fake.objects("sandboxes"), timeout=10)
    cluster.fake.make_ready(name, None, ["127.0.0.1"])
    await d
    assert (await backend.describe(s.id)).endpoint == Endpoint("127.0.0.1", cluster.port)
    cluster.fake.make_ready(name, None, ["fd00::7", "10.1.2.4"])  # evicted; a new pod
    listed_before = backend.calls
    assert await backend.preview_endpoint(s.id, 8000) == Endpoint("10.1.2.4", 8000)
    assert backend.calls - listed_before == 1  # one read of the object, every time
    cluster.fake.make_ready(name, None, ["fd00::7"])
    assert await backend.preview_endpoint(s.id, 8000) == Endpoint("fd00::7", 8000)
    # The pod is gone and its address free for the next pod: the listing still says it
    # runs at 127.0.0.1, the object does not.
    cluster.fake.set_status(name, {"conditions": [], "podIPs": []})
    assert (await backend.describe(s.id)).endpoint == Endpoint("127.0.0.1", cluster.port)
    assert await backend.preview_endpoint(s.id, 8000) is None
    cluster.fake.make_ready(name, None, [])  # (Ready without an address yet)
    assert await backend.preview_endpoint(s.id, 8000) is None
    cluster.fake.make_ready(name, "sbx.example.svc", ["10.1.2.5"])  # the Service came
    assert await backend.preview_endpoint(s.id, 8000) == Endpoint("sbx.example.svc", 8000)


@pytest_twisted.ensureDeferred
async def test_pause_resume_keeps_home(cluster: Cluster) -> None:
    """Pause = Suspended with the HOME claim kept; resume = Running with the new token."""
    backend = cluster.backend()
    s = spec()
    name = f"cli-sbx-{s.id}"
    await started(cluster, backend, s)
    before = backend.calls
    await backend.stop(s.id)
    pause_calls = backend.calls - before
    sandbox = cluster.fake.objects("sandboxes")[name]
    assert sandbox["spec"]["operatingMode"] == "Suspended"
    validate(sandbox)
    home = cluster.fake.objects("persistentvolumeclaims")[f"cli-home-{s.id}"]
    cluster.fake.set_status(name, {"conditions": [], "podIPs": []})  # the pod is gone
    assert (await backend.describe(s.id)).state is State.STOPPED

    again = SandboxSpec(s.id, s.workspace_id, s.password, "proxy-token-2")
    before = backend.calls
    await started(cluster, backend, again)
    resume_calls = backend.calls - before
    print(f"\nk8s: pause {pause_calls} calls, resume {resume_calls} calls")
    resumed = cluster.fake.objects("sandboxes")[name]["spec"]
    assert resumed["operatingMode"] == "Running" and resumed["service"] is True
    assert cluster.fake.objects("persistentvolumeclaims")[f"cli-home-{s.id}"] == home
    assert cluster.fake.secret_values(name)["anthropic-token"] == "proxy-token-2"


@pytest_twisted.ensureDeferred
async def test_delete_removes_object_secret_and_claim(cluster: Cluster) -> None:
    backend = cluster.backend()
    s = spec()
    await started(cluster, backend, s)
    before = backend.calls
    await backend.delete(s.id)
    print(f"\nk8s: delete {backend.calls - before} calls")
    assert f"cli-sbx-{s.id}" not in cluster.fake.objects("sandboxes")
    assert f"cli-sbx-{s.id}" not in cluster.fake.objects("secrets")
    claims = cluster.fake.objects("persistentvolumeclaims")
    assert f"cli-home-{s.id}" not in claims and f"cli-ws-{s.workspace_id}" in claims
    assert (await backend.describe(s.id)).state is State.MISSING
    assert await backend.list_owned() == []
    await backend.delete_workspace(s.workspace_id)
    assert f"cli-ws-{s.workspace_id}" not in cluster.fake.objects("persistentvolumeclaims")


@pytest_twisted.ensureDeferred
async def test_logs_with_secrets_blanked(cluster: Cluster) -> None:
    """The pod's log tail, with its password (plain and as a Basic credential) and token
    blanked; a paused sandbox (no pod) has none."""
    from base64 import b64encode

    backend = cluster.backend()
    s = spec()
    await started(cluster, backend, s)
    basic = b64encode(f"opencode:{s.password}".encode()).decode()
    cluster.fake.serve_log(
        f"cli-sbx-{s.id}", f"listening on 4096\npw={s.password} {basic} {s.proxy_token}\n"
    )
    tail = await backend.logs(s.id)
    assert tail.lines == ("listening on 4096", "pw=[redacted] [redacted] [redacted]")
    assert (await backend.logs(str(uuid.uuid4()))).lines == ()


@pytest_twisted.ensureDeferred
async def test_start_of_a_running_sandbox_recreates_it(cluster: Cluster) -> None:
    """A start that finds its Sandbox running (a crash between start and record) makes it
    anew, so that its pod reads this start's token."""
    backend = cluster.backend()
    s = spec()
    name = f"cli-sbx-{s.id}"
    await started(cluster, backend, s)
    again = SandboxSpec(s.id, s.workspace_id, s.password, "proxy-token-3")
    d = backend.start(again)

    def recreated() -> bool:  # (for a moment there is none)
        found = cluster.fake.objects("sandboxes")
        return name in found and not found[name].get("status")

    await wait_until(_reactor(), recreated)
    cluster.fake.make_ready(name, "127.0.0.1", ["10.1.2.5"])
    await d
    assert cluster.fake.secret_values(name)["anthropic-token"] == "proxy-token-3"
    assert await backend.source_addresses(s.id) == frozenset({"10.1.2.5"})


@pytest_twisted.ensureDeferred
async def test_adoption_after_restart(cluster: Cluster) -> None:
    """A new server process (a new backend, same instance) finds its running sandbox."""
    s = spec()
    endpoint = await started(cluster, cluster.backend(), s)
    later = cluster.backend()
    assert await later.list_owned() == [s.id]
    observed = await later.describe(s.id)
    assert observed.state is State.RUNNING and observed.endpoint == endpoint
    assert await later.source_addresses(s.id) == frozenset({"10.1.2.3"})


@pytest_twisted.ensureDeferred
async def test_foreign_objects_untouched(cluster: Cluster) -> None:
    """Objects without our instance label are never listed, changed or deleted."""
    backend = cluster.backend()
    mine = spec()
    await started(cluster, backend, mine)
    other = str(uuid.uuid4())
    foreign = {
        "apiVersion": "agents.x-k8s.io/v1beta1",
        "kind": "Sandbox",
        "metadata": {
            "name": f"cli-sbx-{other}",
            "namespace": NAMESPACE,
            "labels": {"cli-server/instance": "someone-else", "cli-server/sandbox": other},
        },
        "spec": {"podTemplate": {"spec": {"containers": []}}, "operatingMode": "Running"},
    }
    cluster.fake.put("sandboxes", "v1beta1", f"cli-sbx-{other}", foreign)
    claim = {"metadata": {"name": f"cli-home-{other}", "namespace": NAMESPACE}, "spec": {}}
    cluster.fake.put("persistentvolumeclaims", "v1", f"cli-home-{other}", claim)
    assert await backend.list_owned() == [mine.id]
    assert (await backend.describe(other)).state is State.MISSING
    await backend.stop(other)
    await backend.delete(other)
    assert cluster.fake.objects("sandboxes")[f"cli-sbx-{other}"] == foreign
    assert cluster.fake.objects("persistentvolumeclaims")[f"cli-home-{other}"] == claim
    with pytest.raises(BackendError, match="not made by this server"):
        await backend.start(SandboxSpec(other, "w", "pw", "t"))
    assert cluster.fake.objects("sandboxes")[f"cli-sbx-{other}"] == foreign


@pytest_twisted.ensureDeferred
async def test_deleted_behind_our_back_or_unready(cluster: Cluster) -> None:
    """A Sandbox deleted by someone else is stopped (HOME kept: the reconciler pauses it); one
    whose Ready turned False is stopped with the cluster's reason (the reconciler fails it)."""
    backend = cluster.backend()
    s = spec()
    await started(cluster, backend, s)
    cluster.fake.make_not_ready(f"cli-sbx-{s.id}", "PodFailed", "container opencode OOMKilled")
    observed = await backend.describe(s.id)
    assert observed.state is State.STOPPED
    assert observed.exit == "PodFailed: container opencode OOMKilled"
    cluster.fake.remove("sandboxes", f"cli-sbx-{s.id}")
    observed = await backend.describe(s.id)
    assert observed.state is State.STOPPED and observed.exit is None
    await backend.stop(s.id)  # (what the reconciler does next: nothing to suspend)
    assert await backend.list_owned() == [s.id]


@pytest_twisted.ensureDeferred
async def test_never_ready_fails_with_the_reason(cluster: Cluster) -> None:
    backend = cluster.backend(start_timeout=2.0)
    s = spec()
    name = f"cli-sbx-{s.id}"
    d = backend.start(s)
    await wait_until(_reactor(), lambda: name in cluster.fake.objects("sandboxes"), timeout=10)
    cluster.fake.make_not_ready(name, "ImagePullBackOff", 'Back-off pulling image "x"')
    with pytest.raises(BackendError) as caught:
        await d
    assert str(caught.value) == (
        'the sandbox did not become ready in 2s: ImagePullBackOff: Back-off pulling image "x"'
    )


@pytest_twisted.ensureDeferred
async def test_never_ready_reason_from_events(cluster: Cluster) -> None:
    backend = cluster.backend(start_timeout=1.0)
    s = spec()
    name = f"cli-sbx-{s.id}"
    event = {
        "metadata": {"name": "e1", "namespace": NAMESPACE},
        "involvedObject": {"name": name},
        "type": "Warning",
        "reason": "FailedScheduling",
        "message": "0/3 nodes are available: 3 Insufficient memory.",
    }
    cluster.fake.put("events", "v1", "e1", event)
    with pytest.raises(BackendError, match="FailedScheduling: 0/3 nodes are available"):
        await backend.start(s)


@pytest.mark.parametrize(
    "failure, expected",
    [
        ((SANDBOXES, 403), "the Kubernetes API forbids it (RBAC: see the chart's Role): no"),
        ((CLAIMS, 422), "the Kubernetes API rejected the object as invalid: no"),
        ((SANDBOXES, 409), "the Kubernetes API reports a conflict: no"),
        ((CLAIMS, 404), "the Kubernetes API has no such object or resource: no"),
        ((CLAIMS, "hang"), "the Kubernetes API did not answer within 1s"),
    ],
    ids=["403", "422", "409", "404", "timeout"],
)
@pytest_twisted.ensureDeferred
async def test_api_errors_are_readable(cluster: Cluster, failure: Any, expected: str) -> None:
    criteria, status = failure
    if status == "hang":
        cluster.fake.hang(criteria, 3.0)
    else:
        cluster.fake.answer(criteria, status, "no")
    backend = cluster.backend(timeout=1.0)
    with pytest.raises(BackendError) as caught:
        await backend.start(spec())
    assert str(caught.value) == expected


@pytest_twisted.ensureDeferred
async def test_unreachable_and_unserved() -> None:
    """No API server at all; a cluster without the Sandbox resource."""
    reactor = _reactor()
    pool = ThreadPoolService(reactor, "k8s-test", 2)
    pool.startService()
    directory = scratch_dir("cli-test-k8s-")
    fake = FakeKubernetes(versions=())
    try:
        config = fake.kubeconfig(directory)
        pod = PodSettings("img", "http://s/v1", {})
        backend = K8sBackend(
            pool.run,
            K8sSettings(pod, kubeconfig=str(config), timeout=1.0),
            INSTANCE,
            OpencodeClient(reactor),
            reactor,
        )
        with pytest.raises(BackendError, match="serves no Sandbox resource"):
            await backend.start(spec())
        fake.stop()
        down = K8sBackend(
            pool.run,
            K8sSettings(pod, kubeconfig=str(config), timeout=1.0),
            INSTANCE,
            OpencodeClient(reactor),
            reactor,
        )
        with pytest.raises(BackendError, match="the Kubernetes API server is unreachable"):
            await down.start(spec())
        with pytest.raises(BackendError, match="unreachable"):
            await down.list_owned()
    finally:
        pool.stopService()
        remove_dir(directory)


@pytest_twisted.ensureDeferred
async def test_v1alpha1_only(alpha_cluster: Cluster) -> None:
    """Where only v1alpha1 is served (found by discovery): replicas 1, pause = replicas 0."""
    backend = alpha_cluster.backend()
    s = spec()
    name = f"cli-sbx-{s.id}"
    d = backend.start(s)
    await wait_until(
        _reactor(), lambda: name in alpha_cluster.fake.objects("sandboxes"), timeout=10
    )
    alpha_cluster.fake.make_ready(name, "127.0.0.1", ["127.0.0.1"])
    await d
    sandbox = alpha_cluster.fake.objects("sandboxes")[name]
    assert sandbox["apiVersion"] == "agents.x-k8s.io/v1alpha1"
    assert sandbox["spec"]["replicas"] == 1 and "operatingMode" not in sandbox["spec"]
    validate(sandbox, "v1alpha1")
    await backend.stop(s.id)
    assert alpha_cluster.fake.objects("sandboxes")[name]["spec"]["replicas"] == 0
    assert (await backend.describe(s.id)).state is State.STOPPED


@pytest_twisted.ensureDeferred
async def test_waits_never_hold_up_other_calls(cluster: Cluster) -> None:
    """Three starts waiting for Ready (more than the API pool's 2 threads) leave the pool
    free: describing a running sandbox still answers at once."""
    backend = cluster.backend()
    running = spec()
    await started(cluster, backend, running)
    waiting = [spec() for _ in range(3)]
    starts = [backend.start(s) for s in waiting]
    for s in waiting:
        name = f"cli-sbx-{s.id}"
        await wait_until(_reactor(), lambda n=name: n in cluster.fake.objects("sandboxes"))
    observed = await backend.describe(running.id)
    assert observed.state is State.RUNNING
    assert not any(d.called for d in starts)
    for s in waiting:
        cluster.fake.make_ready(f"cli-sbx-{s.id}", "127.0.0.1", ["127.0.0.1"])
    for d in starts:
        await d


@pytest_twisted.ensureDeferred
async def test_reconcile_500_sandboxes(cluster: Cluster) -> None:
    """What the reconciler asks of the backend, with 500 of our sandboxes in the fake."""
    backend = cluster.backend(timeout=10.0)
    template = None
    s = spec()
    await started(cluster, backend, s)
    template = cluster.fake.objects("sandboxes")[f"cli-sbx-{s.id}"]
    ids = [str(uuid.uuid4()) for _ in range(499)]
    for sandbox_id in ids:
        obj = json.loads(json.dumps(template).replace(s.id, sandbox_id))
        obj["metadata"]["namespace"] = NAMESPACE
        cluster.fake.put("sandboxes", "v1beta1", f"cli-sbx-{sandbox_id}", obj)
    t0 = time.monotonic()
    before = backend.calls
    owned = await backend.list_owned()
    observed = [await backend.describe(i) for i in owned]
    took = time.monotonic() - t0
    print(f"\nk8s: reconcile of 500 sandboxes: {took:.2f}s, {backend.calls - before} calls")
    assert len(owned) == 500 and all(o.state is State.RUNNING for o in observed)
    assert backend.calls - before <= 3  # one listing serves every describe


@pytest_twisted.ensureDeferred
async def test_listing_never_hides_a_change(cluster: Cluster) -> None:
    """describe() answers "running" from a listing up to 2 s old; our own stop is seen at once,
    and whatever else a listing says is read again from the object."""
    backend = cluster.backend(snapshot_ttl=60.0)  # (a slow machine must not renew it)
    s = spec()
    name = f"cli-sbx-{s.id}"
    await started(cluster, backend, s)
    assert (await backend.describe(s.id)).state is State.RUNNING  # (lists)
    await backend.stop(s.id)
    assert (await backend.describe(s.id)).state is State.STOPPED
    cluster.fake.patch("sandboxes", name, lambda o: o["spec"].update(operatingMode="Running"))
    assert (await backend.describe(s.id)).state is State.RUNNING  # (the listing is re-read)
    before = backend.calls
    cluster.fake.make_not_ready(name, "PodFailed", "evicted")
    observed = await backend.describe(s.id)  # (the listing still says suspended: read again)
    assert observed.state is State.STOPPED and observed.exit == "PodFailed: evicted"
    assert backend.calls - before == 1


@pytest_twisted.async_yield_fixture
async def k8s_app(db_url: str, cluster: Cluster) -> AsyncIterator[Any]:
    from .fake_anthropic import serve as serve_fake_anthropic

    backend = cluster.backend(start_timeout=10.0)
    anthropic, anthropic_port = serve_fake_anthropic(_reactor())
    config = attrs.evolve(
        server_config(db_url),
        backend="k8s",
        anthropic_api_key=FAKE_KEY,
        anthropic_base_url=f"http://127.0.0.1:{anthropic_port.getHost().port}",
    )
    app = await start_server(db_url, config=config, backend=backend)
    yield app, anthropic
    await stop_server(app)
    await anthropic_port.stopListening()


async def _moved(app: Any, sandbox_id: str) -> bool:
    """Whether the backend has seen the sandbox's pod move to 10.9.9.9."""
    backend = app.server.backend
    await backend.describe(sandbox_id)
    return bool(await backend.source_addresses(sandbox_id) == frozenset({"10.9.9.9"}))


@pytest_twisted.ensureDeferred
async def test_through_the_api(k8s_app: Any, cluster: Cluster) -> None:
    """The whole server on the k8s backend: running once the controller says Ready; a
    forbidden start is ``failed`` with a readable message, and the server keeps serving."""
    from .test_sandboxes_api import team

    app = k8s_app[0]
    reactor = _reactor()
    people, wid = await team(app)
    dev = people["developer"]
    made = (await dev.call("POST", f"/api/workspaces/{wid}/sandboxes", {"name": "k"})).body
    name = f"cli-sbx-{made['id']}"
    await wait_until(reactor, lambda: name in cluster.fake.objects("sandboxes"), timeout=10)
    cluster.fake.make_ready(name, "127.0.0.1", ["127.0.0.1"])

    async def status(sandbox_id: str) -> str:
        return str((await dev.call("GET", f"/api/sandboxes/{sandbox_id}")).body["status"])

    async def running() -> bool:
        return await status(made["id"]) == "running"

    await wait_until(reactor, running, timeout=10)
    # the subdomain proxy reaches the pod's address with opencode's credential
    from cli_server.sandboxes.opencode import basic_auth

    from .test_proxy import Proxy

    proxy = Proxy(app, None, people, wid, made["id"])
    cookie = await proxy.open("developer")
    reply = await proxy.visit("/session?x=1", cookie=cookie)
    assert reply.code == 200 and reply.body["healthy"] is True
    (row,) = await app.db.query("SELECT opencode_password FROM sandboxes")
    assert cluster.opencode.seen[-1] == (b"/session?x=1", basic_auth(row["opencode_password"]))

    # the Anthropic proxy takes the sandbox's token from its pod's address only (127.0.0.1
    # here), and replaces it with the real key
    anthropic = k8s_app[1]
    token = cluster.fake.secret_values(name)["anthropic-token"]
    message = {"model": "claude-sonnet-4-6", "max_tokens": 5, "messages": []}
    answer = await dev.call(
        "POST", "/proxy/anthropic/v1/messages", message, headers={"x-api-key": token}
    )
    assert answer.code == 200, answer
    assert anthropic.seen[-1]["headers"]["x-api-key"] == [FAKE_KEY]
    cluster.fake.make_ready(name, "127.0.0.1", ["10.9.9.9"])  # (a new pod elsewhere)
    await wait_until(reactor, lambda: Deferred.fromCoroutine(_moved(app, made["id"])))
    answer = await dev.call(
        "POST", "/proxy/anthropic/v1/messages", message, headers={"x-api-key": token}
    )
    assert answer.code == 401

    cluster.fake.answer(SANDBOXES, 403, 'sandboxes is forbidden: User "system:serviceaccount"')
    second = (await dev.call("POST", f"/api/workspaces/{wid}/sandboxes", {"name": "k2"})).body

    async def failed() -> bool:
        return await status(second["id"]) == "failed"

    await wait_until(reactor, failed, timeout=10)
    body = (await dev.call("GET", f"/api/sandboxes/{second['id']}")).body
    assert body["error"].startswith("the Kubernetes API forbids it (RBAC")
    assert (await people["anonymous"].call("GET", "/healthz")).code == 200


def test_twistd_on_the_k8s_backend(data_dir: Path) -> None:
    """A real ``twistd cli-server --backend k8s`` against the fake: it finds the Sandbox
    resource, submits a sandbox's objects with its options, runs it once the "controller"
    reports it Ready (a FAKE opencode answers at the pod address, port 4096), and deletes
    its objects again."""
    import http.server
    import random
    import threading

    from .daemon import Daemon

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"healthy": true}'
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    pod_ip = f"127.0.{random.randrange(1, 255)}.{random.randrange(2, 255)}"  # (port 4096 free)
    opencode = http.server.ThreadingHTTPServer((pod_ip, 4096), Health)
    threading.Thread(target=opencode.serve_forever, daemon=True).start()
    fake = FakeKubernetes()
    data_dir.mkdir(parents=True)
    server = Daemon(
        data_dir,
        "--backend=k8s",
        "--agent-image=registry.example/sandbox:2",
        f"--kubeconfig={fake.kubeconfig(data_dir.parent)}",
        "--runtime-class=gvisor",
        "--k8s-instance=daemon-test",
        "--in-cluster-url=http://cli.cli.svc:8080",
    )
    try:
        server.start()
        assert server.request("GET", "/readyz")[0] == 200
        credentials = {"username": "alice", "password": "correct horse"}
        assert server.request("POST", "/api/auth/register", credentials)[0] == 201
        assert server.request("POST", "/api/auth/login", credentials)[0] == 200
        _, workspace = server.request("POST", "/api/workspaces", {"name": "w"})
        wid = workspace["id"]
        sid = server.request("POST", f"/api/workspaces/{wid}/sandboxes", {"name": "s"})[1]["id"]
        name = f"cli-sbx-{sid}"
        deadline = time.monotonic() + 30
        while name not in fake.objects("sandboxes"):
            assert time.monotonic() < deadline, "no Sandbox was submitted"
            time.sleep(0.1)
        sandbox = fake.objects("sandboxes")[name]
        validate(sandbox)
        assert sandbox["metadata"]["labels"]["cli-server/instance"] == "daemon-test"
        pod = sandbox["spec"]["podTemplate"]["spec"]
        assert pod["runtimeClassName"] == "gvisor"
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env["ANTHROPIC_BASE_URL"] == "http://cli.cli.svc:8080/proxy/anthropic/v1"
        assert pod["containers"][0]["image"] == "registry.example/sandbox:2"
        fake.make_ready(name, None, [pod_ip])
        while server.request("GET", f"/api/sandboxes/{sid}")[1]["status"] != "running":
            assert time.monotonic() < deadline, server.log.read_text()[-3000:]
            time.sleep(0.2)
        assert server.request("DELETE", f"/api/sandboxes/{sid}")[0] == 204
        assert name not in fake.objects("sandboxes")
        assert name not in fake.objects("secrets")
        assert f"cli-home-{sid}" not in fake.objects("persistentvolumeclaims")
        assert f"cli-ws-{wid}" in fake.objects("persistentvolumeclaims")
        assert server.request("DELETE", f"/api/workspaces/{wid}")[0] == 204
        assert f"cli-ws-{wid}" not in fake.objects("persistentvolumeclaims")
        log = server.log.read_text()
        assert "k8s backend: Sandbox v1beta1 objects in namespace sandboxes" in log
    finally:
        server.stop()
        fake.stop()
        opencode.shutdown()
        opencode.server_close()


@pytest_twisted.ensureDeferred
async def test_reconciler_with_500_sandboxes(k8s_app: Any, cluster: Cluster) -> None:
    """The real reconciler over 500 running rows and 500 Sandboxes in the fake: one sweep
    leaves the Ready ones running, fails the ones whose Ready turned False (with the reason)
    and pauses the ones deleted behind our back; timed."""
    from cli_server.sandboxes.monitor import Reconciler

    from .test_sandboxes_api import team

    app = k8s_app[0]
    backend = app.server.backend
    _, wid = await team(app)
    ids = [str(uuid.uuid4()) for _ in range(500)]
    await app.db.execute(
        "INSERT INTO sandboxes (id, workspace_id, name, status, backend, opencode_password)"
        " SELECT i, %s, i::text, 'running', 'k8s', 'pw' FROM unnest(%s::uuid[]) AS i",
        (wid, ids),
    )
    s = SandboxSpec(ids[0], wid, "pw", "t")
    await started(cluster, backend, s)
    template = cluster.fake.objects("sandboxes")[f"cli-sbx-{s.id}"]
    for sandbox_id in ids[1:]:
        obj = json.loads(json.dumps(template).replace(s.id, sandbox_id))
        cluster.fake.put("sandboxes", "v1beta1", f"cli-sbx-{sandbox_id}", obj)
        claim = {
            "metadata": {"name": f"cli-home-{sandbox_id}", "labels": obj["metadata"]["labels"]}
        }
        cluster.fake.put("persistentvolumeclaims", "v1", f"cli-home-{sandbox_id}", claim)
    for sandbox_id in ids[1:11]:
        cluster.fake.make_not_ready(f"cli-sbx-{sandbox_id}", "PodFailed", "OOMKilled")
    for sandbox_id in ids[11:16]:
        cluster.fake.remove("sandboxes", f"cli-sbx-{sandbox_id}")
    reconciler = Reconciler(app.db, backend, app.server.manager)
    before = backend.calls
    t0 = time.monotonic()
    await reconciler.sweep()
    took = time.monotonic() - t0
    print(
        f"\nk8s: a reconciler sweep over 500 sandboxes: {took:.2f}s, {backend.calls - before} calls"
    )
    rows = await app.db.query("SELECT id, status, error FROM sandboxes")
    status = {str(r["id"]): (r["status"], r["error"]) for r in rows}
    assert all(status[i] == ("failed", "PodFailed: OOMKilled") for i in ids[1:11])
    assert all(status[i][0] == "paused" for i in ids[11:16])
    assert all(status[i] == ("running", None) for i in [ids[0], *ids[16:]])
    # the failed ones were suspended; nothing was deleted
    assert cluster.fake.objects("sandboxes")[f"cli-sbx-{ids[1]}"]["spec"]["operatingMode"] == (
        "Suspended"
    )
    assert len(cluster.fake.objects("sandboxes")) == 495

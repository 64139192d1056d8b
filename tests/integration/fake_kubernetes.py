"""A FAKE Kubernetes API server for the k8s backend's contract tests: kmock's stateful emulator
(objects kept in memory, CRUD, 404/409, watch), on 127.0.0.1 in a thread of its own with its own
asyncio loop. The tests play the agent-sandbox controller's part: they set status and
conditions. What only a real cluster proves (pods, volumes, gVisor, NetworkPolicy) is listed
in docs/kubernetes.md."""

from __future__ import annotations

import asyncio
import base64
import copy
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

NAMESPACE = "sandboxes"
GROUP = "agents.x-k8s.io"
# the Sandbox CRD, as the chart installs it (agent-sandbox's, unchanged)
CRD = Path(__file__).resolve().parents[2] / "charts" / "cli-server" / "files"


class FakeKubernetes:
    """kmock's KubernetesEmulator behind an HTTP port; ``versions``: the Sandbox versions served."""

    def __init__(self, versions: tuple[str, ...] = ("v1beta1",)) -> None:
        import kmock

        self._kmock = kmock
        self.versions = versions
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.url = self._on_loop(self._start())

    def _on_loop(self, coroutine: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    async def _start(self) -> str:
        kmock = self._kmock
        self.emulator = kmock.KubernetesEmulator()
        await self.emulator.__aenter__()
        self._server = kmock.Server(self.emulator)
        await self._server.__aenter__()
        for version in self.versions:
            self.emulator.resources[f"{GROUP}/{version}/sandboxes"] = kmock.ResourceInfo(
                kind="Sandbox", namespaced=True, subresources={"status"}
            )
        for plural, kind in [
            ("secrets", "Secret"),
            ("persistentvolumeclaims", "PersistentVolumeClaim"),
            ("events", "Event"),
            ("pods", "Pod"),
        ]:
            self.emulator.resources[f"v1/{plural}"] = kmock.ResourceInfo(kind=kind, namespaced=True)
        return str(self._server.url).rstrip("/")

    def stop(self) -> None:
        async def stop() -> None:
            await self._server.__aexit__(None, None, None)
            await self.emulator.__aexit__(None, None, None)

        try:
            self._on_loop(stop(), timeout=30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def kubeconfig(self, directory: Path) -> Path:
        path = directory / "kubeconfig"
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "fake", "user": {"token": "fake-token"}}],
                    "contexts": [
                        {
                            "name": "fake",
                            "context": {"cluster": "fake", "user": "fake", "namespace": NAMESPACE},
                        }
                    ],
                    "current-context": "fake",
                }
            )
        )
        return path

    # -- what is stored -------------------------------------------------------------------------

    def objects(self, plural: str) -> dict[str, dict[str, Any]]:
        """Name -> object, of one resource (``sandboxes`` or a core plural), not deleted."""

        async def snapshot() -> dict[str, dict[str, Any]]:
            found = {}
            for (resource, _, name), obj in list(self.emulator.objects.items()):
                if resource.plural == plural and not obj.deleted:
                    found[name] = copy.deepcopy(obj.raw)
            return found

        result: dict[str, dict[str, Any]] = self._on_loop(snapshot())
        return result

    def put(self, plural: str, version: str, name: str, obj: dict[str, Any]) -> None:
        """Store an object directly (someone else's, or one made behind our back)."""
        kmock = self._kmock
        group = "" if version == "v1" else GROUP

        async def store() -> None:
            path = f"{group}/{version}/{plural}" if group else f"{version}/{plural}"
            self.emulator.objects[kmock.resource(path), NAMESPACE, name] = obj

        self._on_loop(store())

    def patch(self, plural: str, name: str, change: Callable[[dict[str, Any]], None]) -> None:
        """Change a stored object in place, as the controller (or someone else) would."""

        async def apply() -> None:
            for (resource, _, found), obj in list(self.emulator.objects.items()):
                if resource.plural == plural and found == name and not obj.deleted:
                    raw = copy.deepcopy(obj.raw)
                    change(raw)
                    obj.patch(raw)
                    return
            raise KeyError(name)

        self._on_loop(apply())

    def remove(self, plural: str, name: str) -> None:
        async def apply() -> None:
            for (resource, _, found), obj in list(self.emulator.objects.items()):
                if resource.plural == plural and found == name and not obj.deleted:
                    obj.delete()

        self._on_loop(apply())

    def secret_values(self, name: str) -> dict[str, str]:
        obj = self.objects("secrets")[name]
        values = dict(obj.get("stringData") or {})
        for key, value in (obj.get("data") or {}).items():
            values[key] = base64.b64decode(value).decode()
        return values

    # -- the controller's part ------------------------------------------------------------------

    def set_status(self, name: str, status: dict[str, Any]) -> None:
        """PATCH the Sandbox's status subresource over HTTP, as the controller does (so that
        watches see a MODIFIED event)."""
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = self.url
        api = client.CustomObjectsApi(client.ApiClient(configuration))
        api.patch_namespaced_custom_object_status(
            GROUP, self.versions[0], NAMESPACE, "sandboxes", name, {"status": status}
        )

    def make_ready(self, name: str, fqdn: str | None, pod_ips: list[str]) -> None:
        status: dict[str, Any] = {
            "conditions": [_condition("Ready", "True", "DependenciesReady", "pod is ready")],
            "podIPs": pod_ips,
        }
        if fqdn:
            status["serviceFQDN"] = fqdn
        self.set_status(name, status)

    def make_not_ready(self, name: str, reason: str, message: str) -> None:
        self.set_status(name, {"conditions": [_condition("Ready", "False", reason, message)]})

    # -- failures -------------------------------------------------------------------------------

    def answer(self, criteria: Any, status: int, message: str) -> None:
        """Every request matching ``criteria`` (a kmock filter) answers ``status``."""
        body = {
            "apiVersion": "v1",
            "kind": "Status",
            "status": "Failure",
            "code": status,
            "message": message,
        }

        async def add() -> None:
            self.emulator[criteria] << status << body

        self._on_loop(add())

    def serve_log(self, pod: str, text: str) -> None:
        """The pod's log, as the kubelet would serve it through the API server."""
        kmock = self._kmock

        async def add() -> None:
            path = f"get /api/v1/namespaces/{NAMESPACE}/pods/{pod}/log"
            self.emulator[path] << kmock.headers({"Content-Type": "text/plain"}) << text.encode()

        self._on_loop(add())

    def hang(self, criteria: Any, seconds: float) -> None:
        """Requests matching ``criteria`` get no answer for ``seconds``."""

        async def add() -> None:
            self.emulator[criteria] << (lambda: asyncio.sleep(seconds), b"{}")

        self._on_loop(add())


def _condition(kind: str, status: str, reason: str, message: str) -> dict[str, Any]:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-12-06T00:00:00Z",
    }


def sandbox_schema(version: str) -> dict[str, Any]:
    """The CRD's openAPIV3Schema of one version, as JSON Schema (int-or-string, nullable)."""
    crd = yaml.safe_load((CRD / "agents.x-k8s.io_sandboxes.yaml").read_text())
    (found,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return _json_schema(found["schema"]["openAPIV3Schema"])


def _json_schema(node: Any) -> Any:
    if isinstance(node, list):
        return [_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    out.pop("nullable", None)
    return out

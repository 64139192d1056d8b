"""The Kubernetes objects of the k8s backend, as plain dicts: pure, so tests check them whole.

One agent-sandbox ``Sandbox`` per sandbox (``agents.x-k8s.io``), a ``Secret`` beside it holding
its opencode password and this run's Anthropic proxy token (the pod reads them as environment
variables; the Sandbox object never holds them), a claim for its HOME, and one claim per
workspace for the shared disk at ``/data/disk0``.
"""

from __future__ import annotations

from typing import Any

from attrs import frozen

GROUP = "agents.x-k8s.io"
VERSIONS = ("v1beta1", "v1alpha1")  # preferred first; v1alpha1 pauses with replicas: 0
PLURAL = "sandboxes"
PORT = 4096
HOME = "/home/opencode"
DISK = "/data/disk0"
PREFIX = "cli-server"  # of every label key we set
KIND_LABEL = f"{PREFIX}/kind"
INSTANCE_LABEL = f"{PREFIX}/instance"
SANDBOX_LABEL = f"{PREFIX}/sandbox"
WORKSPACE_LABEL = f"{PREFIX}/workspace"


def sandbox_name(sandbox_id: str) -> str:
    return f"cli-sbx-{sandbox_id}"


def home_claim(sandbox_id: str) -> str:
    return f"cli-home-{sandbox_id}"


def workspace_claim(workspace_id: str) -> str:
    return f"cli-ws-{workspace_id}"


@frozen
class PodSettings:
    """What every sandbox pod gets, from the server's options."""

    image: str
    anthropic_url: str  # ANTHROPIC_BASE_URL as a pod sees it (ends in /v1)
    resources: dict[str, Any]  # a ResourceRequirements
    runtime_class: str | None = None  # e.g. gvisor
    storage_class: str | None = None  # None: the cluster's default
    workspace_access_mode: str = "ReadWriteOnce"
    workspace_size: str = "10Gi"
    home_size: str = "5Gi"
    image_pull_policy: str = "IfNotPresent"


def quantity(size: int) -> str:
    """Bytes as a Kubernetes quantity (``10Gi`` rather than ``10737418240``)."""
    for suffix, scale in (("Ti", 1024**4), ("Gi", 1024**3), ("Mi", 1024**2), ("Ki", 1024)):
        if size % scale == 0:
            return f"{size // scale}{suffix}"
    return str(size)


def labels(instance: str, kind: str, **more: str) -> dict[str, str]:
    found = {
        "app.kubernetes.io/managed-by": "cli-server",
        INSTANCE_LABEL: instance,
        KIND_LABEL: kind,
    }
    found.update({f"{PREFIX}/{key}": value for key, value in more.items()})
    return found


def ours(obj: dict[str, Any], instance: str) -> bool:
    """Whether an object carries this server's instance label (else: never touched)."""
    found = (obj.get("metadata") or {}).get("labels") or {}
    return bool(found.get(INSTANCE_LABEL) == instance)


def secret(
    instance: str, sandbox_id: str, workspace_id: str, password: str, token: str
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": sandbox_name(sandbox_id),
            "labels": labels(instance, "secret", sandbox=sandbox_id, workspace=workspace_id),
        },
        "type": "Opaque",
        "stringData": {"opencode-password": password, "anthropic-token": token},
    }


def claim(
    name: str, size: str, mode: str, storage_class: str | None, obj_labels: dict[str, str]
) -> dict[str, Any]:
    spec: dict[str, Any] = {"accessModes": [mode], "resources": {"requests": {"storage": size}}}
    if storage_class:
        spec["storageClassName"] = storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "labels": obj_labels},
        "spec": spec,
    }


def home(instance: str, sandbox_id: str, workspace_id: str, pod: PodSettings) -> dict[str, Any]:
    obj_labels = labels(instance, "home", sandbox=sandbox_id, workspace=workspace_id)
    return claim(
        home_claim(sandbox_id), pod.home_size, "ReadWriteOnce", pod.storage_class, obj_labels
    )


def workspace_disk(instance: str, workspace_id: str, pod: PodSettings) -> dict[str, Any]:
    obj_labels = labels(instance, "workspace", workspace=workspace_id)
    return claim(
        workspace_claim(workspace_id),
        pod.workspace_size,
        pod.workspace_access_mode,
        pod.storage_class,
        obj_labels,
    )


def _from_secret(name: str, secret_name: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret_name, "key": key}}}


def pod_template(
    instance: str, sandbox_id: str, workspace_id: str, pod: PodSettings
) -> dict[str, Any]:
    name = sandbox_name(sandbox_id)
    env = [
        _from_secret("OPENCODE_SERVER_PASSWORD", name, "opencode-password"),
        _from_secret("ANTHROPIC_API_KEY", name, "anthropic-token"),
        {"name": "ANTHROPIC_BASE_URL", "value": pod.anthropic_url},
        {"name": "HOME", "value": HOME},
        {"name": "OPENCODE_DISABLE_MODELS_FETCH", "value": "1"},
        {"name": "OPENCODE_DISABLE_AUTOUPDATE", "value": "1"},
        {"name": "OPENCODE_DISABLE_DEFAULT_PLUGINS", "value": "1"},
    ]
    spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "fsGroup": 1000,
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": "opencode",
                "image": pod.image,
                "imagePullPolicy": pod.image_pull_policy,
                "command": ["opencode", "serve", "--hostname", "0.0.0.0", "--port", str(PORT)],
                "workingDir": DISK,
                "ports": [{"name": "opencode", "containerPort": PORT, "protocol": "TCP"}],
                "env": env,
                "resources": pod.resources,
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                    "runAsNonRoot": True,
                    "runAsUser": 1000,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                # opencode answers every route with 401 without its password: a TCP probe
                "readinessProbe": {
                    "tcpSocket": {"port": PORT},
                    "periodSeconds": 2,
                    "failureThreshold": 3,
                },
                "volumeMounts": [
                    {"name": "workspace", "mountPath": DISK},
                    {"name": "home", "mountPath": HOME},
                ],
            }
        ],
        "volumes": [
            {
                "name": "workspace",
                "persistentVolumeClaim": {"claimName": workspace_claim(workspace_id)},
            },
            {"name": "home", "persistentVolumeClaim": {"claimName": home_claim(sandbox_id)}},
        ],
    }
    if pod.runtime_class:
        spec["runtimeClassName"] = pod.runtime_class
    return {
        "metadata": {
            "labels": labels(instance, "sandbox", sandbox=sandbox_id, workspace=workspace_id)
        },
        "spec": spec,
    }


def sandbox(
    version: str, instance: str, sandbox_id: str, workspace_id: str, pod: PodSettings
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "podTemplate": pod_template(instance, sandbox_id, workspace_id, pod),
        # A headless Service of the Sandbox's name (agent-sandbox 0.5 makes one only when
        # asked): status.serviceFQDN, whose name resolves to this sandbox's ready pod alone.
        "service": True,
    }
    if version == "v1alpha1":
        spec["replicas"] = 1
    else:
        spec["operatingMode"] = "Running"
    return {
        "apiVersion": f"{GROUP}/{version}",
        "kind": "Sandbox",
        "metadata": {
            "name": sandbox_name(sandbox_id),
            "labels": labels(instance, "sandbox", sandbox=sandbox_id, workspace=workspace_id),
        },
        "spec": spec,
    }


def running_patch(version: str, running: bool) -> dict[str, Any]:
    if version == "v1alpha1":
        return {"spec": {"replicas": 1 if running else 0}}
    return {"spec": {"operatingMode": "Running" if running else "Suspended"}}


def suspended(obj: dict[str, Any]) -> bool:
    spec = obj.get("spec") or {}
    if "replicas" in spec and "operatingMode" not in spec:
        return bool(spec["replicas"] == 0)
    return bool(spec.get("operatingMode") == "Suspended")


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for found in (obj.get("status") or {}).get("conditions") or []:
        if isinstance(found, dict) and found.get("type") == kind:
            return found
    return None


def ready(obj: dict[str, Any]) -> bool:
    found = condition(obj, "Ready")
    return found is not None and found.get("status") == "True"


def service_name(obj: dict[str, Any]) -> str | None:
    """The name of the Sandbox's headless Service (``status.serviceFQDN``), if it has one."""
    found = (obj.get("status") or {}).get("serviceFQDN")
    return str(found) if found else None


def pod_addresses(obj: dict[str, Any]) -> list[str]:
    return [str(ip) for ip in (obj.get("status") or {}).get("podIPs") or []]


def address(obj: dict[str, Any]) -> str | None:
    """Where the server reaches the sandbox: its Service's name, else its pod's address."""
    ips = pod_addresses(obj)
    return service_name(obj) or (ips[0] if ips else None)


def not_ready_reason(obj: dict[str, Any] | None, events: list[dict[str, Any]]) -> str:
    """Why a sandbox is not Ready, in words: its Ready condition, else its latest warning."""
    found = condition(obj or {}, "Ready")
    if found is not None and found.get("status") != "True":
        said = ": ".join(str(found[k]) for k in ("reason", "message") if found.get(k))
        if said:
            return said
    warnings = [e for e in events if e.get("type") == "Warning"] or events
    if warnings:
        last = warnings[-1]
        return ": ".join(str(last[k]) for k in ("reason", "message") if last.get(k))
    return "no reason given by the cluster"

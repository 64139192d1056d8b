"""The Helm chart (charts/cli-server): lint, render over a matrix of values, validate every
manifest offline against Kubernetes 1.35's schemas (strict), check that each documented value
changes what is rendered, and that the server's Role is least privilege."""

from __future__ import annotations

import copy
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from .helm_binary import helm

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "cli-server"
KUBERNETES = "1.35.0"
NAMESPACE = "cli"
# A fixed bundled-database password: without one each render draws a new random one.
BASE: dict[str, Any] = {"postgresql": {"password": "test-password"}}


@pytest.fixture(scope="module")
def helm_bin() -> Path:
    return helm()


def merged(*layers: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for layer in layers:
        out = _merge(out, layer)
    return out


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(a)
    for key, value in b.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def render_text(helm_bin: Path, values: dict[str, Any]) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(merged(BASE, values), f)
        f.flush()
        result = subprocess.run(
            [str(helm_bin), "template", "cli-server", str(CHART), "-n", NAMESPACE, "-f", f.name],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 0, result.stderr
    return result.stdout


def render(helm_bin: Path, values: dict[str, Any]) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(render_text(helm_bin, values)) if d]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def server_env(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = find(docs, "Deployment", "cli-server")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


K8S = {"backend": "k8s", "opencode": {"runtimeClassName": "gvisor"}}
MATRIX: dict[str, dict[str, Any]] = {
    "defaults": {},
    "k8s-gvisor": K8S,
    "ingress-tls": {"ingress": {"enabled": True, "tls": True, "host": "cli.example.com"}},
    "gateway": {"gateway": {"enabled": True}, "ingress": {"host": "cli.example.com"}},
    "bundled-postgresql": merged(K8S, {"postgresql": {"enabled": True}}),
    "external-postgresql": merged(K8S, {"database": {"url": "postgres://u:p@db:5432/cli"}}),
    "existing-secret": merged(K8S, {"existingSecret": "mine", "postgresql": {"enabled": False}}),
    "replicas-3": merged(K8S, {"replicaCount": 3, "database": {"url": "postgres://db/cli"}}),
    "replicas-3-docker": {"replicaCount": 3, "docker": {"host": "tcp://dind:2375"}},
    "sso": {
        "oidc": {
            "redirectBaseUrl": "https://cli.example.com",
            "github": {"enabled": True, "clientId": "gh", "clientSecret": "s"},
            "generic": {
                "enabled": True,
                "issuerUrl": "https://idp.example.com",
                "clientId": "c",
                "clientSecret": "s",
            },
        }
    },
}


def test_lint(helm_bin: Path) -> None:
    for values in ([], ["--set", "backend=k8s"]):
        result = subprocess.run(
            [str(helm_bin), "lint", "--strict", str(CHART), *values],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("case", list(MATRIX))
def test_renders_valid_manifests(helm_bin: Path, case: str) -> None:
    """Every rendered object passes strict validation for Kubernetes 1.35 (the HTTPRoute, a
    Gateway API kind without built-in schema, is checked field by field)."""
    docs = render(helm_bin, MATRIX[case])
    for doc in docs:
        if doc["kind"] == "HTTPRoute":
            assert doc["apiVersion"] == "gateway.networking.k8s.io/v1"
            assert set(doc["spec"]) == {"parentRefs", "hostnames", "rules"}
            continue
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    kinds = {d["kind"] for d in docs}
    env = server_env(docs)
    if case == "defaults":
        assert env["BACKEND"] == "docker" and not find(docs, "Role", "cli-server")
        assert "CustomResourceDefinition" in kinds  # agentSandbox.install defaults to true
    if case == "k8s-gvisor":
        assert env["BACKEND"] == "k8s" and env["SANDBOX_RUNTIME_CLASS"] == "gvisor"
        assert env["SANDBOX_NAMESPACE"] == NAMESPACE
        assert env["IN_CLUSTER_URL"] == "http://cli-server.cli.svc.cluster.local:8080"
    if case == "ingress-tls":
        (ingress,) = find(docs, "Ingress")
        assert ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"]
        assert ingress["spec"]["tls"][0]["hosts"] == ["cli.example.com", "*.cli.example.com"]
        assert [r["host"] for r in ingress["spec"]["rules"]] == [
            "cli.example.com",
            "*.cli.example.com",
        ]
    if case == "gateway":
        (route,) = find(docs, "HTTPRoute")
        assert route["spec"]["hostnames"] == ["cli.example.com", "*.cli.example.com"]
    if case in ("defaults", "bundled-postgresql"):
        assert find(docs, "StatefulSet", "cli-server-postgresql")
        (secret,) = find(docs, "Secret")
        assert secret["stringData"]["database-url"].startswith(
            "postgres://cliserver:test-password@cli-server-postgresql:5432/"
        )
    if case == "external-postgresql":
        assert not find(docs, "StatefulSet")
        (secret,) = find(docs, "Secret")
        assert secret["stringData"]["database-url"] == "postgres://u:p@db:5432/cli"
    if case == "existing-secret":
        assert not find(docs, "Secret") and not find(docs, "StatefulSet")
        assert env["DATABASE_URL"]["secretKeyRef"]["name"] == "mine"
    if case.startswith("replicas-3"):
        (deployment,) = find(docs, "Deployment", "cli-server")
        assert deployment["spec"]["replicas"] == 3
        (pdb,) = find(docs, "PodDisruptionBudget")
        assert pdb["spec"]["maxUnavailable"] == 1
        assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
        assert not find(docs, "StatefulSet", "cli-server")  # (the server keeps no per-pod state)
        # every replica: the same label on the sandboxes, its own address for the others
        assert env["K8S_INSTANCE"] == "cli-server.cli"
        assert env["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
        assert env["ADVERTISE_URL"] == "http://$(POD_IP):8080"
        names = [e["name"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]]
        assert names.index("POD_IP") < names.index("ADVERTISE_URL")  # (defined before use)
        # a rolling restart: the pod's grace outlasts the drain and the preStop pause
        pod = deployment["spec"]["template"]["spec"]
        assert env["DRAIN_TIMEOUT"] == "30s"
        assert pod["terminationGracePeriodSeconds"] >= 30 + 5 + 10
        assert pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    else:
        assert not find(docs, "PodDisruptionBudget")
    if case == "sso":
        assert env["GITHUB_CLIENT_ID"] == "gh" and env["OIDC_CLIENT_ID"] == "c"
        assert env["OIDC_REDIRECT_BASE_URL"] == "https://cli.example.com"


def test_replicas_need_a_shared_database(helm_bin: Path) -> None:
    """Several replicas without one PostgreSQL for all: refused, saying what to set."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(
            merged(
                BASE,
                K8S,
                {"replicaCount": 2, "postgresql": {"enabled": False}, "database": {"url": ""}},
            ),
            f,
        )
        f.flush()
        result = subprocess.run(
            [str(helm_bin), "template", "cli-server", str(CHART), "-n", NAMESPACE, "-f", f.name],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode != 0
    assert "replicaCount > 1 needs one PostgreSQL shared by every replica" in result.stderr
    assert "set database.url, or postgresql.enabled=true" in result.stderr


def test_the_internal_secret_comes_from_a_secret(helm_bin: Path) -> None:
    """INTERNAL_SECRET: from the chart's Secret when given, from existingSecret's key when
    there is one (optional: without it the replicas share one through the database), never
    written into the pod spec; unset by default."""
    assert "INTERNAL_SECRET" not in server_env(render(helm_bin, {}))
    docs = render(helm_bin, {"internalSecret": "shared-by-the-replicas"})
    ref = {"name": "cli-server", "key": "internal-secret", "optional": False}
    assert server_env(docs)["INTERNAL_SECRET"] == {"secretKeyRef": ref}
    (secret,) = find(docs, "Secret", "cli-server")
    assert secret["stringData"]["internal-secret"] == "shared-by-the-replicas"
    (deployment,) = find(docs, "Deployment", "cli-server")
    assert "shared-by-the-replicas" not in yaml.safe_dump(deployment)
    mine = merged(K8S, {"existingSecret": "mine", "postgresql": {"enabled": False}})
    ref = {"name": "mine", "key": "internal-secret", "optional": True}
    assert server_env(render(helm_bin, mine))["INTERNAL_SECRET"] == {"secretKeyRef": ref}


def test_server_pod_hardening(helm_bin: Path) -> None:
    docs = render(helm_bin, K8S)
    (deployment,) = find(docs, "Deployment", "cli-server")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    secrets = {
        name: ref["secretKeyRef"]["key"]
        for name, ref in server_env(docs).items()
        if isinstance(ref, dict) and "secretKeyRef" in ref
    }
    assert secrets["ANTHROPIC_API_KEY"] == "anthropic-api-key"  # never a literal value


def test_sandbox_network_policy(helm_bin: Path) -> None:
    """Sandbox pods: ingress from the server only, on 4096 and the preview ports (1024 and
    up, never privileged ones); egress to DNS, the server and the internet without cluster
    ranges and the metadata address."""
    docs = render(helm_bin, merged(K8S, {"sandbox": {"namespace": "sbx"}}))
    (policy,) = find(docs, "NetworkPolicy", "cli-server-sandboxes")
    assert policy["metadata"]["namespace"] == "sbx"
    assert policy["spec"]["podSelector"]["matchLabels"] == {
        "cli-server/kind": "sandbox",
        "cli-server/instance": "cli-server.cli",
    }
    (ingress,) = policy["spec"]["ingress"]
    assert ingress["ports"] == [{"port": 1024, "endPort": 65535, "protocol": "TCP"}]
    assert ingress["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == (
        "server"
    )
    dns, server, internet = policy["spec"]["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert server["ports"] == [{"port": 8080, "protocol": "TCP"}]
    v4, v6 = internet["to"]
    assert v4["ipBlock"]["cidr"] == "0.0.0.0/0"
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= set(
        v4["ipBlock"]["except"]
    )
    assert {"fc00::/7", "fe80::/10"} <= set(v6["ipBlock"]["except"])
    closed = render(helm_bin, merged(K8S, {"networkPolicy": {"internetEgress": False}}))
    (policy,) = find(closed, "NetworkPolicy", "cli-server-sandboxes")
    assert len(policy["spec"]["egress"]) == 2


def test_agent_sandbox_controller_matches_the_crd(helm_bin: Path) -> None:
    """The CRD's conversion webhook reaches the controller the chart installs; the CRD stays
    on uninstall (deleting it would delete every Sandbox)."""
    docs = render(helm_bin, {})
    (crd,) = find(docs, "CustomResourceDefinition")
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    webhook = crd["spec"]["conversion"]["webhook"]["clientConfig"]["service"]
    (service,) = find(docs, "Service", webhook["name"])
    assert service["metadata"]["namespace"] == webhook["namespace"]
    assert service["spec"]["ports"][0]["port"] == webhook.get("port", 443)
    (controller,) = find(docs, "Deployment", "agent-sandbox-controller")
    assert controller["metadata"]["namespace"] == webhook["namespace"]
    labels = controller["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (container,) = controller["spec"]["template"]["spec"]["containers"]
    assert container["ports"][0]["containerPort"] == service["spec"]["ports"][0]["targetPort"]
    assert f"--webhook-namespace={webhook['namespace']}" in container["args"]
    assert not find(render(helm_bin, {"agentSandbox": {"install": False}}), "Namespace")


def test_sandbox_pods_match_the_network_policy(helm_bin: Path) -> None:
    """The labels the backend puts on sandbox pods (with the instance the chart gives it) are
    what the sandbox NetworkPolicy selects; its server rule selects the server's pods."""
    from cli_server.sandboxes.k8s_objects import PodSettings, pod_template

    docs = render(helm_bin, K8S)
    env = server_env(docs)
    template = pod_template(env["K8S_INSTANCE"], "s", "w", PodSettings("i", "u", {}))
    (policy,) = find(docs, "NetworkPolicy", "cli-server-sandboxes")
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= template["metadata"]["labels"].items()
    (deployment,) = find(docs, "Deployment", "cli-server")
    server_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for rule in (policy["spec"]["ingress"][0]["from"][0], policy["spec"]["egress"][1]["to"][0]):
        assert rule["podSelector"]["matchLabels"].items() <= server_labels.items()
        assert rule["namespaceSelector"]["matchLabels"] == {
            "kubernetes.io/metadata.name": NAMESPACE
        }
    assert template["spec"]["containers"][0]["ports"][0]["containerPort"] == 4096


def _leaves(tree: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and path != "workspace.resources":
            yield from _leaves(value, path + ".")
        else:
            yield path


def _at(path: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = value
    for key in reversed(path.split(".")):
        out = {key: out}
    return out


ON_K8S = {"backend": "k8s"}
ON_INGRESS = {"ingress": {"enabled": True}}
GITHUB = {"oidc": {"github": {"enabled": True, "clientId": "a", "clientSecret": "b"}}}
GENERIC = {
    "oidc": {
        "generic": {"enabled": True, "issuerUrl": "https://i", "clientId": "a", "clientSecret": "b"}
    }
}
# Every value of values.yaml: (the values it acts with, a changed value).
CHANGES: dict[str, tuple[dict[str, Any], Any]] = {
    "image.repository": ({}, "registry.example/cli"),
    "image.tag": ({}, "v9"),
    "image.pullPolicy": ({}, "Always"),
    "opencode.image": ({}, "registry.example/sandbox:9"),
    "opencode.runtimeClassName": (ON_K8S, "gvisor"),
    "database.url": ({}, "postgres://u:p@db/cli"),
    "anthropicApiKey": ({}, "sk-ant-x"),
    "anthropicBaseUrl": ({}, "https://anthropic.example.com"),
    "anthropicAuthToken": ({}, "token"),
    "backend": ({}, "k8s"),
    "docker.host": ({}, "tcp://dind:2375"),
    "baseDomain": ({}, "cli.example.org"),
    "baseScheme": ({}, "http"),
    "idleTimeout": ({}, "45m"),
    "persistence.sessionStorageSize": ({}, "7Gi"),
    "persistence.userDriveSize": ({}, "70Gi"),
    "persistence.storageClassName": ({}, "fast"),
    "persistence.userDriveAccessMode": (ON_K8S, "ReadWriteMany"),
    "workspace.resources": ({}, {"limits": {"memory": "4Gi", "cpu": "2"}}),
    "agentSandbox.install": ({}, False),
    "agentSandbox.controller.image": ({}, "registry.example/controller:1"),
    "sandbox.namespace": (ON_K8S, "sbx"),
    "ingress.enabled": ({}, True),
    "ingress.className": (ON_INGRESS, "traefik"),
    "ingress.host": ({}, "other.example.com"),
    "ingress.tls": (ON_INGRESS, True),
    "ingress.clusterIssuer": ({"ingress": {"enabled": True, "tls": True}}, "other-issuer"),
    "ingress.annotations": (ON_INGRESS, {"example.com/x": "y"}),
    "gateway.enabled": ({}, True),
    "gateway.parentRefs": ({"gateway": {"enabled": True}}, [{"name": "other"}]),
    "replicaCount": ({}, 3),
    "drainTimeoutSeconds": ({}, 120),
    "existingSecret": ({}, "mine"),
    "internalSecret": ({}, "shared-by-the-replicas"),
    "oidc.redirectBaseUrl": ({}, "https://cli.example.com"),
    "oidc.github.enabled": ({"oidc": {"github": {"clientId": "a", "clientSecret": "b"}}}, True),
    "oidc.github.clientId": (GITHUB, "z"),
    "oidc.github.clientSecret": (GITHUB, "z"),
    "oidc.generic.enabled": (
        {"oidc": {"generic": {"issuerUrl": "https://i", "clientId": "a", "clientSecret": "b"}}},
        True,
    ),
    "oidc.generic.issuerUrl": (GENERIC, "https://other"),
    "oidc.generic.clientId": (GENERIC, "z"),
    "oidc.generic.clientSecret": (GENERIC, "z"),
    "postgresql.enabled": ({"database": {"url": ""}, "existingSecret": "s"}, False),
    "postgresql.image": ({}, "postgres:17"),
    "postgresql.storageSize": ({}, "20Gi"),
    "postgresql.password": ({}, "other-password"),
    "postgresql.resources": ({}, {"limits": {"memory": "1Gi"}}),
    "service.port": ({}, 9090),
    "networkPolicy.enabled": (ON_K8S, False),
    "networkPolicy.internetEgress": (ON_K8S, False),
    "networkPolicy.clusterCidrs": (ON_K8S, ["10.0.0.0/8"]),
    "resources": ({}, {"limits": {"memory": "512Mi"}}),
    "nodeSelector": ({}, {"disk": "ssd"}),
    "tolerations": ({}, [{"key": "k", "operator": "Exists"}]),
    "affinity": ({}, {"nodeAffinity": {}}),
    "podSecurityContext.runAsUser": ({}, 1001),
    "podSecurityContext.runAsGroup": ({}, 1001),
    "podSecurityContext.fsGroup": ({}, 1001),
}


def test_every_value_is_covered() -> None:
    """The table below names each value of values.yaml, and nothing else."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(_leaves(values)) == set(CHANGES)


@pytest.mark.parametrize("path", list(CHANGES))
def test_each_value_changes_the_output(helm_bin: Path, path: str) -> None:
    context, value = CHANGES[path]
    before = render_text(helm_bin, context)
    after = render_text(helm_bin, merged(context, _at(path, value)))
    assert _without_checksum(before) != _without_checksum(after), path


def _without_checksum(text: str) -> str:
    """(the pod annotation that hashes all values would differ for any change at all)"""
    return re.sub(r"checksum/settings: \S+", "", text)


# client method -> (resource, verb), for every call the k8s backend makes
CALLS = {
    "custom_object": "sandboxes",
    "secret": "secrets",
    "persistent_volume_claim": "persistentvolumeclaims",
    "event": "events",
    "pod_log": "pods/log",
}
VERBS = {"read": "get", "get": "get", "list": "list", "create": "create", "patch": "patch"}
VERBS["delete"] = "delete"


def backend_grants() -> set[tuple[str, str]]:
    """The (resource, verb) pairs the k8s backend's source calls."""
    source = (ROOT / "src" / "cli_server" / "sandboxes" / "k8s_backend.py").read_text()
    needed = set()
    for verb, kind in re.findall(r"\.(read|get|list|create|patch|delete)_namespaced_(\w+)", source):
        kind = kind.removesuffix("_status")
        needed.add((CALLS[kind], VERBS[verb]))
    if "watch.Watch()" in source:
        needed.add(("sandboxes", "watch"))
    return needed


def test_role_is_least_privilege(helm_bin: Path) -> None:
    """The server's ServiceAccount is bound only in the sandbox namespace, to exactly the
    verbs the backend calls."""
    docs = render(helm_bin, merged(K8S, {"sandbox": {"namespace": "sbx"}}))
    sa = "cli-server"
    bindings = [
        d
        for d in docs
        if d["kind"] in ("RoleBinding", "ClusterRoleBinding")
        and any(s["kind"] == "ServiceAccount" and s["name"] == sa for s in d["subjects"])
    ]
    assert [b["kind"] for b in bindings] == ["RoleBinding"]
    (binding,) = bindings
    assert binding["metadata"]["namespace"] == "sbx"
    assert binding["subjects"][0]["namespace"] == NAMESPACE
    (role,) = find(docs, "Role", binding["roleRef"]["name"])
    assert role["metadata"]["namespace"] == "sbx"
    granted = {
        (resource, verb)
        for rule in role["rules"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
        assert "resourceNames" not in rule or rule["resourceNames"]
    assert granted == backend_grants()
    assert not find(render(helm_bin, {}), "Role", sa)  # the docker backend needs none

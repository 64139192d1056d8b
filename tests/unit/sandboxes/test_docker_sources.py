"""Where a docker sandbox's Anthropic calls may come from: its running container's addresses,
read from the engine (a FAKE engine client here; the real engine is in the integration tests)."""

from __future__ import annotations

from typing import Any

import docker.errors
from attrs import define, field

from cli_server.plumbing.threads import synchronous_runner
from cli_server.sandboxes.docker_backend import DockerBackend, DockerSettings


@define
class FakeContainer:
    status: str
    attrs: dict[str, Any]
    removed: bool = False

    def stop(self, timeout: int) -> None:
        self.status = "exited"

    def remove(self, force: bool) -> None:
        self.removed = True


@define
class FakeContainers:
    """A FAKE of the SDK's ``client.containers``; counts lookups."""

    known: dict[str, FakeContainer] = field(factory=dict)
    asked: int = 0

    def get(self, name: str) -> FakeContainer:
        self.asked += 1
        if name not in self.known or self.known[name].removed:
            raise docker.errors.NotFound(name)
        return self.known[name]


class FakeVolumes:
    def get(self, name: str) -> Any:
        raise docker.errors.NotFound(name)


@define
class FakeClient:
    containers: FakeContainers = field(factory=FakeContainers)
    volumes: FakeVolumes = field(factory=FakeVolumes)


def _networks(*pairs: tuple[str, str]) -> dict[str, Any]:
    return {
        "NetworkSettings": {
            "Networks": {name: {"IPAddress": ip, "GlobalIPv6Address": ""} for name, ip in pairs}
        }
    }


def _backend(client: FakeClient) -> DockerBackend:
    settings = DockerSettings(None, "image", "http://host.docker.internal:1/v1")
    return DockerBackend(synchronous_runner, settings, "instance", None, client=client)  # type: ignore[arg-type]


def _sources(backend: DockerBackend, sandbox_id: str) -> frozenset[str]:
    d = backend.source_addresses(sandbox_id)
    found: list[frozenset[str]] = []
    d.addCallback(found.append)
    assert found, "the fake engine answers at once"
    return found[0]


def test_a_running_container_s_addresses_on_every_network() -> None:
    client = FakeClient()
    client.containers.known["cli-sbx-a"] = FakeContainer(
        "running", _networks(("cli-sandboxes-x", "172.18.0.2"), ("compose_default", "10.5.0.7"))
    )
    backend = _backend(client)
    assert _sources(backend, "a") == {"172.18.0.2", "10.5.0.7"}
    assert _sources(backend, "a") == {"172.18.0.2", "10.5.0.7"}
    assert client.containers.asked == 1  # asked once per start, not per call


def test_stopped_or_missing_containers_have_none() -> None:
    client = FakeClient()
    client.containers.known["cli-sbx-b"] = FakeContainer("exited", _networks(("n", "172.18.0.3")))
    backend = _backend(client)
    assert _sources(backend, "b") == frozenset()
    assert _sources(backend, "nobody") == frozenset()
    assert client.containers.asked == 2
    client.containers.known["cli-sbx-b"].status = "running"
    assert _sources(backend, "b") == {"172.18.0.3"}  # an empty answer is not remembered


def test_stop_and_delete_forget_the_addresses() -> None:
    client = FakeClient()
    client.containers.known["cli-sbx-c"] = FakeContainer("running", _networks(("n", "172.18.0.4")))
    backend = _backend(client)
    assert _sources(backend, "c") == {"172.18.0.4"}
    backend.stop("c")
    assert _sources(backend, "c") == frozenset()
    client.containers.known["cli-sbx-c"] = FakeContainer("running", _networks(("n", "172.18.0.9")))
    assert _sources(backend, "c") == {"172.18.0.9"}  # started again, a new address
    backend.delete("c")
    assert _sources(backend, "c") == frozenset()

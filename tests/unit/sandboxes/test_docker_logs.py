"""A docker sandbox's log: the container's output tail from the engine (a FAKE engine client
here), with the secrets of the container's own environment blanked."""

from __future__ import annotations

from typing import Any

from attrs import define, field

from cli_server.sandboxes.backend import LOG_TAIL_LINES, LogTail
from tests.unit.sandboxes.test_docker_sources import FakeClient, FakeContainer, _backend


@define
class LoggingContainer(FakeContainer):
    """A FAKE container whose ``logs`` answers like the SDK's (bytes, the last ``tail``)."""

    output: bytes = b""
    asked: list[dict[str, Any]] = field(factory=list)

    def logs(self, **options: Any) -> bytes:
        self.asked.append(options)
        lines = self.output.splitlines(keepends=True)
        return b"".join(lines[-options["tail"] :])


def _logs(client: FakeClient, sandbox_id: str) -> LogTail:
    found: list[LogTail] = []
    _backend(client).logs(sandbox_id).addCallback(found.append)
    assert found, "the fake engine answers at once"
    return found[0]


def _container(output: bytes) -> LoggingContainer:
    env = ["HOME=/home/opencode", "OPENCODE_SERVER_PASSWORD=pw-123", "ANTHROPIC_API_KEY=tok-9"]
    return LoggingContainer("exited", {"Config": {"Env": env}}, output=output)


def test_the_tail_with_the_container_s_secrets_blanked() -> None:
    client = FakeClient()
    container = _container(b"listening\nauth pw-123 with tok-9\n")
    client.containers.known["cli-sbx-a"] = container
    tail = _logs(client, "a")
    assert tail == LogTail(("listening", "auth [redacted] with [redacted]"), False)
    assert container.asked == [{"stdout": True, "stderr": True, "tail": LOG_TAIL_LINES + 1}]


def test_more_than_the_tail_says_truncated() -> None:
    client = FakeClient()
    output = b"".join(f"line {n}\n".encode() for n in range(LOG_TAIL_LINES + 50))
    client.containers.known["cli-sbx-b"] = _container(output)
    tail = _logs(client, "b")
    assert tail.truncated and len(tail.lines) == LOG_TAIL_LINES
    assert tail.lines[-1] == f"line {LOG_TAIL_LINES + 49}"


def test_a_secret_cut_by_the_byte_bound_leaves_no_half_behind() -> None:
    """The tail keeps the last 64 KiB; blanking comes first, so a cut never splits a secret."""
    client = FakeClient()
    # One line, no newline: the 64 KiB window starts inside the secret.
    output = b"pw-123" + b"y" * (64 * 1024 - 3)
    client.containers.known["cli-sbx-c"] = _container(output)
    tail = _logs(client, "c")
    assert tail.truncated and tail.lines
    assert all("123" not in line for line in tail.lines)


def test_no_container_no_log() -> None:
    assert _logs(FakeClient(), "gone") == LogTail((), False)

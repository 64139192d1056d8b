"""opencode's own UI survives losing its replica: three real `twistd cli-server` behind a real
nginx (``replicas.py``) on one PostgreSQL, a real `twistd -n cli-agent` serving a real local
`opencode serve`, and headless Chromium (``webui/e2e/replica-failover.mjs``) signed in through
nginx with opencode's UI open on the sandbox's subdomain. The replica that carries the UI's
event stream is SIGKILLed; the UI reopens the stream by itself through the survivors, events
arrive on it again and a session's page loads. Then the replica carrying the session's terminal
(the PTY WebSocket) is SIGKILLed: the UI tries to reopen it by itself (asserted); whether it
gets it back depends on the agent's tunnel being back before the UI stops retrying (printed)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from .helpers import remove_dir, scratch_dir
from .journeys import converse, require_web_ui
from .replicas import Agent, Replicas, tunnel_holder
from .test_tunnel import start_opencode


@pytest.fixture
def cluster(db_url: str) -> Iterator[tuple[Replicas, Agent, str]]:
    root = scratch_dir("cli-test-replica-ui-")
    agent = Agent(root)
    opencode, opencode_url = start_opencode(root)
    try:
        with Replicas(root, db_url) as replicas:
            for server in replicas.servers:
                server.extra = (*server.extra, f"--advertise-url={server.base}")
            replicas.start()
            yield replicas, agent, opencode_url
            agent.kill()
    finally:
        agent.kill()
        opencode.kill()
        opencode.wait(10)
        if not os.environ.get("KEEP_REPLICAS"):  # (set it to read the replicas' logs after)
            remove_dir(root)


def _wait(what: str, test: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not test():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.1)


def test_opencode_ui_reconnects_its_event_stream_after_its_replica_dies(
    cluster: tuple[Replicas, Agent, str], db_url: str
) -> None:
    require_web_ui()
    replicas, agent, opencode_url = cluster
    began = time.monotonic()
    alice = replicas.user("alice")
    workspace = agent.join(replicas, alice, opencode_url)
    server = f"http://127.0.0.1:{replicas.nginx.port}"

    sid = replicas.local_sandbox(alice, workspace["id"])
    killed: list[int] = []
    held: list[bool] = []  # whether the killed replica also held the agent's tunnel

    def answer(line: str) -> str | None:
        if line.startswith("ASK username"):
            return "alice"
        if line.startswith("ASK sandbox"):
            return sid
        if line.startswith("KILL "):
            n = replicas.replica_at(line.removeprefix("KILL ").strip())
            held.append(tunnel_holder(db_url, sid) == replicas.servers[n].base)
            proc = replicas.servers[n].proc
            assert proc is not None
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            killed.append(n)
            return None
        if line.startswith("ASK killed"):
            return "killed"
        return None

    code_, said, errors = converse("replica-failover.mjs", server, replicas.root, answer)
    assert code_ == 0, "".join(said)[-3000:] + errors[-3000:]
    assert len(killed) == 2
    print(f"(whole test {time.monotonic() - began:.1f} s; killed {killed}, held the tunnel {held})")

"""Three replicas behind nginx (``replicas.py``): any replica serves any request, an event
stream survives the loss of its replica, and a rolling restart under load fails nothing."""

from __future__ import annotations

import http.client
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import remove_dir, scratch_dir
from .replicas import Replicas, call

# twistd re-raises SIGTERM after its orderly shutdown
ORDERLY = (0, -signal.SIGTERM)


@pytest.fixture
def replicas(db_url: str) -> Iterator[Replicas]:
    root = scratch_dir("cli-test-replicas-")
    try:
        with Replicas(root, db_url) as running:
            running.start()
            yield running
    finally:
        remove_dir(root)


def test_a_sandbox_made_on_one_replica_opens_on_the_others(replicas: Replicas) -> None:
    """Created through A; its one-time link minted on B and redeemed on C (and the other way
    round); its subdomain then answers on every replica and through nginx."""
    alice = replicas.user("alice", n=0)
    sid = replicas.running_sandbox(alice, n=0)
    for via, redeem in [(1, 2), (2, 1)]:
        cookie = replicas.open(alice, sid, via=via, redeem=redeem)
        for n in (0, 1, 2, None):
            answer = replicas.get(sid, "/session", cookie, n=n)
            assert answer.status == 200, (n, answer.status, answer.body[:300])
            assert answer.json() == {"healthy": True, "path": "/session"}
    # a link is good once, whichever replica sees it again
    opened = replicas.api(1, "POST", f"/api/sandboxes/{sid}/open", alice, {}).json()["url"]
    path = opened.split(replicas.host(sid), 1)[1]
    assert call(replicas.servers[2].port, "GET", path, replicas.host(sid)).status in (302, 303)
    again = call(replicas.servers[0].port, "GET", path, replicas.host(sid))
    assert again.status not in (302, 303) and not again.cookie().startswith("cli_sandbox=")

"""What a real `twistd cli-server` leaves out of its log: the dashboard's polling (successful
API reads), a crashed opencode's last output line (its reason is the signal), and a relay
process "restarted" while the whole process group is told to stop."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from .daemon import Daemon, clean_env, twistd
from .helpers import needs_isolation
from .sandbox_shell import cmdline, descendants
from .test_crash import wait_status

KILLED = "opencode was killed by signal 9 (SIGKILL)"


def _stop_group(server: Daemon) -> None:
    """SIGTERM to the server's whole process group, as a terminal or service manager sends;
    the relay workers first (which of them acts on it first is otherwise a race)."""
    assert server.proc is not None
    workers = [p for p in descendants(server.proc.pid) if "proxy.relay.worker" in cmdline(p)]
    assert workers
    for relay in workers:
        os.kill(relay, signal.SIGTERM)
    time.sleep(0.3)  # (less than the relay's first restart delay, 1 s)
    os.killpg(server.proc.pid, signal.SIGTERM)
    server.proc.wait(30)
    if server.proc.stderr:
        server.proc.stderr.close()


def _requests(log: str, method: str, path: str) -> list[str]:
    return [line for line in log.splitlines() if f'"{method} {path} HTTP/1.1"' in line]


@needs_isolation
def test_reads_crash_and_shutdown_stay_out_of_the_log(data_dir: Path) -> None:
    """By default: API reads that succeed are not access-logged, while changes, failures and
    pages are; a SIGKILLed opencode is logged with its signal alone; SIGTERM to the process
    group stops the server without restarting its relay workers."""
    server = Daemon(data_dir)
    server.start()
    try:
        credentials = {"username": "alice", "password": "correct horse"}
        assert server.request("POST", "/api/auth/register", credentials)[0] == 201
        assert server.request("POST", "/api/auth/login", credentials)[0] == 200
        for _ in range(3):
            assert server.request("GET", "/api/workspaces")[0] == 200
        _, workspace = server.request("POST", "/api/workspaces", {"name": "w"})
        assert server.request("GET", "/api/sandboxes/not-an-id")[0] in (400, 404)
        assert server.request("GET", "/api/auth/me")[0] == 200
        made = server.request("POST", f"/api/workspaces/{workspace['id']}/sandboxes", {"name": "s"})
        sid = made[1]["id"]
        wait_status(server, sid, "running")
        assert server.proc is not None
        (opencode,) = [
            p
            for p in descendants(server.proc.pid)
            if cmdline(p).startswith("/opt/opencode/bin/opencode serve")
        ]
        os.kill(opencode, signal.SIGKILL)
        wait_status(server, sid, "failed")
        assert server.request("GET", f"/api/sandboxes/{sid}")[1]["error"] == KILLED
    finally:
        _stop_group(server)
    log = server.log.read_text()
    assert _requests(log, "GET", "/api/workspaces") == [], log[-3000:]
    assert _requests(log, "GET", "/api/auth/me") == [], log[-3000:]
    assert len(_requests(log, "POST", "/api/workspaces")) == 1, log[-3000:]
    assert len(_requests(log, "POST", "/api/auth/login")) == 1, log[-3000:]
    assert len(_requests(log, "GET", "/api/sandboxes/not-an-id")) == 1, log[-3000:]
    crashed = [line for line in log.splitlines() if f"sandbox {sid}: opencode was" in line]
    assert len(crashed) == 1 and crashed[0].endswith(f"sandbox {sid}: {KILLED}"), crashed
    assert "listening" not in crashed[0]
    assert "Received SIGTERM" in log
    assert "starting it again" not in log, log[-3000:]


def test_access_log_all_and_off(data_dir: Path) -> None:
    """--access-log all lists the reads too; ACCESS_LOG=off lists no request at all."""
    everything = Daemon(data_dir.parent / "all", "--access-log", "all")
    everything.start()
    try:
        assert everything.request("GET", "/api/auth/me")[0] == 401
        assert everything.request("GET", "/api/auth/providers")[0] == 200
    finally:
        everything.stop()
    log = everything.log.read_text()
    assert len(_requests(log, "GET", "/api/auth/providers")) == 1, log[-3000:]
    assert len(_requests(log, "GET", "/api/auth/me")) == 1, log[-3000:]

    silent = Daemon(data_dir.parent / "off", "--access-log", "off")
    silent.start()
    try:
        assert silent.request("GET", "/api/auth/me")[0] == 401
        assert silent.request("POST", "/api/auth/login", {"username": "x", "password": "y"})[0]
    finally:
        silent.stop()
    log = silent.log.read_text()
    assert "HTTP/1.1" not in log, log[-3000:]


def test_a_bad_access_log_mode_fails_at_start(data_dir: Path) -> None:
    """An unknown mode stops the start with one line naming the choices."""
    argv = [twistd(), "-n", "--pidfile=", "cli-server", "--data-dir", str(data_dir)]
    done = subprocess.run(
        [*argv, "--access-log", "some"], env=clean_env(), capture_output=True, timeout=60
    )
    assert done.returncode != 0
    said = (done.stdout + done.stderr).decode()
    assert "'some' is not an access-log mode (all, changes or off)" in said, said

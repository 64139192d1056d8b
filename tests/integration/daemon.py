"""Run `twistd cli-server` as a real subprocess, the way users do."""

from __future__ import annotations

import http.cookiejar
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .helpers import free_port, opencode_binary


def twistd() -> str:
    beside = Path(sys.executable).parent / "twistd"
    found = str(beside) if beside.exists() else shutil.which("twistd")
    assert found, "twistd is not installed"
    return found


def clean_env() -> dict[str, str]:
    drop = {"DATABASE_URL", "CLI_SERVER_DATA", "BASE_DOMAIN", "BASE_SCHEME", "SESSION_LIFETIME"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains ``text`` (e.g. a data dir): leftovers after a stop."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and int(entry.name) != os.getpid():
            found.append(int(entry.name))
    return found


class Daemon:
    """One `twistd -n cli-server` with its own data dir and loopback port."""

    def __init__(self, data_dir: Path, *extra: str, log_dir: Path | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = (log_dir or data_dir.parent) / f"{data_dir.name}.log"
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def start(self, timeout: float = 60.0) -> float:
        """Start and wait for /readyz; returns the seconds it took."""
        began = time.monotonic()
        argv = [
            twistd(),
            "-n",
            "--pidfile=",
            f"--logfile={self.log}",
            "cli-server",
            f"--opencode-bin={opencode_binary()}",
            "--data-dir",
            str(self.data_dir),
            "--listen",
            f"tcp:{self.port}:interface=127.0.0.1",
            "--base-domain",
            f"localhost:{self.port}",
            *self.extra,
        ]
        self.proc = subprocess.Popen(
            argv,
            env=clean_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        while time.monotonic() - began < timeout:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"cli-server exited: {self.proc.stderr.read()!r}"
                    f"\n{self.log.read_text()[-3000:]}"
                )
            try:
                if self.request("GET", "/readyz")[0] == 200:
                    return time.monotonic() - began
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"not ready within {timeout}s:\n{self.log.read_text()[-3000:]}")

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with self.opener.open(req, timeout=10) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read()
            return e.code, json.loads(raw) if raw else None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        if self.proc.stderr:
            self.proc.stderr.close()
        return code

"""What the browser journeys' drivers share: a built web UI, Chromium, the environment the
Node scripts in webui/e2e run in, running one to its end, and a `Daemon` for the run."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .daemon import Daemon

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "docs" / "screenshots"
WEBUI = ROOT / "webui"


def require_web_ui() -> None:
    assert (ROOT / "src/cli_server/webui_dist/index.html").exists(), (
        "the web UI is not built: npm run build -w webui"
    )


def browser_env(home: Path | str | None = None, env: dict[str, str] | None = None) -> dict:
    """PATH, CHROMIUM, HOME (when given), DARK_SHOTS (when set here) and ``env``."""
    chromium = shutil.which("chromium")
    assert chromium, "chromium is required: apt-get install chromium"
    said = {"PATH": "/usr/bin:/bin:/usr/local/bin", "CHROMIUM": chromium}
    if home is not None:
        said["HOME"] = str(home)
    if os.environ.get("DARK_SHOTS"):
        said["DARK_SHOTS"] = os.environ["DARK_SHOTS"]
    return {**said, **(env or {})}


def journey_argv(script: str, base_url: str, *args: str) -> list[str]:
    """``node e2e/<script> <base url> <screenshot dir> <args…>``, run from webui/."""
    return ["node", f"e2e/{script}", base_url, str(SHOTS), *args]


def run_journey(
    script: str,
    base_url: str,
    *args: str,
    env: dict[str, str] | None = None,
    home: Path | str | None = None,
    timeout: float = 600,
) -> str:
    """Runs one journey (killed after ``timeout``), prints what it said and how long it took,
    asserts it passed (with the tail of its output) and returns its stdout."""
    began = time.monotonic()
    result = subprocess.run(
        journey_argv(script, base_url, *args),
        cwd=WEBUI,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=browser_env(home, env),
    )
    label = " ".join([script, *args])
    print(f"\n{result.stdout}(browser run {label}: {time.monotonic() - began:.1f} s)")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def converse(
    script: str, base_url: str, home: Path, answer: Callable[[str], str | None]
) -> tuple[int, list[str], str]:
    """Runs a journey that asks the test for things by lines of its own: each line goes to
    ``answer``, and what it returns (None: nothing) goes back to the journey as a line. Killed
    after 600 s whatever it does; prints what it said and how long it took; returns its exit
    code, its lines and its stderr."""
    began = time.monotonic()
    journey = subprocess.Popen(
        journey_argv(script, base_url),
        cwd=WEBUI,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=browser_env(home),
    )
    watchdog = threading.Timer(600, journey.kill)
    watchdog.start()
    said: list[str] = []
    try:
        assert journey.stdout is not None and journey.stdin is not None
        for line in journey.stdout:
            said.append(line)
            reply = answer(line)
            if reply is not None:
                journey.stdin.write(reply + "\n")
                journey.stdin.flush()
        code = journey.wait(timeout=30)
        errors = journey.stderr.read() if journey.stderr is not None else ""
    finally:
        watchdog.cancel()
        if journey.poll() is None:
            journey.kill()
            journey.wait()
    print(f"\n{''.join(said)}(browser run {script}: {time.monotonic() - began:.1f} s)")
    return code, said, errors


@contextmanager
def running_daemon(data_dir: Path, *extra: str) -> Iterator[Daemon]:
    """A started `Daemon` with ``extra`` options, stopped on the way out."""
    server = Daemon(data_dir, *extra)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def origin(server: Daemon) -> str:
    return f"http://localhost:{server.port}"

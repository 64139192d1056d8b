"""A private, real Docker engine (its own data root and socket) for the docker tests."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs
import pytest

from .helpers import remove_dir

ROOT = Path(__file__).resolve().parents[2]

needs_dockerd = pytest.mark.skipif(
    shutil.which("dockerd") is None and not os.environ.get("CI"),
    reason="dockerd is not installed (apt-get install docker.io containerd busybox-static)",
)


@attrs.define
class Engine:
    host: str
    image: str  # the offline sandbox image (docker/build-offline-image)

    @property
    def socket(self) -> Path:
        return Path(self.host.removeprefix("unix://"))

    def docker(self, *args: str, timeout: float = 120) -> str:
        return self.run(["docker", *args], timeout=timeout)

    def attempt(
        self, argv: list[str], timeout: float = 120, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """A command against this engine, whatever its exit status."""
        return subprocess.run(
            argv,
            env={**os.environ, "DOCKER_HOST": self.host, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def run(self, argv: list[str], timeout: float = 120, env: dict[str, str] | None = None) -> str:
        """A command against this engine; its output, or an assertion that shows its stderr."""
        done = self.attempt(argv, timeout, env)
        assert done.returncode == 0, f"{argv[:3]} exited {done.returncode}: {done.stderr[-3000:]}"
        return done.stdout

    def containers(self) -> list[str]:
        return self.docker("ps", "-aq").split()


_OURS = ("DOCKER", "CLI-SBX-")  # chains the engine and our docker backend add
_BRIDGES = ("docker0", "br-", "clisbx-")


def _host_firewall() -> tuple[str, str, set[str]]:
    """The IPv4 forwarding switch, FORWARD policy and interfaces, to put back after the
    engine."""
    if _other_engines():  # what we see is theirs: the host's own is the kernel's default
        return "0", "ACCEPT", set(os.listdir("/sys/class/net"))
    forwarding = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
    listed = subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True, text=True)
    policy = (listed.stdout.splitlines() or ["-P FORWARD ACCEPT"])[0].split()[-1]
    return forwarding, policy, set(os.listdir("/sys/class/net"))


def _other_engines() -> list[int]:
    """Engines still running on this host (another test run's): they share docker0 and the
    firewall's chains with ours."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == "dockerd":
                found.append(int(entry.name))
        except OSError:
            pass
    return found


def _remove_engine_traces(forwarding: str, policy: str, interfaces: set[str]) -> None:
    """What a stopped engine leaves on the host: its chains and their jumps (and ours, made
    by the docker backend), its bridges, the forwarding switch and FORWARD policy it set.
    Left for the last one to stop while another engine runs."""
    if _other_engines():
        return
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat"):
            listed = subprocess.run([tool, "-t", table, "-S"], capture_output=True, text=True)
            rules = [ln.split() for ln in listed.stdout.splitlines()]
            for words in rules:  # jumps and rules about our bridges, in built-in chains
                if words[:1] == ["-A"] and not words[1].startswith(_OURS):
                    mention = " ".join(words[2:])
                    if any(b in mention for b in _BRIDGES) or "-j DOCKER" in mention:
                        subprocess.run([tool, "-t", table, "-D", *words[1:]], capture_output=True)
            chains = [w[1] for w in rules if w[:1] == ["-N"] and w[1].startswith(_OURS)]
            for chain in chains:
                subprocess.run([tool, "-t", table, "-F", chain], capture_output=True)
            for chain in chains:
                subprocess.run([tool, "-t", table, "-X", chain], capture_output=True)
    subprocess.run(["iptables", "-P", "FORWARD", policy], capture_output=True)
    Path("/proc/sys/net/ipv4/ip_forward").write_text(forwarding)
    for name in os.listdir("/sys/class/net"):
        # docker0 and ours are this engine's even if a crashed run left them; other br-*
        # bridges only if they are new.
        if (
            name == "docker0"
            or name.startswith("clisbx-")
            or (name.startswith("br-") and name not in interfaces)
        ):
            subprocess.run(["ip", "link", "del", name], capture_output=True)


@contextmanager
def private_engine() -> Iterator[Engine]:
    root = Path("/tmp") / f"cli-dockerd-{os.getpid()}"  # short: the socket path has a limit
    before = _host_firewall()
    root.mkdir(exist_ok=True)
    (root / "daemon.json").write_text("{}")
    sock = root / "docker.sock"
    log = open(root / "dockerd.log", "wb")
    proc = subprocess.Popen(
        [
            "dockerd",
            "--storage-driver=overlay2",
            f"--data-root={root / 'data'}",
            f"--exec-root={root / 'exec'}",
            f"--pidfile={root / 'dockerd.pid'}",
            f"--host=unix://{sock}",
            f"--config-file={root / 'daemon.json'}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    host = f"unix://{sock}"
    try:
        deadline = time.monotonic() + 60
        while (
            subprocess.run(
                ["docker", "version"], env={**os.environ, "DOCKER_HOST": host}, capture_output=True
            ).returncode
            != 0
        ):
            assert time.monotonic() < deadline, (root / "dockerd.log").read_text()[-2000:]
            assert proc.poll() is None, (root / "dockerd.log").read_text()[-2000:]
            time.sleep(0.2)
        engine = Engine(host, "")
        built = engine.run([str(ROOT / "docker" / "build-offline-image")], timeout=300)
        engine.image = built.strip().splitlines()[-1]
        yield engine
    finally:
        # Best effort each: a dead or hung engine must not keep the rest from running.
        leaving = Engine(host, "")
        try:
            left = leaving.attempt(["docker", "ps", "-aq"], timeout=60).stdout.split()
            if left:
                leaving.attempt(["docker", "rm", "-f", *left], timeout=60)
            # The engine leaves its networks' firewall rules behind when it stops.
            leaving.attempt(["docker", "network", "prune", "-f"], timeout=60)
        except subprocess.TimeoutExpired:
            pass
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()
        # Every mount below root (the engine's nsfs files under exec/netns among them).
        remove_dir(root)
        _remove_engine_traces(*before)

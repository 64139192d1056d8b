"""`twistd cli-server` and `twistd cli-agent` are found after `pip install .` and `-e .`.

The twisted plugin lives outside our package (src/twisted/plugins, a namespace without
__init__.py), which build tools drop easily; these tests install for real into fresh virtual
environments and ask twistd from an unrelated directory, so the checkout cannot hide a bug.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import remove_dir, scratch_dir

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def work() -> Iterator[Path]:
    path = scratch_dir("cli-test-pkg-")
    yield path
    remove_dir(path)


def _venv(where: Path) -> Path:
    """A fresh venv that borrows our dependencies (not our package) through a .pth file."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    site = next((where / "lib").glob("python3*/site-packages"))
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return where / "bin" / "python"


def _pip(python: Path, *args: str) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            *args,
        ],
        check=True,
        cwd=ROOT,
        timeout=300,
    )


def _twistd_help(python: Path, cwd: Path) -> str:
    code = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
    result = subprocess.run(
        [str(python), "-c", code, "--help"], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    return result.stdout + result.stderr


def _where(python: Path, cwd: Path) -> str:
    return subprocess.run(
        [str(python), "-c", "import cli_server; print(cli_server.__file__)"],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_wheel_install_finds_plugin(work: Path) -> None:
    """The wheel ships the plugin and migrations, no twisted/__init__.py, and twistd sees it."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(work / "dist"),
            str(ROOT),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = (work / "dist").glob("cli_server-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "twisted/plugins/cli_server_plugins.py" in names
    assert "twisted/__init__.py" not in names and "twisted/plugins/__init__.py" not in names
    assert "cli_server/db/migrations/0001_initial.sql" in names
    # The built web UI ships in the wheel (the README's commands build it before installing).
    assert "cli_server/webui_dist/index.html" in names, "build the UI: npm run build -w webui"
    assert any(n.startswith("cli_server/webui_dist/assets/") and n.endswith(".js") for n in names)
    assert not wheel.name.startswith("cli_server-0.0.0"), "incremental did not set the version"

    python = _venv(work / "venv")
    _pip(python, str(wheel))
    elsewhere = work / "elsewhere"
    elsewhere.mkdir()
    assert "site-packages" in _where(python, elsewhere)
    listed = _twistd_help(python, elsewhere)
    assert "cli-server" in listed and "cli-agent" in listed
    # The original's spelling: a `cli-server` command that runs the agent or the server.
    script = python.parent / "cli-server"
    agent = subprocess.run(
        [str(script), "agent", "connect", "--help"], cwd=elsewhere, capture_output=True, text=True
    )
    assert "--opencode-url" in agent.stdout and "--code" in agent.stdout, agent


def test_editable_install_finds_plugin(work: Path) -> None:
    """A developer's `pip install -e .` exposes the plugin too (the src/ layout makes it so)."""
    python = _venv(work / "venv")
    _pip(python, "-e", str(ROOT))
    elsewhere = work / "elsewhere"
    elsewhere.mkdir()
    assert _where(python, elsewhere).startswith(str(ROOT / "src"))
    listed = _twistd_help(python, elsewhere)
    assert "cli-server" in listed and "cli-agent" in listed

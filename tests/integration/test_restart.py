"""Data survives restarts, a SIGKILLed server restarts cleanly, and a stop leaves no process."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from .daemon import Daemon, clean_env, processes_mentioning, twistd

# twistd re-raises SIGTERM after its orderly shutdown, so the exit status is "killed by SIGTERM".
ORDERLY = (0, -signal.SIGTERM)


def _seed(server: Daemon) -> str:
    assert (
        server.request(
            "POST", "/api/auth/register", {"username": "keeper", "password": "password123"}
        )[0]
        == 201
    )
    assert (
        server.request(
            "POST", "/api/auth/login", {"username": "keeper", "password": "password123"}
        )[0]
        == 200
    )
    code, workspace = server.request("POST", "/api/workspaces", {"name": "survives"})
    assert code == 201
    return str(workspace["id"])


def _still_there(server: Daemon, workspace_id: str) -> None:
    server.jar.clear()
    assert server.request("GET", "/api/auth/me")[0] == 401
    assert (
        server.request(
            "POST", "/api/auth/login", {"username": "keeper", "password": "password123"}
        )[0]
        == 200
    )
    code, workspaces = server.request("GET", "/api/workspaces")
    assert code == 200 and [w["id"] for w in workspaces] == [workspace_id]


def test_restart_and_sigkill_keep_data(data_dir: Path) -> None:
    """Orderly stop, restart, SIGKILL, restart: the data is there each time, nothing leaks."""
    server = Daemon(data_dir)
    cold = server.start()
    workspace_id = _seed(server)
    assert server.stop(signal.SIGTERM) in ORDERLY
    assert processes_mentioning(str(data_dir)) == [], "orderly stop left processes behind"

    warm = server.start()
    _still_there(server, workspace_id)
    server.stop(signal.SIGKILL)

    after_kill = server.start()
    _still_there(server, workspace_id)
    assert server.stop(signal.SIGTERM) in ORDERLY
    assert processes_mentioning(str(data_dir)) == []
    print(f"\nstart to ready: cold {cold:.2f}s, warm {warm:.2f}s, after SIGKILL {after_kill:.2f}s")


def test_session_survives_restart(data_dir: Path) -> None:
    """A login made before a restart is still valid after it (sessions live in PostgreSQL)."""
    server = Daemon(data_dir)
    server.start()
    _seed(server)
    server.stop()
    server.start()
    assert server.request("GET", "/api/auth/me")[0] == 200
    assert server.request("POST", "/api/auth/logout")[0] == 204
    server.stop()
    server.start()
    assert server.request("GET", "/api/auth/me")[0] == 401
    server.stop()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--base-scheme", "ftp"], "--base-scheme: 'ftp' must be http or https"),
        (["--base-domain", "bad domain"], "--base-domain: 'bad domain' is not a host name"),
        (["--session-lifetime", "soon"], "--session-lifetime: 'soon' is not a duration"),
        (["--listen", "tcp:notaport"], "--listen 'tcp:notaport'"),
        (["--db-url", "postgres://x:y@host:port/db"], "--db-url: not a PostgreSQL connection"),
        (["--db-url", "nonsense"], "--db-url: not a PostgreSQL connection"),
    ],
)
def test_bad_option_is_one_clear_line(args: list[str], message: str) -> None:
    """A bad value stops twistd with a non-zero status and a line naming the option."""
    argv = [twistd(), "-n", "--pidfile=", "cli-server", "--listen", "tcp:0:interface=127.0.0.1"]
    result = subprocess.run(
        [*argv, *args], env=clean_env(), capture_output=True, text=True, timeout=30
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert message in output.strip().splitlines()[-1], output[-500:]
    assert "Traceback" not in output


def test_bad_environment_value_names_the_variable(data_dir: Path) -> None:
    """Values from the environment are checked like options and named by variable."""
    env = {**clean_env(), "IDLE_TIMEOUT": "30m", "BASE_SCHEME": "gopher"}
    result = subprocess.run(
        [twistd(), "-n", "--pidfile=", "cli-server"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "BASE_SCHEME: 'gopher' must be http or https" in result.stdout + result.stderr


def test_unusable_data_dir_fails_fast(data_dir: Path) -> None:
    """A data dir that cannot be created stops the server with one line and status 1."""
    data_dir.parent.mkdir(exist_ok=True)
    blocker = data_dir.parent / "a-file"
    blocker.write_text("not a directory")
    server = Daemon(blocker / "data", log_dir=data_dir.parent)
    with pytest.raises(AssertionError, match="cli-server: cannot start"):
        server.start(timeout=30)
    assert server.proc is not None and server.proc.wait(10) == 1


def test_binaries_copied_when_hidden(data_dir: Path) -> None:
    """As root, binaries in an unreachable venv are copied into the data dir and still run."""
    import pwd

    from cli_server.db.embedded import _DB_USER, _public_copy, _wheel_bin_dir
    from cli_server.plumbing.system_accounts import ensure_system_account

    data_dir.mkdir(parents=True)
    copied = _public_copy(_wheel_bin_dir(), data_dir)
    assert copied.is_relative_to(data_dir)
    assert _public_copy(_wheel_bin_dir(), data_dir) == copied  # once per version
    prefix: list[str] = []
    account = ensure_system_account(_DB_USER)
    if account is not None:  # run them as the database account, as the server will
        prefix = ["runuser", "-u", pwd.getpwuid(account.uid).pw_name, "--"]
    for tool in ("psql", "pg_ctl", "initdb", "postgres"):
        result = subprocess.run(
            [*prefix, str(copied / tool), "--version"], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0 and "PostgreSQL" in result.stdout, result.stderr

"""The agent on Linux, macOS and Windows, with the platform switched through the injected
``Platform`` (never by patching ``sys.platform``, ``os`` or ``signal``): where the credentials
live, how they are made private, which signals stop the agent, and what it says on the tunnel
when it stops."""

from __future__ import annotations

import json
import os
import re
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.python import usage
from zope.interface import implementer

from cli_server import cli
from cli_server.agent.machine import (
    EXCLUSIVE,
    Platform,
    PosixFiles,
    StopOnSignals,
    WindowsFiles,
    posix,
    run_command,
    windows,
)
from cli_server.agent.service import AgentError, Credentials, TunnelAgent
from cli_server.plumbing.threads import ThreadPoolService
from cli_server.tap.agent import Options, makeService
from cli_server.tunnel.frames import decode
from cli_server.tunnel.mux import Session
from tests.unit.agent.test_service import ANSWER, CREDENTIALS, SERVER, FakeServer

SID = "S-1-5-21-1004336348-1177238915-682003330-1001"
WHOAMI = "C:\\Windows\\System32\\whoami.exe"
ICACLS = "C:\\Windows\\System32\\icacls.exe"


class Commands:
    """Records the system commands WindowsFiles runs and answers like Windows would."""

    def __init__(self, whoami: str = f'"LAPTOP\\\\ana","{SID}"\r\n', fail: str = "") -> None:
        self.ran: list[list[str]] = []
        self.whoami = whoami
        self.fail = fail

    def __call__(self, argv: list[str]) -> str:
        self.ran.append(argv)
        if self.fail and argv[0] == self.fail:
            raise OSError(f"{argv[0]} failed (5): Access is denied.")
        return self.whoami if argv[0].endswith("\\whoami.exe") else "processed 1 files\r\n"


def on_windows(tmp_path: Path, commands: Commands | None = None, **kw: Any) -> Platform:
    environ = {"APPDATA": str(tmp_path / "Users" / "ana" / "AppData" / "Roaming")}
    files = WindowsFiles(commands or Commands())
    return windows(tmp_path / "Users" / "ana", environ, files=files, **kw)


# -- where the credentials live ------------------------------------------------------------------


def test_linux_keeps_the_originals_path(tmp_path: Path) -> None:
    """Linux has no place of its own here: ~/.cli-server/agent.json, existing or not."""
    linux = posix("linux", tmp_path)
    assert linux.own_config_dir is None
    assert linux.config_path() == tmp_path / ".cli-server" / "agent.json"


def test_macos_uses_application_support_until_the_originals_file_exists(tmp_path: Path) -> None:
    mac = posix("darwin", tmp_path)
    own = tmp_path / "Library" / "Application Support" / "cli-server" / "agent.json"
    assert mac.config_path() == own
    original = tmp_path / ".cli-server" / "agent.json"
    CREDENTIALS.save(original, mac.files)
    assert mac.config_path() == original


def test_windows_uses_appdata_until_the_originals_file_exists(tmp_path: Path) -> None:
    platform = on_windows(tmp_path)
    home = tmp_path / "Users" / "ana"
    assert platform.config_path() == home / "AppData" / "Roaming" / "cli-server" / "agent.json"
    (home / ".cli-server").mkdir(parents=True)
    (home / ".cli-server" / "agent.json").write_text("{}")
    assert platform.config_path() == home / ".cli-server" / "agent.json"


def test_windows_without_appdata_falls_back_to_the_profile(tmp_path: Path) -> None:
    platform = windows(tmp_path, {})
    assert platform.config_path() == tmp_path / "AppData" / "Roaming" / "cli-server" / "agent.json"


def test_options_default_config_is_the_platforms(tmp_path: Path) -> None:
    """`twistd cli-agent` on Windows: the first registration goes to %APPDATA%, and a later
    run without a code looks there."""
    platform = on_windows(tmp_path)
    options = Options(platform)
    options.parseOptions(["--server", SERVER, "--code", "C", "--name", "laptop"])
    assert options["config"] == platform.config_path()
    assert "AppData" in str(options["config"])
    later = Options(platform)
    with pytest.raises(usage.UsageError) as raised:
        later.parseOptions([])
    assert f"no saved credentials in {platform.config_path()}" in str(raised.value)


# -- private files -------------------------------------------------------------------------------


def test_windows_restricts_with_icacls_not_modes(tmp_path: Path) -> None:
    """On Windows the directory and the file get an access list of the current user alone
    (inheritance removed); whoami is asked once; the temp file is restricted before it is
    moved in place."""
    commands = Commands()
    platform = on_windows(tmp_path, commands)
    path = platform.config_path()
    CREDENTIALS.save(path, platform.files)
    CREDENTIALS.save(path, platform.files)
    tmp = path.with_name("agent.json.tmp")
    once = [
        [ICACLS, str(path.parent), "/inheritance:r", "/grant:r", f"*{SID}:(OI)(CI)(F)"],
        [ICACLS, str(tmp), "/inheritance:r", "/grant:r", f"*{SID}:(F)"],
    ]
    assert commands.ran == [[WHOAMI, "/user", "/fo", "csv", "/nh"], *once, *once]
    assert Credentials.load(path) == CREDENTIALS
    assert sorted(p.name for p in path.parent.iterdir()) == ["agent.json"]


def test_windows_refusal_is_one_clear_line(tmp_path: Path) -> None:
    platform = on_windows(tmp_path, Commands(fail=ICACLS))
    path = platform.config_path()
    with pytest.raises(AgentError) as raised:
        CREDENTIALS.save(path, platform.files)
    assert str(raised.value) == (
        f"cannot save the credentials in {path}: {ICACLS} failed (5): Access is denied."
    )


def test_windows_runs_its_tools_from_system32_by_full_path(tmp_path: Path) -> None:
    """whoami and icacls are never looked up in the current directory or PATH (where a
    planted whoami.exe would be found first): %SystemRoot%\\System32, from the environment
    the platform was given (any spelling of the name), else C:\\Windows."""
    files = windows(tmp_path, {"SYSTEMROOT": "D:\\WINNT"}).files
    assert isinstance(files, WindowsFiles)
    assert files.program("icacls.exe") == "D:\\WINNT\\System32\\icacls.exe"
    files = windows(tmp_path, {"SystemRoot": "E:\\Win"}).files
    assert isinstance(files, WindowsFiles)
    assert files.program("whoami.exe") == "E:\\Win\\System32\\whoami.exe"
    files = windows(tmp_path, {"APPDATA": str(tmp_path)}).files
    assert isinstance(files, WindowsFiles)
    assert files.program("whoami.exe") == WHOAMI
    commands = Commands()
    root = WindowsFiles(commands, system_root="D:\\WINNT")
    root.restrict(tmp_path / "agent.json", directory=False)
    assert [argv[0] for argv in commands.ran] == [
        "D:\\WINNT\\System32\\whoami.exe",
        "D:\\WINNT\\System32\\icacls.exe",
    ]


def test_windows_whoami_without_a_sid(tmp_path: Path) -> None:
    platform = on_windows(tmp_path, Commands(whoami="nonsense\r\n"))
    with pytest.raises(AgentError) as raised:
        CREDENTIALS.save(platform.config_path(), platform.files)
    assert "whoami /user gave no SID" in str(raised.value)


def test_posix_files_keep_modes(tmp_path: Path) -> None:
    path = tmp_path / "d" / "agent.json"
    CREDENTIALS.save(path, PosixFiles())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_posix_write_never_follows_a_planted_link(tmp_path: Path) -> None:
    """A link planted where the temp file goes (to a file the attacker wants overwritten, or
    to where they want one made) is removed, not followed: the credentials land in a new
    file of mode 0600, and the link's target is untouched or never made."""
    path = tmp_path / "d" / "agent.json"
    path.parent.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    nowhere = tmp_path / "made-by-us"
    for target in (victim, nowhere):
        (path.parent / "agent.json.tmp").symlink_to(target)
        CREDENTIALS.save(path, PosixFiles())
        assert Credentials.load(path) == CREDENTIALS
        assert not path.is_symlink() and stat.S_IMODE(path.stat().st_mode) == 0o600
        assert sorted(p.name for p in path.parent.iterdir()) == ["agent.json"]
    assert victim.read_text() == "keep me" and not nowhere.exists()


def test_posix_write_opens_exclusively_without_following_links() -> None:
    """Between the removal and the open a link planted again is refused (O_EXCL fails on any
    existing name, a link included; O_NOFOLLOW where the platform has it)."""
    assert EXCLUSIVE & os.O_EXCL and EXCLUSIVE & os.O_CREAT and not EXCLUSIVE & os.O_TRUNC
    assert EXCLUSIVE & getattr(os, "O_NOFOLLOW", 0) == getattr(os, "O_NOFOLLOW", 0)


def test_registration_on_windows(tmp_path: Path) -> None:
    """A whole registration with the Windows platform: credentials and the proxy's env file
    land in %APPDATA%\\cli-server, each restricted with icacls."""
    anthropic = {"base_url": "http://server.example:8080/anthropic", "api_key": "sk-p"}
    stub = StubTreq(FakeServer(201, json.dumps({**ANSWER, "anthropic": anthropic}).encode()))
    commands = Commands()
    platform = on_windows(tmp_path, commands)
    reactor = MemoryReactorClock()
    fatal: list[str] = []
    agent = TunnelAgent(
        reactor,
        platform.config_path(),
        server=SERVER,
        code="ABCD-1234",
        name="laptop",
        use_server_key=True,
        on_fatal=fatal.append,
        platform=platform,
        http=stub,
    )
    agent.startService()
    stub.flush()
    assert fatal == []
    folder = platform.config_path().parent
    assert sorted(p.name for p in folder.iterdir()) == ["agent.json", "anthropic.env"]
    restricted = [argv[1] for argv in commands.ran if argv[0] == ICACLS]
    assert restricted == [
        str(folder),
        str(folder / "agent.json.tmp"),
        str(folder / "anthropic.env.tmp"),
    ]
    agent.stopService()


# -- signals -------------------------------------------------------------------------------------


@implementer(IReactorFromThreads)
class Loop:
    """callFromThread as the reactor does it: later, from its loop (here: run())."""

    def __init__(self) -> None:
        self.queued: list[tuple[Callable[..., object], tuple[object, ...]]] = []

    def callFromThread(self, f: Callable[..., object], *args: object, **kw: object) -> None:
        self.queued.append((f, args))

    def run(self) -> None:
        queued, self.queued = self.queued, []
        for f, args in queued:
            f(*args)


def started(
    platform_of: Callable[[Any], Platform],
) -> tuple[MemoryReactorClock, Loop, dict[str, Any]]:
    installed: dict[str, Callable[[], None]] = {}
    reactor = MemoryReactorClock()
    loop = Loop()
    platform = platform_of(lambda name, handler: installed.__setitem__(name, handler))
    stop = StopOnSignals(reactor, loop, platform)
    stop.startService()
    assert installed == {}  # not before the reactor runs (it installs its own then)
    reactor.running = True
    for f, args, kw in reactor.whenRunningHooks:
        f(*args, **kw)
    return reactor, loop, installed


def test_windows_stops_on_ctrl_c_and_ctrl_break_and_has_no_sighup(tmp_path: Path) -> None:
    _, _, installed = started(lambda install: on_windows(tmp_path, install_signal=install))
    assert sorted(installed) == ["SIGBREAK", "SIGINT"]


def test_posix_stops_on_int_term_and_hup(tmp_path: Path) -> None:
    _, _, installed = started(lambda install: posix("darwin", tmp_path, install_signal=install))
    assert sorted(installed) == ["SIGHUP", "SIGINT", "SIGTERM"]


def test_a_signal_logs_one_line_and_stops_the_reactor_from_its_loop(tmp_path: Path) -> None:
    reactor, loop, installed = started(lambda install: on_windows(tmp_path, install_signal=install))
    with capturedLogs() as events:
        installed["SIGBREAK"]()
        assert not reactor.hasStopped  # (not from inside the signal handler)
        loop.run()
        installed["SIGINT"]()  # a second Ctrl-C while stopping adds nothing
        loop.run()
    assert reactor.hasStopped
    lines = [e["log_format"].format(**e) for e in events]
    assert lines == ["cli-agent stops: SIGBREAK received; closing the tunnel"]


def test_makeservice_wires_the_agent_and_the_signals(tmp_path: Path) -> None:
    platform = on_windows(tmp_path)
    options = Options(platform)
    options.parseOptions(["--server", SERVER, "--code", "C", "--name", "laptop"])
    root: Any = makeService(options, reactor=MemoryReactorClock())
    assert isinstance(root.getServiceNamed("agent"), TunnelAgent)
    assert isinstance(root.getServiceNamed("signals"), StopOnSignals)
    # the pool that saves the credentials (icacls on Windows) starts first and stops last
    assert [service.name for service in root] == ["files", "agent", "signals"]
    assert isinstance(root.getServiceNamed("files"), ThreadPoolService)


def test_stopping_says_goodbye_on_the_tunnel(tmp_path: Path) -> None:
    """A stopped agent sends goaway "stopping" and closes, so the server shows the sandbox
    offline at once."""
    clock = Clock()
    sent: list[bytes] = []
    closes: list[tuple[int, str]] = []
    agent = TunnelAgent(clock, tmp_path / "agent.json")
    agent.credentials = CREDENTIALS
    session = Session(clock, sent.append, lambda c, r: closes.append((c, r)), is_server=False)
    agent.connected(session)
    agent.stopService()
    goaways = [decode(m) for m in sent]
    assert [(f.type, f["code"]) for f in goaways] == [("goaway", "stopping")]
    assert closes == [(4000, "stopping")]


def test_windows_twistd_gets_no_pidfile_option() -> None:
    """Windows' twistd has no --pidfile (it would refuse the whole command line)."""
    assert cli.twistd_argv(["agent", "connect", "--code", "C"], posix=False) == [
        *["twistd", "--nodaemon", "cli-agent", "--code", "C"]
    ]
    assert cli.twistd_argv(["serve"], posix=True) == [
        *["twistd", "--nodaemon", "--pidfile=", "cli-server"]
    ]


AGENT_PATH = [
    "cli.py",
    "plumbing/nodelay.py",
    "tap/agent.py",
    "agent/service.py",
    "agent/errors.py",
    "agent/network.py",
    "agent/http_proxy.py",
    "agent/tls.py",
    "tunnel/carrier.py",
    "tunnel/frames.py",
    "tunnel/mux.py",
]
POSIX_ONLY = re.compile(
    r"\bos\.(f?chmod|f?chown|getuid|geteuid|getgid|setsid|killpg|fork|umask)\b"
    r"|\bsignal\.SIG(HUP|USR1|USR2|CHLD|QUIT)\b"
    r"|^\s*(import|from) (fcntl|pwd|grp|termios|resource)\b",
    re.M,
)


@pytest.mark.parametrize("name", AGENT_PATH)
def test_no_posix_only_calls_on_the_agents_path(name: str) -> None:
    """Only agent/machine.py may do what Windows cannot; the rest of the agent's modules
    ask it."""
    source = (Path(cli.__file__).parent / name).read_text()
    assert POSIX_ONLY.findall(source) == []
    platform = (Path(cli.__file__).parent / "agent" / "machine.py").read_text()
    assert {found[0] for found in POSIX_ONLY.findall(platform)} == {"chmod", "fchmod"}


def test_the_env_file_hint_fits_the_shell(tmp_path: Path) -> None:
    """anthropic.env is loaded with sh on Linux and macOS, with PowerShell on Windows."""
    env = Path("/home/ana/.cli-server/anthropic.env")
    assert posix("linux", tmp_path).with_env_file(env, "opencode serve") == (
        "set -a; . '/home/ana/.cli-server/anthropic.env'; set +a; opencode serve"
    )
    line = on_windows(tmp_path).with_env_file(env, "opencode serve")
    assert line == (
        "Get-Content '/home/ana/.cli-server/anthropic.env' | ForEach-Object { $n, $v = $_ "
        "-split '=', 2; Set-Item \"env:$n\" $v }; opencode serve"
    )


def test_run_command_reports_failures_in_one_line(tmp_path: Path) -> None:
    """What WindowsFiles runs icacls and whoami with, tried here with Python itself."""
    assert run_command([sys.executable, "-c", "print('S-1-5-21')"]) == "S-1-5-21\n"
    with pytest.raises(OSError) as raised:
        run_command([sys.executable, "-c", "import sys; sys.stderr.write('denied\\n'); exit(5)"])
    assert str(raised.value) == f"{sys.executable} failed (5): denied"
    with pytest.raises(OSError) as raised:
        run_command([str(tmp_path / "no-such-icacls")])
    assert str(raised.value).startswith(f"{tmp_path / 'no-such-icacls'} could not run: ")

"""What the agent needs to know about the machine it runs on, as one injected value.

Linux, macOS and Windows differ for the agent in four things only: where its credentials
live, how a file is made readable by its owner alone, which signals mean "stop", and where
TLS finds the CAs to trust when nobody said. ``current()`` answers for this machine; tests
build ``posix()`` or ``windows()`` for another one, so no code on the agent's path asks
``sys.platform`` or calls a POSIX-only function itself.

Where the credentials live: ``~/.cli-server/agent.json`` (the original's path) whenever that
file exists, and always on Linux; otherwise, on macOS ``~/Library/Application
Support/cli-server/agent.json`` and on Windows ``%APPDATA%\\cli-server\\agent.json`` — read
from there and written there at registration.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path, PureWindowsPath
from typing import Protocol

from attrs import define, field, frozen
from twisted.application.service import Service
from twisted.internet.interfaces import IReactorCore, IReactorFromThreads
from twisted.logger import Logger

CONFIG_NAME = "agent.json"
ICACLS_TIMEOUT = 10.0
SYSTEM_ROOT = "C:\\Windows"  # when the environment has no SystemRoot
# (no O_NOFOLLOW on Windows, where PosixFiles is not used)
EXCLUSIVE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)


class PrivateFiles(Protocol):
    """Owner-only files and directories, the way the platform does it."""

    def make_dir(self, path: Path) -> None: ...

    def write(self, path: Path, text: str) -> None: ...


@frozen
class PosixFiles:
    """Modes: 0700 directories, 0600 files."""

    def make_dir(self, path: Path) -> None:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)  # (mkdir's mode is cut by the umask, and an old one keeps its own)

    def write(self, path: Path, text: str) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.unlink(missing_ok=True)  # (a leftover, or a link planted there: only it goes)
        # A new file or nothing: a link planted again meanwhile is refused, never followed.
        fd = os.open(tmp, EXCLUSIVE, 0o600)
        os.fchmod(fd, 0o600)  # (the umask may have cut the mode further)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)


def run_command(argv: list[str]) -> str:
    """Run a short system command and return what it printed; a failure raises OSError."""
    try:
        # (errors="replace": Windows prints in the console's code page, and only the ASCII
        # SID and exit status matter)
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=ICACLS_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as e:
        raise OSError(f"{argv[0]} could not run: {e}") from None
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        raise OSError(f"{argv[0]} failed ({done.returncode}): {said[0] if said else ''}")
    return done.stdout


@define(eq=False)
class WindowsFiles:
    """NTFS has no modes (``os.chmod`` only flips the read-only flag), so the file's access
    list is replaced: inherited entries removed (``icacls /inheritance:r``) and one entry left
    that gives the current user, named by SID from ``whoami /user``, full control. The temp
    file is restricted before ``os.replace`` moves it in place, and a move keeps its list.
    Both programs are run from ``%SystemRoot%\\System32`` by full path, never looked up in
    the current directory or ``PATH``."""

    _run: Callable[[list[str]], str] = run_command
    _system_root: str = SYSTEM_ROOT
    _sid: str | None = field(default=None, init=False)

    def program(self, name: str) -> str:
        return str(PureWindowsPath(self._system_root, "System32", name))

    def user_sid(self) -> str:
        if self._sid is None:
            # one CSV line: "machine\user","S-1-5-21-..."
            whoami = [self.program("whoami.exe"), "/user", "/fo", "csv", "/nh"]
            line = self._run(whoami).strip()
            sid = line.rsplit(",", 1)[-1].strip().strip('"')
            if not sid.startswith("S-"):
                raise OSError(f"whoami /user gave no SID: {line!r}")
            self._sid = sid
        return self._sid

    def restrict(self, path: Path, directory: bool) -> None:
        grant = f"*{self.user_sid()}:" + ("(OI)(CI)(F)" if directory else "(F)")
        self._run([self.program("icacls.exe"), str(path), "/inheritance:r", "/grant:r", grant])

    def make_dir(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.restrict(path, directory=True)

    def write(self, path: Path, text: str) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.unlink(missing_ok=True)  # (an old one could carry someone else's entries)
        tmp.write_text(text)
        self.restrict(tmp, directory=False)
        os.replace(tmp, path)


def install_signal(name: str, handler: Callable[[], None]) -> None:
    signal.signal(getattr(signal, name), lambda signum, frame: handler())


@frozen
class Platform:
    """The few platform facts and operations the agent uses."""

    name: str  # sys.platform's spelling: "linux", "darwin", "win32"
    home: Path
    own_config_dir: Path | None  # the platform's place for an application's files, if any
    files: PrivateFiles
    stop_signals: tuple[str, ...]
    default_ca_file: Path | None = None  # when OpenSSL has no system store to find
    system_store: Callable[[], list[bytes]] | None = None  # DER certificates (Windows)
    install_signal: Callable[[str, Callable[[], None]], None] = install_signal

    def with_env_file(self, env: Path, command: str) -> str:
        """A shell line that runs ``command`` with the variables of ``env`` (NAME=value lines)."""
        if self.name == "win32":  # PowerShell
            return (
                f"Get-Content '{env}' | ForEach-Object {{ $n, $v = $_ -split '=', 2; "
                f'Set-Item "env:$n" $v }}; {command}'
            )
        return f"set -a; . '{env}'; set +a; {command}"

    def config_path(self) -> Path:
        """The original's path if that file exists (or the platform has no place of its
        own), else the platform's place."""
        original = self.home / ".cli-server" / CONFIG_NAME
        if self.own_config_dir is None or original.exists():
            return original
        return self.own_config_dir / CONFIG_NAME


def posix(
    name: str,
    home: Path,
    *,
    default_ca_file: Path | None = None,
    install_signal: Callable[[str, Callable[[], None]], None] = install_signal,
) -> Platform:
    own = home / "Library" / "Application Support" / "cli-server" if name == "darwin" else None
    signals = ("SIGINT", "SIGTERM", "SIGHUP")
    return Platform(
        name,
        home,
        own,
        PosixFiles(),
        signals,
        default_ca_file=default_ca_file,
        install_signal=install_signal,
    )


def windows(
    home: Path,
    environ: Mapping[str, str],
    *,
    files: PrivateFiles | None = None,
    system_store: Callable[[], list[bytes]] | None = None,
    install_signal: Callable[[str, Callable[[], None]], None] = install_signal,
) -> Platform:
    appdata = environ.get("APPDATA")
    own = Path(appdata) / "cli-server" if appdata else home / "AppData" / "Roaming" / "cli-server"
    # (Windows' own environment names are case-insensitive; a Mapping given here may not be)
    root = next((v for k, v in environ.items() if k.upper() == "SYSTEMROOT" and v), SYSTEM_ROOT)
    files = files or WindowsFiles(system_root=root)
    # SIGBREAK: Ctrl-Break, and what a console service wrapper sends to stop us
    return Platform(
        "win32",
        home,
        own,
        files,
        ("SIGINT", "SIGBREAK"),
        system_store=system_store,
        install_signal=install_signal,
    )


SERVER_AUTH = "1.3.6.1.5.5.7.3.1"  # the extended key usage "TLS server authentication"


def windows_store() -> list[bytes]:
    """The Windows certificate store's CAs trusted for servers (as the ssl module loads them
    for its default context), so a corporate CA installed there is trusted here too."""
    import ssl

    enumerate_store = getattr(ssl, "enum_certificates", None)  # (only on Windows)
    if enumerate_store is None:
        return []
    found = []
    for store in ("ROOT", "CA"):
        for der, encoding, usage in enumerate_store(store):
            if encoding == "x509_asn" and (usage is True or SERVER_AUTH in usage):
                found.append(der)
    return found


def macos_bundle() -> Path | None:
    """The OpenSSL inside the macOS wheels looks for no system CAs: certifi's bundle if it
    is installed, else the one macOS keeps in /etc/ssl/cert.pem."""
    try:
        import certifi
    except ImportError:
        system = Path("/etc/ssl/cert.pem")
        return system if system.exists() else None
    return Path(certifi.where())


def current() -> Platform:
    home = Path.home()
    if sys.platform == "win32":
        return windows(home, os.environ, system_store=windows_store)
    if sys.platform == "darwin":
        return posix("darwin", home, default_ca_file=macos_bundle())
    return posix(sys.platform, home)


@define(eq=False)
class StopOnSignals(Service):
    """Ctrl-C, a service manager's stop, or a closed terminal: one line in the log, then the
    reactor stops, which stops the agent (and it says goodbye on the tunnel)."""

    _reactor: IReactorCore
    _from_signal: IReactorFromThreads  # (the same reactor)
    _platform: Platform
    _log = Logger()
    stopped_by: str | None = field(default=None, init=False)

    def startService(self) -> None:
        super().startService()
        # after the reactor's own handlers are in (they go in during startup)
        self._reactor.callWhenRunning(self._install)

    def _install(self) -> None:
        for name in self._platform.stop_signals:
            self._platform.install_signal(name, partial(self._received, name))

    def _received(self, name: str) -> None:
        # (a signal handler runs between any two bytecodes: stop from the reactor's loop)
        self._from_signal.callFromThread(self._stop, name)

    def _stop(self, name: str) -> None:
        if self.stopped_by is not None:
            return
        self.stopped_by = name
        self._log.info("cli-agent stops: {signal} received; closing the tunnel", signal=name)
        if self._reactor.running:
            self._reactor.stop()

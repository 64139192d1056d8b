"""A sandbox's opencode output on disk: size-capped, rotated once, its secrets blanked.

The process backend appends what opencode writes (stdout and stderr) and what went wrong
around it; members read the tail from the dashboard. It lives in the sandbox's directory
under the data dir, outside anything mounted into the sandbox, so it survives a server
restart and a pause, and goes with the sandbox's deletion.
"""

from __future__ import annotations

import os
from pathlib import Path

from attrs import define, field

from cli_server.sandboxes.backend import LOG_TAIL_BYTES, LogTail, tail_lines

LOG_NAME = "opencode.log"
_LONGEST_LINE = 16 * 1024  # a line longer than this is written in pieces


@define(eq=False)
class OutputLog:
    """Appends whole lines to ``path``; past ``limit`` bytes the file becomes ``path.1``
    (replacing the one before), so at most twice ``limit`` is kept."""

    path: Path
    secrets: tuple[str, ...] = ()
    limit: int = 256 * 1024
    _partial: bytes = field(default=b"", init=False)

    def note(self, text: str) -> None:
        """A line of our own (start, exit), told apart from opencode's by its dashes."""
        self.flush()
        self._append(f"--- {text} ---\n".encode())

    def write(self, data: bytes) -> None:
        # Whole lines only, so that a secret split between two reads is still found.
        data = self._partial + data
        complete, newline, self._partial = data.rpartition(b"\n")
        if newline:
            self._append(complete + newline)
        if len(self._partial) > _LONGEST_LINE:
            # Written in pieces; blanked first and a secret's length short of the end kept
            # back, so no piece ends in the first half of a secret.
            data = self._blank(self._partial)
            keep = max((len(s.encode()) for s in self.secrets if s), default=1) - 1
            self._partial = data[len(data) - keep :] if keep else b""
            self._append(data[: len(data) - keep] + b"\n")

    def flush(self) -> None:
        if self._partial:
            partial, self._partial = self._partial, b""
            self._append(partial + b"\n")

    def _blank(self, data: bytes) -> bytes:
        for secret in self.secrets:
            if secret:
                data = data.replace(secret.encode(), b"[redacted]")
        return data

    def _append(self, data: bytes) -> None:
        data = self._blank(data)
        try:
            if self.path.exists() and self.path.stat().st_size + len(data) > self.limit:
                self.path.replace(self.path.with_name(self.path.name + ".1"))
            # Only the server's account reads it: it is what a sandbox said, not for others.
            descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(descriptor, "ab") as out:
                out.write(data)
        except OSError:
            pass  # (a full or vanished disk costs the log, never the sandbox)


def read_tail(path: Path) -> LogTail:
    """The end of the log (its rotated half first); empty if there is none."""
    older = path.with_name(path.name + ".1")
    data = b""
    cut = older.exists()  # (rotated: what came before it is gone)
    for part in (older, path):
        try:
            with part.open("rb") as f:
                size = f.seek(0, 2)
                f.seek(max(0, size - LOG_TAIL_BYTES))
                data += f.read()
                cut = cut or size > LOG_TAIL_BYTES
        except OSError:
            continue
    return tail_lines(data.decode("utf-8", "replace"), cut=cut)

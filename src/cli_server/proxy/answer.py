"""Reading a sandbox's answer and writing it on to the browser, re-framed.

``AnswerReader`` reads one answer at a time from a keep-alive sandbox connection with
httptools (llhttp, Node's parser, in C) and tells its ``client`` what it found;
``reframe`` is what the browser gets of the answer's head (``clean_upgrade_answer`` of a
WebSocket upgrade's). All are pure (no Twisted): the relay
workers (``relay/connection.py``) read answers with them, and the WebSocket splice cleans
its 101 with the same header rule (``hygiene.kept_answer_header``) as twisted.web's path.
"""

from __future__ import annotations

from enum import Enum
from typing import Protocol

import httptools

from cli_server.proxy.hygiene import ANSWER_LINES, HOP_BY_HOP, kept_answer_header
from cli_server.proxy.request_head import MAX_HEAD, head_end


class Framing(Enum):
    NONE = "none"  # 204, 304: no body
    LENGTH = "length"  # Content-Length
    CHUNKED = "chunked"
    UNTIL_CLOSE = "until-close"  # neither: the body ends when the connection does


class Read(Enum):
    MORE = "more"  # the answer goes on
    ENDED = "ended"  # it is complete: ``reusable`` says whether another may follow
    BROKEN = "broken"  # not HTTP (or a callback failed): the connection must end


class AnswerSink(Protocol):
    """What a reader tells, as it reads: the browser connection it serves."""

    def response_head(
        self, code: int, reason: bytes, headers: list[tuple[bytes, bytes]]
    ) -> Framing:
        """Relays the head; says how the body is framed (it reads the headers anyway)."""

    def response_body(self, data: bytes) -> None: ...


class AnswerReader:
    """One sandbox connection's answers, one request at a time."""

    def __init__(self) -> None:
        self.client: AnswerSink | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._headers: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self._framing = Framing.NONE
        self._in_head = False  # between a message's start and its headers' end (no trailers)
        self.answered = False  # the final (not 1xx) head is in
        self._ended = False  # the final answer is complete
        self._extra = False  # bytes after it: the connection is not reused
        self._keep_alive = False

    def begin(self, client: AnswerSink) -> None:
        """A request went out on behalf of ``client``: its answer goes there."""
        self.client = client
        self.answered = self._ended = self._extra = False

    def feed(self, data: bytes) -> Read:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if not self._ended:
                return Read.BROKEN
            self._extra = True  # garbage after a whole answer: that answer still stands
        return Read.ENDED if self._ended else Read.MORE

    @property
    def reusable(self) -> bool:
        """After ENDED: the connection may carry another request."""
        return self._keep_alive and not self._extra

    # httptools callbacks, called from feed_data

    def on_message_begin(self) -> None:
        if self._ended:
            self._extra = True  # a second answer to one request: ignored, and no reuse
            return
        self._headers, self._reason, self._in_head = [], b"", True

    def on_status(self, reason: bytes) -> None:
        if not self._ended:
            self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head and not self._ended:
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._ended:
            return
        self._in_head = False
        code = self._parser.get_status_code()
        headers, self._headers = self._headers, []
        reason, self._reason = self._reason, b""
        if 100 <= code < 200:
            if code == 101:  # we never ask for an upgrade here
                raise UnaskedUpgrade()
            return  # 100 Continue, 103 Early Hints: informational, not relayed
        self.answered = True
        assert self.client is not None
        self._framing = self.client.response_head(code, reason or b"-", headers)

    def on_body(self, data: bytes) -> None:
        if self.client is not None and not self._ended:
            self.client.response_body(data)

    def on_message_complete(self) -> None:
        if self.answered and not self._ended:
            self._ended = True
            # (asked now: once feed_data returns, the parser has moved on to the next message)
            keep = self._framing is not Framing.UNTIL_CLOSE and self._parser.should_keep_alive()
            self._keep_alive = keep


class UnaskedUpgrade(Exception):
    """A 101 answer to a request that asked for no upgrade."""


# Not copied from the sandbox's head: hop by hop, or framing (we frame the body ourselves).
_FRAMING_OR_HOP = frozenset(HOP_BY_HOP | {b"content-length"})


def reframe(code: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> tuple[bytes, Framing]:
    """The sandbox's head as the browser gets it (status line and header lines, without
    Connection or the blank line): minus hop-by-hop headers, unsafe cookies and CORS grants
    (plus ours, ``hygiene.ANSWER_HEADERS``), its body to be sent with a Content-Length or
    chunked (the framing)."""
    out = [b"HTTP/1.1 %d %s\r\n" % (code, reason), ANSWER_LINES]
    chunked = length = None
    for name, value in headers:
        lower = name.lower()
        if lower in _FRAMING_OR_HOP:
            if lower == b"transfer-encoding":  # (llhttp: chunked if it is the last coding)
                chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
            elif lower == b"content-length":
                length = value
            continue
        if not kept_answer_header(lower, value):
            continue
        out += (name, b": ", value, b"\r\n")
    if code in (204, 304):
        framing = Framing.NONE
    elif chunked:
        framing = Framing.CHUNKED
    elif chunked is False:
        framing = Framing.UNTIL_CLOSE  # another transfer coding: llhttp reads to the close
    elif length is not None:
        framing = Framing.LENGTH  # (llhttp has checked it: one value, digits)
        out += (b"content-length: ", length, b"\r\n")
    else:
        framing = Framing.UNTIL_CLOSE
    if framing is Framing.CHUNKED or framing is Framing.UNTIL_CLOSE:
        out.append(b"transfer-encoding: chunked\r\n")
    return b"".join(out), framing


LAST_CHUNK = b"0\r\n\r\n"


def upgrade_answer(buffered: bytes) -> tuple[int | None, bytes, bytes]:
    """Reads the answer to a WebSocket upgrade from what the sandbox sent so far: interim
    heads (``100``, ``103``) are dropped; a ``101`` or a final head comes back cleaned
    (``clean_upgrade_answer``), with the bytes after it: (status, cleaned head, rest). While
    the head is incomplete: (None, b"", what was read); if it cannot be read line by line,
    or is too long: (-1, b"", b"") (the connection must end: no byte after a head nobody
    cleaned may reach the browser)."""
    while True:
        end = head_end(buffered)
        if end < 0:
            if len(buffered) > MAX_HEAD or b"\n\n" in buffered:
                return -1, b"", b""
            return None, b"", buffered
        code = buffered[9:12]  # (of ``HTTP/1.1 NNN``: clean_upgrade_answer checks the rest)
        cleaned = clean_upgrade_answer(buffered[:end]) if end <= MAX_HEAD else None
        if len(code) != 3 or not code.isdigit() or buffered[12:13] not in (b" ", b"\r"):
            cleaned = None
        if cleaned is None:
            return -1, b"", b""
        buffered = buffered[end:]
        if int(code) == 101 or int(code) >= 200:
            return int(code), cleaned, buffered


def clean_upgrade_answer(raw: bytes) -> bytes | None:
    """The head of a sandbox's answer to a WebSocket upgrade (``raw``, through the blank
    line) as the browser gets it: every header kept as sent (a 101 needs its Upgrade and
    Connection) but unsafe cookies and CORS grants, as on every answer (``reframe``); None if
    it is not a head we can read line by line (the splice then ends)."""
    lines = raw[:-4].split(b"\r\n")
    if not lines[0].startswith(b"HTTP/1.1 ") or b"\n" in raw[:-4].replace(b"\r\n", b""):
        return None
    out = [lines[0], b"\r\n", ANSWER_LINES]
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or b"\r" in line:
            return None  # (obs-fold, a space before the colon, a stray CR)
        if kept_answer_header(name.lower(), value.strip()):
            out += (line, b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)

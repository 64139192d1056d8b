"""The tunnel's frame codec (protocol versions 1 and 2; see docs/tunnel.md).

Every WebSocket binary message is one frame: ``[4-byte big-endian header length][JSON
header][raw payload]``. The header is a JSON object with ``t`` (the frame type), ``s`` (the
stream id; 0 for frames about the whole tunnel) and the type's own fields. Only ``data``
frames carry a payload. Anything malformed raises ``ProtocolError``, never anything else.

Version 2 adds two optional fields: ``ports`` in ``hello`` (the ports the agent shares) and
``port`` in ``open`` (connect the stream to that shared port instead of opencode). A hello
without ``ports`` is a version-1 hello, so an agent that shares nothing still talks to a
version-1 server.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from attrs import field, frozen

VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
PORTS_VERSION = 2  # the first version whose tunnels carry shared ports
SHARED_PORTS = range(1024, 65536)  # (the preview ports; the agent refuses opencode's own)
MAX_SHARED_PORTS = 64
MAX_PAYLOAD = 16 * 1024
MAX_MESSAGE = 32 * 1024 - 1
MAX_HEADER = 4096
MAX_STREAM_ID = 2**31 - 1
MAX_WINDOW = 2**30
_LENGTH = struct.Struct(">I")

# type -> {field: python type}; every field listed is required, others are refused.
_FIELDS: dict[str, dict[str, type]] = {
    # tunnel-wide (s == 0)
    "hello": {"versions": list, "agent": str},
    "welcome": {"version": int, "sandbox_id": str},
    "ping": {"n": int},
    "pong": {"n": int},
    "goaway": {"code": str, "message": str},
    # per stream (s > 0)
    "open": {"window": int},
    "opened": {"window": int},
    "data": {},
    "credit": {"n": int},
    "end": {},
    "reset": {"reason": str},
}
# type -> {field: python type} that may be left out (version 2's additions).
_OPTIONAL: dict[str, dict[str, type]] = {"hello": {"ports": list}, "open": {"port": int}}
TUNNEL_TYPES = frozenset({"hello", "welcome", "ping", "pong", "goaway"})


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame."""


@frozen
class Frame:
    type: str
    stream: int = 0
    fields: dict[str, Any] = field(factory=dict)
    payload: bytes = b""

    def __getitem__(self, name: str) -> Any:
        return self.fields[name]


def encode(type: str, stream: int = 0, payload: bytes = b"", **fields: object) -> bytes:
    header = json.dumps({"t": type, "s": stream, **fields}, separators=(",", ":")).encode()
    if (
        len(header) > MAX_HEADER
        or len(payload) > MAX_PAYLOAD
        or 4 + len(header) + len(payload) > MAX_MESSAGE
    ):
        raise ValueError("frame too large")
    return _LENGTH.pack(len(header)) + header + payload


_DATA_HEAD = b'{"t":"data","s":'


def decode(message: bytes) -> Frame:
    fast = _decode_data(message)
    return fast if fast is not None else decode_full(message)


def _decode_data(message: bytes) -> Frame | None:
    """Data frames as we encode them, without a JSON parse (they are most of the traffic).
    Anything else, or anything unusual, takes the full path."""
    if len(message) > MAX_MESSAGE or len(message) < 4:
        return None
    (length,) = _LENGTH.unpack_from(message)
    if not 18 <= length <= 27 or len(message) < 4 + length or message[4:20] != _DATA_HEAD:
        return None
    if message[3 + length] != 0x7D:  # "}"
        return None
    digits = message[20 : 3 + length]
    if not digits.isdigit() or digits[0] == 0x30:  # (JSON forbids leading zeros; 0 is no stream)
        return None
    stream = int(digits)
    payload = message[4 + length :]
    if stream > MAX_STREAM_ID or len(payload) > MAX_PAYLOAD:
        return None
    return Frame("data", stream, {}, payload)


def decode_full(message: bytes) -> Frame:
    """The full JSON path ``decode`` takes for all but the usual data frames (public so a
    test can check that both paths agree)."""
    if len(message) < 4:
        raise ProtocolError("frame shorter than its length prefix")
    if len(message) > MAX_MESSAGE:
        raise ProtocolError("frame larger than 32 KiB")
    (length,) = _LENGTH.unpack_from(message)
    if length > MAX_HEADER or 4 + length > len(message):
        raise ProtocolError("bad header length")
    try:
        header = json.loads(message[4 : 4 + length])
    except (ValueError, RecursionError):
        raise ProtocolError("header is not JSON") from None
    if not isinstance(header, dict):
        raise ProtocolError("header is not a JSON object")
    type, stream = header.pop("t", None), header.pop("s", None)
    if not isinstance(type, str) or type not in _FIELDS:
        raise ProtocolError("unknown frame type")
    if not _is_int(stream) or not 0 <= stream <= MAX_STREAM_ID:
        raise ProtocolError("bad stream id")
    if (stream == 0) != (type in TUNNEL_TYPES):
        raise ProtocolError(f"{type} frame on the wrong stream")
    wanted = _FIELDS[type]
    optional = _OPTIONAL.get(type, {})
    if not set(wanted) <= set(header) <= set(wanted) | set(optional):
        raise ProtocolError(f"{type} frame with wrong fields")
    for name, kind in {**wanted, **optional}.items():
        if name not in header:
            continue
        value = header[name]
        if kind is int and not _is_int(value):
            raise ProtocolError(f"{type}.{name} is not an integer")
        if kind is not int and not isinstance(value, kind):
            raise ProtocolError(f"{type}.{name} has the wrong type")
    payload = bytes(message[4 + length :])
    if payload and type != "data":
        raise ProtocolError(f"{type} frame with a payload")
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError("payload larger than 16 KiB")
    if type in ("open", "opened") and not 0 < header["window"] <= MAX_WINDOW:
        raise ProtocolError("bad window")
    if type == "credit" and not 0 < header["n"] <= MAX_WINDOW:
        raise ProtocolError("bad credit")
    if type == "hello" and not all(_is_int(v) for v in header["versions"]):
        raise ProtocolError("bad version list")
    if type == "hello" and "ports" in header and not _is_port_list(header["ports"]):
        raise ProtocolError("bad port list")
    if type == "open" and "port" in header and header["port"] not in SHARED_PORTS:
        raise ProtocolError("bad port")
    return Frame(type, stream, header, payload)


def _is_port_list(ports: list[Any]) -> bool:
    return (
        len(ports) <= MAX_SHARED_PORTS
        and all(_is_int(p) and p in SHARED_PORTS for p in ports)
        and len(set(ports)) == len(ports)
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)

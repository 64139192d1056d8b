"""The tunnel frame codec: round trips, and nothing but ProtocolError for anything malformed."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli_server.tunnel.frames import (
    MAX_HEADER,
    MAX_MESSAGE,
    MAX_PAYLOAD,
    MAX_STREAM_ID,
    MAX_WINDOW,
    TUNNEL_TYPES,
    Frame,
    ProtocolError,
    decode,
    encode,
)

ALL_TYPES: tuple[str, ...] = ("hello", "welcome", "ping", "pong", "goaway")
ALL_TYPES += ("open", "opened", "data", "credit", "end", "reset")

# Short enough that no header can pass MAX_HEADER even when every character is \u-escaped.
texts = st.text(max_size=60)
json_ints = st.integers(min_value=-(2**63), max_value=2**63)
stream_ids = st.integers(min_value=1, max_value=MAX_STREAM_ID)
windows = st.integers(min_value=1, max_value=MAX_WINDOW)
ports = st.integers(min_value=1024, max_value=65535)


def _frame(type: str, stream: int = 0, payload: bytes = b"", **fields: Any) -> Frame:
    return Frame(type, stream, fields, payload)


valid_frames: st.SearchStrategy[Frame] = st.one_of(
    st.builds(
        lambda v, a: _frame("hello", versions=v, agent=a),
        st.lists(json_ints, max_size=20),
        texts,
    ),
    st.builds(lambda v, s: _frame("welcome", version=v, sandbox_id=s), json_ints, texts),
    st.builds(lambda n: _frame("ping", n=n), json_ints),
    st.builds(lambda n: _frame("pong", n=n), json_ints),
    st.builds(lambda c, m: _frame("goaway", code=c, message=m), texts, texts),
    st.builds(
        lambda v, a, p: _frame("hello", versions=v, agent=a, ports=p),
        st.lists(json_ints, max_size=20),
        texts,
        st.lists(ports, max_size=64, unique=True),
    ),
    st.builds(lambda s, w: _frame("open", s, window=w), stream_ids, windows),
    st.builds(lambda s, w, p: _frame("open", s, window=w, port=p), stream_ids, windows, ports),
    st.builds(lambda s, w: _frame("opened", s, window=w), stream_ids, windows),
    st.builds(lambda s, p: _frame("data", s, p), stream_ids, st.binary(max_size=MAX_PAYLOAD)),
    st.builds(lambda s, n: _frame("credit", s, n=n), stream_ids, windows),
    st.builds(lambda s: _frame("end", s), stream_ids),
    st.builds(lambda s, r: _frame("reset", s, reason=r), stream_ids, texts),
)


def encoded(frame: Frame) -> bytes:
    return encode(frame.type, frame.stream, frame.payload, **frame.fields)


def raw(header: Any, payload: bytes = b"", length: int | None = None) -> bytes:
    """A message with any header (not necessarily a valid one) and length prefix."""
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack(">I", len(body) if length is None else length) + body + payload


def check_decoded(frame: Frame) -> None:
    """What decode returns is always a frame the codec itself would produce."""
    assert frame.type in ALL_TYPES
    assert (frame.stream == 0) == (frame.type in TUNNEL_TYPES)
    assert 0 <= frame.stream <= MAX_STREAM_ID
    assert len(frame.payload) <= MAX_PAYLOAD
    assert frame.type == "data" or frame.payload == b""
    assert decode(encoded(frame)) == frame


# -- round trips ---------------------------------------------------------------------------


@given(valid_frames)
def test_round_trip(frame: Frame) -> None:
    """Every valid frame decodes to exactly what was encoded, within the size limits."""
    message = encoded(frame)
    assert len(message) <= MAX_MESSAGE
    (length,) = struct.unpack_from(">I", message)
    assert length <= MAX_HEADER
    assert decode(message) == frame


def test_round_trip_every_type() -> None:
    """Each frame type round-trips (a fixed example per type, so none can be skipped)."""
    examples = [
        _frame("hello", versions=[1, 2], agent="cli-agent 1.0"),
        _frame("welcome", version=1, sandbox_id="sb-1"),
        _frame("ping", n=7),
        _frame("pong", n=7),
        _frame("goaway", code="replaced", message="another agent connected"),
        _frame("open", 3, window=MAX_WINDOW),
        _frame("opened", MAX_STREAM_ID, window=1),
        _frame("data", 3, b"\x00\xff" * (MAX_PAYLOAD // 2)),
        _frame("data", 3, b""),
        _frame("credit", 3, n=MAX_WINDOW),
        _frame("end", 3),
        _frame("reset", 3, reason="refused"),
    ]
    assert {f.type for f in examples} == set(ALL_TYPES)
    for frame in examples:
        assert decode(encoded(frame)) == frame


def test_data_prefix_concatenation() -> None:
    """A data frame is its empty-payload encoding followed by the payload (mux relies on it)."""
    prefix = encode("data", 42)
    assert decode(prefix + b"abc") == _frame("data", 42, b"abc")
    assert decode(prefix + b"x" * MAX_PAYLOAD).payload == b"x" * MAX_PAYLOAD


def test_frame_item_access() -> None:
    """frame[name] reads a field; a missing one is a KeyError."""
    frame = decode(encode("credit", 5, n=9))
    assert frame["n"] == 9
    with pytest.raises(KeyError):
        frame["window"]


long_texts = st.builds(
    lambda c, n, tail: c * n + tail, st.characters(), st.integers(0, 5000), st.text(max_size=20)
)


@given(st.sampled_from(["goaway", "reset", "hello"]), long_texts)
def test_encode_refuses_what_decode_would_refuse(type: str, text: str) -> None:
    """encode either raises ValueError or makes a frame that decodes back to the same thing
    (a header over MAX_HEADER, which decode refuses, must not get out)."""
    frame = {
        "goaway": _frame("goaway", code="c", message=text),
        "reset": _frame("reset", 1, reason=text),
        "hello": _frame("hello", versions=[1], agent=text),
    }[type]
    try:
        message = encoded(frame)
    except ValueError:
        return
    assert decode(message) == frame


def test_encode_size_limits() -> None:
    """encode refuses payloads over 16 KiB and headers over MAX_HEADER."""
    with pytest.raises(ValueError):
        encode("data", 1, b"x" * (MAX_PAYLOAD + 1))
    with pytest.raises(ValueError):
        encode("goaway", code="x", message="y" * MAX_HEADER)
    encode("data", 1, b"x" * MAX_PAYLOAD)  # the largest payload is fine


# -- anything malformed is a ProtocolError, never anything else ------------------------------


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_garbage_bytes(message: bytes) -> None:
    """Arbitrary bytes decode to a valid frame or raise ProtocolError."""
    try:
        frame = decode(message)
    except ProtocolError:
        return
    check_decoded(frame)


json_values = st.recursive(
    st.none() | st.booleans() | json_ints | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
field_names = st.sampled_from(
    ["versions", "agent", "version", "sandbox_id", "n", "code", "message", "window", "reason"]
    + ["ports", "port"]
)


@settings(max_examples=300)
@given(
    st.one_of(st.sampled_from(ALL_TYPES), json_values),
    st.one_of(st.integers(min_value=-2, max_value=3), st.just(MAX_STREAM_ID + 1), json_values),
    st.dictionaries(field_names | st.text(max_size=5), json_values | windows, max_size=4),
    st.binary(max_size=40),
)
def test_garbage_headers(type: Any, stream: Any, fields: dict[str, Any], payload: bytes) -> None:
    """JSON headers with arbitrary contents decode to a valid frame or raise ProtocolError."""
    try:
        frame = decode(raw({"t": type, "s": stream, **fields}, payload))
    except ProtocolError:
        return
    check_decoded(frame)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(valid_frames, st.data())
def test_mutations(frame: Frame, data: st.DataObject) -> None:
    """Truncating, flipping, inserting or deleting bytes of a valid frame: a valid frame or a
    ProtocolError, nothing else."""
    message = bytearray(encoded(frame))
    kind = data.draw(st.sampled_from(["truncate", "flip", "insert", "delete"]))
    at = data.draw(st.integers(min_value=0, max_value=len(message)))
    if kind == "truncate":
        del message[at:]
    elif kind == "flip" and at < len(message):
        message[at] = data.draw(st.integers(min_value=0, max_value=255))
    elif kind == "insert":
        message[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    else:
        del message[at : at + data.draw(st.integers(min_value=1, max_value=8))]
    try:
        decoded = decode(bytes(message))
    except ProtocolError:
        return
    check_decoded(decoded)


@given(valid_frames)
def test_every_truncation(frame: Frame) -> None:
    """Every prefix of a valid frame is either a valid frame or a ProtocolError; the prefixes
    that cut into the length prefix or the header are always refused."""
    message = encoded(frame)
    (length,) = struct.unpack_from(">I", message)
    for end in range(len(message)):
        if end >= 4 + length and frame.type == "data":
            # a shorter data payload is still a valid data frame
            assert decode(message[:end]).payload == frame.payload[: end - 4 - length]
            continue
        with pytest.raises(ProtocolError):
            decode(message[:end])


# -- specific rejections -------------------------------------------------------------------


def reject(message: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode(message)


def test_short_or_long_messages() -> None:
    """Shorter than the length prefix, or 32 KiB and more, is refused."""
    for n in range(4):
        reject(b"\x00" * n, "shorter than its length prefix")
    big = encode("data", 1, b"x" * MAX_PAYLOAD)
    padded = raw({"t": "data", "s": 1, "pad": "x" * (MAX_MESSAGE - len(big))}, b"x" * MAX_PAYLOAD)
    assert len(padded) > MAX_MESSAGE
    reject(padded, "larger than 32 KiB")
    reject(b"\x00" * (MAX_MESSAGE + 1), "larger than 32 KiB")
    reject(b"\x00" * (32 * 1024), "larger than 32 KiB")


def test_message_exactly_at_the_limit() -> None:
    """A message of exactly MAX_MESSAGE bytes is still judged on its contents."""
    header = json.dumps({"t": "data", "s": 1}).encode()
    message = raw(header, b"x" * (MAX_MESSAGE - 4 - len(header)))
    assert len(message) == MAX_MESSAGE
    reject(message, "payload larger than 16 KiB")  # only the size of the payload is wrong


def test_bad_header_length() -> None:
    """A header length beyond the message or beyond MAX_HEADER is refused."""
    header = json.dumps({"t": "end", "s": 1}).encode()
    reject(raw(header, length=len(header) + 1), "bad header length")
    reject(raw(header, length=2**32 - 1), "bad header length")
    reject(raw(header, b"x" * (MAX_HEADER + 10), length=MAX_HEADER + 1), "bad header length")
    long_header = {"t": "goaway", "s": 0, "code": "c", "message": "m" * MAX_HEADER}
    reject(raw(long_header), "bad header length")
    # a header length that cuts the JSON short makes it not JSON
    reject(raw(header, length=len(header) - 1), "not JSON")
    reject(raw(header, length=0), "not JSON")


def test_not_json() -> None:
    """Headers that are not JSON (or not UTF-8, or nested too deeply) are refused."""
    for header in [b"{", b"nope", b"\xff\xfe\x00", b"{'t': 'end'}", b"[" * 4000, b'{"t":1}}']:
        reject(raw(header), "not JSON")


def test_not_an_object() -> None:
    """JSON that is not an object is refused."""
    for header in [[], [1, 2], "end", 3, None, True]:
        reject(raw(header), "not a JSON object")


def test_unknown_or_missing_type() -> None:
    """A missing, non-string or unknown t is refused."""
    for header in [{"s": 1}, {"t": None, "s": 1}, {"t": 5, "s": 1}, {"t": "bogus", "s": 1}]:
        reject(raw(header), "unknown frame type")
    reject(raw({"t": ["end"], "s": 1}), "unknown frame type")
    reject(raw({"t": "END", "s": 1}), "unknown frame type")


def test_bad_stream_id() -> None:
    """A missing, non-integer, boolean, negative or too large s is refused."""
    for stream in [None, "1", 1.0, True, False, -1, MAX_STREAM_ID + 1, [1]]:
        reject(raw({"t": "end", "s": stream}), "bad stream id")
    reject(raw({"t": "end"}), "bad stream id")


def test_wrong_stream_for_type() -> None:
    """Tunnel frames must be on stream 0 and stream frames must not be."""
    reject(raw({"t": "ping", "s": 1, "n": 1}), "ping frame on the wrong stream")
    reject(raw({"t": "goaway", "s": 5, "code": "c", "message": "m"}), "on the wrong stream")
    reject(raw({"t": "end", "s": 0}), "end frame on the wrong stream")
    reject(raw({"t": "data", "s": 0}, b"x"), "data frame on the wrong stream")
    reject(raw({"t": "open", "s": 0, "window": 1}), "open frame on the wrong stream")


def test_missing_or_extra_fields() -> None:
    """Every field listed for a type is required, and no others are allowed."""
    reject(raw({"t": "hello", "s": 0, "versions": [1]}), "hello frame with wrong fields")
    reject(raw({"t": "welcome", "s": 0, "version": 1}), "wrong fields")
    reject(raw({"t": "ping", "s": 0}), "ping frame with wrong fields")
    reject(raw({"t": "ping", "s": 0, "n": 1, "x": 1}), "ping frame with wrong fields")
    reject(raw({"t": "end", "s": 1, "reason": "x"}), "end frame with wrong fields")
    reject(raw({"t": "data", "s": 1, "n": 1}), "data frame with wrong fields")
    reject(raw({"t": "credit", "s": 1, "window": 1}), "credit frame with wrong fields")
    reject(raw({"t": "open", "s": 1}), "open frame with wrong fields")


def test_wrong_field_types() -> None:
    """Integers must be integers (not booleans, floats or strings); strings and lists too."""
    reject(raw({"t": "ping", "s": 0, "n": True}), r"ping\.n is not an integer")
    reject(raw({"t": "pong", "s": 0, "n": 1.0}), r"pong\.n is not an integer")
    reject(raw({"t": "credit", "s": 1, "n": "5"}), r"credit\.n is not an integer")
    reject(raw({"t": "open", "s": 1, "window": False}), r"open\.window is not an integer")
    reject(raw({"t": "opened", "s": 1, "window": None}), r"opened\.window is not an integer")
    reject(raw({"t": "welcome", "s": 0, "version": True, "sandbox_id": "x"}), "not an integer")
    reject(raw({"t": "welcome", "s": 0, "version": 1, "sandbox_id": 1}), "wrong type")
    reject(raw({"t": "reset", "s": 1, "reason": None}), r"reset\.reason has the wrong type")
    reject(raw({"t": "goaway", "s": 0, "code": 1, "message": "m"}), "wrong type")
    reject(raw({"t": "hello", "s": 0, "versions": 1, "agent": "a"}), "wrong type")
    reject(raw({"t": "hello", "s": 0, "versions": {"1": 1}, "agent": "a"}), "wrong type")
    reject(raw({"t": "hello", "s": 0, "versions": [1], "agent": ["a"]}), "wrong type")
    for versions in [[True], [1, "2"], [1.0], [None], [[1]]]:
        reject(raw({"t": "hello", "s": 0, "versions": versions, "agent": "a"}), "version list")


def test_payload_only_on_data() -> None:
    """Only data frames may carry a payload, and at most 16 KiB of it."""
    reject(raw({"t": "end", "s": 1}, b"x"), "end frame with a payload")
    reject(raw({"t": "ping", "s": 0, "n": 1}, b"\x00"), "ping frame with a payload")
    reject(raw({"t": "credit", "s": 1, "n": 1}, b"x"), "credit frame with a payload")
    reject(raw({"t": "data", "s": 1}, b"x" * (MAX_PAYLOAD + 1)), "payload larger than 16 KiB")
    assert decode(raw({"t": "data", "s": 1}, b"x" * MAX_PAYLOAD)).payload == b"x" * MAX_PAYLOAD


def test_bad_window_and_credit() -> None:
    """Windows and credits must be in 1..MAX_WINDOW."""
    for value in [0, -1, MAX_WINDOW + 1, 2**64]:
        reject(raw({"t": "open", "s": 1, "window": value}), "bad window")
        reject(raw({"t": "opened", "s": 1, "window": value}), "bad window")
        reject(raw({"t": "credit", "s": 1, "n": value}), "bad credit")
    assert decode(raw({"t": "credit", "s": 1, "n": MAX_WINDOW}))["n"] == MAX_WINDOW
    assert decode(raw({"t": "open", "s": 1, "window": 1}))["window"] == 1


def test_nan_and_huge_numbers() -> None:
    """NaN, infinities and integers too long to parse are refused as ProtocolError."""
    reject(raw(b'{"t":"ping","s":0,"n":NaN}'), "not an integer")
    reject(raw(b'{"t":"credit","s":1,"n":Infinity}'), "not an integer")
    reject(raw(b'{"t":"ping","s":0,"n":' + b"9" * 4090 + b"}"), "not JSON|bad header")


def _both(message: bytes) -> tuple[Any, Any]:
    """What the data-frame fast path and the full JSON path make of ``message``."""
    from cli_server.tunnel import frames

    outcomes = []
    for decoder in (frames.decode, frames.decode_full):
        try:
            outcomes.append(decoder(message))
        except ProtocolError:
            outcomes.append("refused")
    return outcomes[0], outcomes[1]


@given(
    st.one_of(
        st.integers(min_value=-5, max_value=2**32).map(str),
        st.text(alphabet="0123456789+-. e", min_size=0, max_size=12),
    ),
    st.binary(max_size=64),
    st.sampled_from(["", " ", "}", ',"x":1']),
)
def test_the_data_fast_path_agrees_with_the_json_path(
    stream: str, payload: bytes, tail: str
) -> None:
    header = ('{"t":"data","s":' + stream + tail + "}").encode()
    fast, slow = _both(struct.pack(">I", len(header)) + header + payload)
    assert fast == slow

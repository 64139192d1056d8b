"""What a sandbox's Anthropic token may call, and the arithmetic of budget holds (pure)."""

from __future__ import annotations

import json

import pytest

from cli_server.anthropic.policy import (
    BadCall,
    Estimate,
    admits,
    allowed,
    charge,
    estimate,
    spends,
)
from cli_server.anthropic.usage import Usage, UsageMeter


@pytest.mark.parametrize(
    ("method", "path"),
    [
        (b"POST", b"/v1/messages"),
        (b"POST", b"/v1/messages/count_tokens"),
        (b"GET", b"/v1/models"),
        (b"GET", b"/v1/models/claude-sonnet-4-6"),
        (b"GET", b"/v1/models/claude-3-5-sonnet@20241022"),
        (b"POST", b"/v1/messages?beta=true"),
        (b"GET", b"/v1/models?limit=20&after_id=claude-x"),
    ],
)
def test_the_messages_api_passes(method: bytes, path: bytes) -> None:
    assert allowed(method, path)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        (b"POST", b"/v1/messages/batches"),
        (b"GET", b"/v1/messages/batches"),
        (b"GET", b"/v1/messages/batches/msgbatch_1/results"),
        (b"POST", b"/v1/files"),
        (b"GET", b"/v1/files"),
        (b"DELETE", b"/v1/files/file_1"),
        (b"GET", b"/v1/organizations/api_keys"),
        (b"POST", b"/v1/complete"),
        (b"GET", b"/v1/messages"),
        (b"PUT", b"/v1/messages"),
        (b"DELETE", b"/v1/models/claude"),
        (b"POST", b"/v1/models"),
        (b"POST", b"/v1/messages/"),
        (b"POST", b"/v1//messages"),
        (b"POST", b"/v1/messages/../files"),
        (b"POST", b"/v1/%6dessages"),
        (b"POST", b"/V1/messages"),
        (b"GET", b"/v1/models/../files"),
        (b"GET", b"/v1/models/a/b"),
        (b"GET", b"/v1/models/%2e%2e"),
        (b"GET", b"/v1/models/"),
        (b"GET", b"/v1/models/" + b"a" * 200),
        (b"POST", b""),
        (b"POST", b"/messages"),
        (b"POST", b"/v1/files?x=/v1/messages"),
        (b"POST", b"/v1/messages?/../../v1/files"),
        (b"POST", b"/v1/messages#/../files"),
        (b"GET", b"/v1/models?q=a b"),
    ],
)
def test_everything_else_is_refused(method: bytes, path: bytes) -> None:
    assert not allowed(method, path)


def test_only_creating_a_message_spends() -> None:
    assert spends(b"POST", b"/v1/messages")
    assert spends(b"POST", b"/v1/messages?beta=true")
    assert not spends(b"POST", b"/v1/messages/count_tokens")
    assert not spends(b"GET", b"/v1/models")


def test_the_estimate_bounds_input_by_size_and_output_by_max_tokens() -> None:
    body = json.dumps({"model": "m", "max_tokens": 64, "messages": []}).encode()
    held = estimate(body)
    assert held == Estimate(64, len(body))
    assert held.tokens == 64 + len(body)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b"{}",
        b'{"max_tokens": 0}',
        b'{"max_tokens": -5}',
        b'{"max_tokens": "64"}',
        b'{"max_tokens": 64.0}',
        b'{"max_tokens": true}',
        b'{"max_tokens": null}',
        # the last key wins here, maybe the first upstream: what we hold must be what is sent
        b'{"max_tokens": 1, "max_tokens": 64000}',
        b'{"max_tokens": 1, "messages": [{"role": "user", "role": "assistant"}]}',
    ],
)
def test_calls_that_cannot_be_bounded_are_refused(body: bytes) -> None:
    with pytest.raises(BadCall):
        estimate(body)


def test_a_nested_max_tokens_is_not_the_call_s() -> None:
    body = b'{"tools": [{"input_schema": {"max_tokens": 1}}], "max_tokens": 5000}'
    assert estimate(body).max_tokens == 5000


def test_admission() -> None:
    assert admits(None, 10**12, 10**12)  # no budget
    assert admits(100, 0, 0)
    assert admits(100, 60, 39)
    assert not admits(100, 60, 40)  # the rest is held by running calls
    assert not admits(100, 100, 0)
    assert not admits(0, 0, 0)


def test_parallel_admissions_overshoot_by_at_most_one_call() -> None:
    """Hold-then-settle with holds at least the real cost: whatever the interleaving of
    starts and ends, what is spent stays under budget plus one call."""
    budget, held, cost = 100, Estimate(64, 40), 60  # each call really costs 60 <= 104
    spent, holding, admitted = 0, 0, 0
    for _round in range(50):
        # everyone tries at once, then all admitted calls end
        started = 0
        for _caller in range(25):
            if admits(budget, spent, holding):
                holding += held.tokens
                started += 1
        admitted += started
        spent += started * cost
        holding = 0
    assert admitted == 2 and spent == 120
    assert spent <= budget + held.max_tokens


def test_charges() -> None:
    seen = Usage("claude", 11, 7, 3, 2)
    held = Estimate(64, 500)
    assert charge(seen, held, 200, complete=True, began=True) == seen
    assert charge(seen, held, 429, complete=False, began=True).total == 0
    assert charge(seen, held, 500, complete=True, began=True).total == 0
    cut = charge(Usage("claude", 11, 1, 3, 2), held, 200, complete=False, began=True)
    assert (cut.input_tokens, cut.output_tokens) == (11, 64)  # output unknown: its worst
    blind = charge(Usage(), held, 200, complete=False, began=False)
    assert (blind.input_tokens, blind.output_tokens) == (500, 64)


def test_the_meter_knows_when_it_saw_a_reply_s_whole_usage() -> None:
    start = {"type": "message_start", "message": {"model": "m", "usage": {"input_tokens": 9}}}
    delta = {"type": "message_delta", "usage": {"output_tokens": 4}}
    meter = UsageMeter(streaming=True)
    meter.feed(b"event: message_start\ndata: " + json.dumps(start).encode() + b"\n\n")
    assert _seen(meter) == (True, False)
    meter.feed(b"data: " + json.dumps(delta).encode() + b"\n\n")
    assert _seen(meter) == (True, True) and meter.finish().total == 13
    plain = UsageMeter(streaming=False)
    plain.feed(
        json.dumps({"model": "m", "usage": {"input_tokens": 2, "output_tokens": 3}}).encode()
    )
    assert plain.finish().total == 5 and plain.complete
    cut = UsageMeter(streaming=False)
    cut.feed(b'{"model": "m", "usage": {"input_')
    cut.finish()
    assert not cut.complete and not cut.began


def _seen(meter: UsageMeter) -> tuple[bool, bool]:
    return meter.began, meter.complete

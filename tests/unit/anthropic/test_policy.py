"""What a sandbox's Anthropic token may call, and the arithmetic of budget holds (pure)."""

from __future__ import annotations

import functools
import json
from typing import Any

import pytest
from twisted.internet.task import Clock

from cli_server.anthropic.policy import (
    MAX_TOKENS,
    BadCall,
    Estimate,
    RateLimit,
    admits,
    allowed,
    charge,
    estimate,
    safe_betas,
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
        b'{"max_tokens": 2147483648}',
        b'{"max_tokens": 9223372036854775808}',  # (the database refused this one with a 500)
        b"[" * 100_000 + b"]" * 100_000,  # deeper than the parser goes
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


def _call(**fields: Any) -> bytes:
    return json.dumps({"model": "m", "max_tokens": 1, "messages": [], **fields}).encode()


def _user(*blocks: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": list(blocks)}]


_TEXT: dict[str, Any] = {"type": "text", "text": "deep"}
_URL_IMAGE = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (_call(messages=_user(_URL_IMAGE)), "'url' source"),
        (
            _call(messages=_user({"type": "document", "source": {"type": "url", "url": "x"}})),
            "'document' block with a 'url' source",
        ),
        (
            _call(messages=_user({"type": "document", "source": {"type": "file", "file_id": "f"}})),
            "'file' source",
        ),
        (_call(messages=_user({"type": "image", "file_id": "f"})), "file_id"),
        (_call(messages=_user({"type": "container_upload", "file_id": "f"})), "file_id"),
        (_call(messages=_user({"type": "image", "source": {"type": ["url"]}})), "source"),
        (_call(messages=_user({"type": "image", "source": {"url": "x"}})), "'None' source"),
        (
            _call(
                messages=_user({"type": "tool_result", "tool_use_id": "t", "content": [_URL_IMAGE]})
            ),
            "'url' source",
        ),
        (
            _call(
                messages=_user(
                    {
                        "type": "document",
                        "source": {"type": "content", "content": [_URL_IMAGE]},
                    }
                )
            ),
            "'url' source",
        ),
        (
            _call(
                messages=[
                    {"role": "user", "content": "hi"},
                    {
                        "role": "assistant",
                        "content": [
                            {
                                "type": "web_fetch_tool_result",
                                "tool_use_id": "t",
                                "content": {
                                    "type": "web_fetch_result",
                                    "content": {
                                        "type": "document",
                                        "source": {"type": "url", "url": "x"},
                                    },
                                },
                            }
                        ],
                    },
                ]
            ),
            "'url' source",
        ),
        (_call(system=[{"type": "text", "text": "a"}, _URL_IMAGE]), "'url' source"),
        (_call(tools=[{"type": "web_search_20250305", "name": "web_search"}]), "web_search"),
        (_call(tools=[{"type": "web_fetch_20250910", "name": "web_fetch"}]), "web_fetch"),
        (_call(tools=[{"type": "code_execution_20250825", "name": "c"}]), "code_execution"),
        (_call(tools=[{"type": "bash_20250124", "name": "bash"}]), "bash"),
        (_call(tools=[{"type": "mcp_toolset", "mcp_server_name": "s"}]), "mcp_toolset"),
        (_call(tools=[{"type": {"x": 1}, "name": "odd"}]), "tool"),
        (_call(mcp_servers=[{"type": "url", "url": "https://x", "name": "s"}]), "mcp_servers"),
        (_call(container="container_1"), "container"),
        (_call(container={"skills": [{"type": "anthropic", "skill_id": "pdf"}]}), "container"),
        (
            _call(
                messages=_user(
                    functools.reduce(
                        lambda inner, _: {"type": "tool_result", "content": [inner]},
                        range(30),
                        _TEXT,
                    )
                )
            ),
            "nested too deeply",
        ),
    ],
)
def test_input_anthropic_would_fetch_itself_is_refused(body: bytes, named: str) -> None:
    """What the body does not carry cannot be bounded by its size: refused, saying what."""
    with pytest.raises(BadCall) as refused:
        estimate(body)
    assert named in str(refused.value), refused.value


def test_input_carried_in_the_body_passes() -> None:
    """Inline images and documents, custom tools (whatever their schemas name), tool
    results and the echo of earlier server tool calls are in the body: they pass."""
    inline = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "x"}}
    body = _call(
        system=[{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}],
        tools=[
            {
                "name": "read",
                "input_schema": {
                    "type": "object",
                    "properties": {"file_id": {"type": "string"}, "source": {"type": "url"}},
                },
            },
            {"type": "custom", "name": "edit", "input_schema": {"type": "object"}},
        ],
        messages=[
            {"role": "user", "content": [inline, {"type": "text", "text": "hi"}]},
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "t",
                        "name": "read",
                        "input": {"file_id": "f", "source": {"type": "url"}},
                    }
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t", "content": [inline]},
                    {
                        "type": "document",
                        "source": {"type": "text", "media_type": "text/plain", "data": "d"},
                    },
                    {
                        "type": "document",
                        "source": {"type": "content", "content": [{"type": "text", "text": "c"}]},
                    },
                ],
            },
        ],
        container=None,
        mcp_servers=[],
    )
    assert estimate(body) == Estimate(1, len(body))


def test_max_tokens_up_to_the_limit_is_held() -> None:
    body = _call(max_tokens=MAX_TOKENS)
    assert estimate(body).tokens == MAX_TOKENS + len(body)


def test_only_betas_that_keep_input_in_the_body_pass() -> None:
    sent = [
        b"files-api-2025-04-14, prompt-caching-2024-07-31",
        b"mcp-client-2025-04-04,interleaved-thinking-2025-05-14 ,code-execution-2025-05-22",
        b"web-fetch-2025-09-10,skills-2025-10-02,\xff,,fine-grained-tool-streaming-2025-05-14",
    ]
    assert safe_betas(sent) == (
        b"fine-grained-tool-streaming-2025-05-14,interleaved-thinking-2025-05-14,"
        b"prompt-caching-2024-07-31"
    )
    assert safe_betas([b"files-api-2025-04-14"]) is None
    assert safe_betas([]) is None


def test_free_calls_are_rate_limited_per_sandbox() -> None:
    """A bucket of ``rate`` that refills at ``rate`` a minute, per sandbox, on the clock given."""
    clock = Clock()
    limit = RateLimit(3)
    assert [limit.take("a", clock.seconds()) for _ in range(4)] == [True, True, True, False]
    assert limit.take("b", clock.seconds())  # each sandbox has its own
    clock.advance(19)
    assert not limit.take("a", clock.seconds())  # a third of a minute: one call back, almost
    clock.advance(1.5)
    assert limit.take("a", clock.seconds())
    assert not limit.take("a", clock.seconds())
    clock.advance(3600)
    assert [limit.take("a", clock.seconds()) for _ in range(4)] == [True, True, True, False]

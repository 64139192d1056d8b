"""A FAKE Anthropic API (the real one cannot be reached here): ``POST /v1/messages`` answers
in JSON or as a server-sent event stream, records what it received, and can fail on demand."""

from __future__ import annotations

import json
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

REPLY = "Hello from the fake Anthropic upstream."


class FakeAnthropic(Resource):
    isLeaf = True

    def __init__(self, reactor: Any) -> None:
        super().__init__()
        self.reactor = reactor
        self.seen: list[dict[str, Any]] = []
        self.fail_with: tuple[int, dict[str, str], dict[str, Any]] | None = None
        self.stream_pause = 0.0  # seconds between the first event and the rest
        self.usage = {
            "input_tokens": 11,
            "output_tokens": 7,
            "cache_creation_input_tokens": 3,
            "cache_read_input_tokens": 2,
        }

    def render_POST(self, request: Any) -> Any:
        raw = request.content.read()
        headers = {
            k.decode().lower(): [v.decode() for v in vs]
            for k, vs in request.requestHeaders.getAllRawHeaders()
        }
        body = json.loads(raw or b"{}")
        self.seen.append({"path": request.path.decode(), "headers": headers, "body": body})
        if self.fail_with is not None:
            status, extra, payload = self.fail_with
            request.setResponseCode(status)
            for name, value in extra.items():
                request.setHeader(name.encode(), value.encode())
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(payload).encode()
        model = body.get("model", "claude-test")
        text = REPLY
        if body.get("stream"):
            return self._stream(request, model, text)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(
            {
                "id": "msg_fake",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": self.usage,
            }
        ).encode()

    def _stream(self, request: Any, model: str, text: str) -> Any:
        request.setHeader(b"content-type", b"text/event-stream")

        def event(kind: str, data: dict[str, Any]) -> bytes:
            return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()

        start_usage = {**self.usage, "output_tokens": 1}
        request.write(
            event(
                "message_start",
                {
                    "message": {
                        "id": "msg_fake",
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": start_usage,
                    }
                },
            )
        )

        def rest() -> None:
            request.write(
                event(
                    "content_block_start",
                    {"index": 0, "content_block": {"type": "text", "text": ""}},
                )
            )
            request.write(
                event(
                    "content_block_delta",
                    {"index": 0, "delta": {"type": "text_delta", "text": text}},
                )
            )
            request.write(event("content_block_stop", {"index": 0}))
            request.write(
                event(
                    "message_delta",
                    {
                        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                        "usage": {"output_tokens": self.usage["output_tokens"]},
                    },
                )
            )
            request.write(event("message_stop", {}))
            request.finish()

        later = self.reactor.callLater(self.stream_pause, rest)
        request.notifyFinish().addErrback(lambda _: later.cancel() if later.active() else None)
        return NOT_DONE_YET


def serve(reactor: Any) -> tuple[FakeAnthropic, Any]:
    fake = FakeAnthropic(reactor)
    port = reactor.listenTCP(0, Site(fake), interface="127.0.0.1")
    return fake, port

"""GET /metrics: Prometheus text for scrapers on this host."""

from __future__ import annotations

import pytest_twisted

from .conftest import Running
from .test_sandboxes_api import team, wait_status


@pytest_twisted.ensureDeferred
async def test_metrics(app: Running) -> None:
    """Sandboxes by status and proxied requests are exported; forwarded requests get 404."""
    people, wid = await team(app)
    sid = (
        await people["developer"].call("POST", f"/api/workspaces/{wid}/sandboxes", {"name": "m"})
    ).body["id"]
    await wait_status(people["developer"], sid, "running")
    await app.server.root.getServiceNamed("metrics").run_now()
    client = app.client()
    reply = await client.call("GET", "/metrics")
    assert reply.code == 200
    text = reply.body.decode() if isinstance(reply.body, bytes) else str(reply.body)
    assert 'cli_sandboxes{status="running"} 1.0' in text
    assert "cli_anthropic_tokens_total" in text or "cli_anthropic_tokens" in text
    hidden = await client.call("GET", "/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
    assert hidden.code == 404

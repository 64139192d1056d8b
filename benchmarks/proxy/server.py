"""cli-server for the benchmark: the real service tree (embedded PostgreSQL, API, proxy) with
a FAKE backend whose sandboxes "run" at the benchmark's upstream ports. Prints one JSON line
with the port, the sandboxes' hosts and a sandbox cookie for each, then serves.

    python server.py PORT UPSTREAM_PORT... [--proxy-workers N] [--previews]

``--proxy-workers N`` sets the server's relay workers where this version of cli-server has
that setting (``ServerConfig.proxy_workers``), and stops with an error where it has not;
without it the server runs with the daemon's defaults (one relay worker per CPU, where it has
the setting). With ``--previews`` each sandbox also gets a preview of its upstream's port
(``oc-{id}-p{port}``, which the FAKE backend places at 127.0.0.1:port): the JSON line then
lists a "previews" host and cookie per sandbox too."""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import tempfile
from pathlib import Path

import attrs
from twisted.internet import defer, reactor

from cli_server.config import ServerConfig
from cli_server.sandboxes.backend import Endpoint, SandboxSpec
from cli_server.server import build
from cli_server.testing import FakeBackend


class PortsBackend(FakeBackend):
    """Sandbox number n runs at ``ports[n]`` (FAKE: no processes)."""

    def __init__(self, ports: list[int]) -> None:
        super().__init__()
        self.ports, self.assigned = ports, {}

    def start(self, spec: SandboxSpec):  # type: ignore[no-untyped-def]
        port = self.assigned.setdefault(spec.id, self.ports[len(self.assigned)])
        self.running[spec.id] = Endpoint("127.0.0.1", port)
        return defer.succeed(self.running[spec.id])

    def preview_endpoint(self, sandbox_id: str, port: int):  # type: ignore[no-untyped-def]
        """A port of a sandbox is that port on the loopback (the upstreams')."""
        running = sandbox_id in self.running
        return defer.succeed(Endpoint("127.0.0.1", port) if running else None)


def proxy_workers_setting(workers: int | None) -> dict[str, int]:
    """The relay workers where this cli-server has them: N, or as ``twistd cli-server``
    defaults (one per CPU; the config class's own default is not the daemon's)."""
    if "proxy_workers" not in attrs.fields_dict(ServerConfig):
        if workers is not None:
            raise SystemExit("this cli-server has no proxy_workers setting (--proxy-workers)")
        return {}
    return {"proxy_workers": workers if workers is not None else os.cpu_count() or 1}


async def setup(
    port: int, upstreams: list[int], settings: dict[str, int], previews: bool = False
) -> None:
    data = Path(tempfile.mkdtemp(prefix="cli-bench-proxy-"))
    data.chmod(0o711)
    config = ServerConfig(
        listen=(f"tcp:{port}:interface=127.0.0.1",),
        data_dir=data,
        db_url=None,
        base_domain=f"localhost:{port}",
        base_scheme="http",
        session_lifetime=86400.0,
        max_sandboxes=100,
        **settings,
    )
    server = build(config, reactor, backend=PortsBackend(upstreams))
    gc.freeze()  # as buildServer (twistd's) does
    server.root.startService()
    reactor.addSystemEventTrigger("before", "shutdown", server.root.stopService)
    reactor.addSystemEventTrigger("after", "shutdown", shutil.rmtree, data, True)
    while not server.database.ready:
        await defer.Deferred.fromCoroutine(_sleep(0.05))
    from http.cookiejar import CookieJar

    from treq.client import HTTPClient
    from twisted.web.client import Agent

    http = HTTPClient(Agent(reactor), cookiejar=CookieJar())
    base = f"http://127.0.0.1:{port}"
    await http.post(
        base + "/api/auth/register", json={"username": "bench", "password": "benchmark1"}
    )
    await http.post(base + "/api/auth/login", json={"username": "bench", "password": "benchmark1"})
    wid = (await (await http.post(base + "/api/workspaces", json={"name": "b"})).json())["id"]

    async def session(sandbox_id: str, host: str, body: dict[str, int] | None) -> str:
        """A subdomain session through the ticket flow: the cookie the redemption sets."""
        where = f"{base}/api/sandboxes/{sandbox_id}/open"
        opened = await (http.post(where) if body is None else http.post(where, json=body))
        url = (await opened.json())["url"]
        redeemed = await http.get(
            base + url.split(host, 1)[1], headers={"Host": host}, allow_redirects=False
        )
        return str(redeemed.headers.getRawHeaders("set-cookie")[0].split(";")[0])

    out, shown = [], []
    for n in range(len(upstreams)):
        made = await (
            await http.post(f"{base}/api/workspaces/{wid}/sandboxes", json={"name": f"s{n}"})
        ).json()
        while (await (await http.get(f"{base}/api/sandboxes/{made['id']}")).json())[
            "status"
        ] != "running":
            await defer.Deferred.fromCoroutine(_sleep(0.05))
        host = f"oc-{made['id']}.localhost:{port}"
        out.append({"host": host, "cookie": await session(made["id"], host, None)})
        if previews:
            host = f"oc-{made['id']}-p{upstreams[n]}.localhost:{port}"
            cookie = await session(made["id"], host, {"port": upstreams[n]})
            shown.append({"host": host, "cookie": cookie})
    print(json.dumps({"sandboxes": out, "previews": shown}), flush=True)


async def _sleep(seconds: float) -> None:
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("upstreams", type=int, nargs="+")
    ap.add_argument("--proxy-workers", type=int)
    ap.add_argument("--previews", action="store_true")
    args = ap.parse_args()
    settings = proxy_workers_setting(args.proxy_workers)
    d = defer.Deferred.fromCoroutine(setup(args.port, args.upstreams, settings, args.previews))
    d.addErrback(lambda f: (f.printTraceback(), reactor.stop()))
    reactor.run()

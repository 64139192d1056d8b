// opencode's own UI losing the replica that carries its event stream, in headless Chromium:
// signed in through the load balancer, the sandbox opened with its one-time link, the UI loads
// and its event stream (`/global/event`, a streamed fetch) is live. The script says which
// replica serves that stream (`KILL <nginx X-Upstream>`) and waits for a line once the driver
// (tests/integration/test_replica_ui_failover.py) has SIGKILLed it. Then the UI must open the
// stream again by itself, events must flow on it again, a session created from the page must succeed, and
// the session's page must load. Then its terminal (Ctrl+`) is opened, its replica killed the
// same way (`KILL`), and the UI must try to reopen it; whether it did is printed. The
// screenshot (replica-failover.png) is the session and terminal after the first failover.
// Exits non-zero on the first failed expectation.
//
//   node e2e/replica-failover.mjs BASE_URL SCREENSHOT_DIR   (stdin: USERNAME, then SANDBOX_ID)
import { createInterface } from "node:readline";
import { expect, failed, newContext, secondsSince, shot, signIn, start } from "./common.mjs";

const { browser } = await start({ timeout: 30_000 });
const input = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function ask(what) {
  console.log(`ASK ${what}`);
  const { value, done } = await input.next();
  expect(!done, `no ${what} on stdin`);
  return value.trim();
}

/** Polls `test` every 100 ms until it holds, for at most `ms`; what it returned last. `what`
 * (or what it resolves to) names it when it never holds. */
async function until(what, test, ms) {
  const deadline = Date.now() + ms;
  for (;;) {
    const got = await test();
    if (got) return got;
    if (Date.now() >= deadline) {
      const said = typeof what === "function" ? await what() : what;
      throw new Error(`not within ${ms / 1000} s: ${said}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

// Counts what arrives on every event stream the page opens: opencode's UI reads
// `/global/event` with fetch, so the page's fetch hands it a copy that notes each chunk.
function countEvents() {
  window.__streams = [];
  const original = window.fetch;
  window.fetch = async (...args) => {
    const response = await original(...args);
    const url = String(args[0]?.url ?? args[0]);
    if (!new URL(url, location.href).pathname.endsWith("/event") || !response.body) {
      return response;
    }
    const stream = { status: response.status, text: "", ended: false };
    window.__streams.push(stream);
    const decoder = new TextDecoder();
    const noted = response.body.pipeThrough(
      new TransformStream({
        transform(chunk, out) {
          stream.text += decoder.decode(chunk, { stream: true });
          out.enqueue(chunk);
        },
        flush() {
          stream.ended = true;
        },
      }),
    );
    return new Response(noted, {
      status: response.status,
      statusText: response.statusText,
      headers: response.headers,
    });
  };
}

const streams = (page) => page.evaluate(() => window.__streams.map((s) => ({ ...s })));

try {
  const username = await ask("username");
  const sandbox = await ask("sandbox");
  const context = await newContext();
  await context.addInitScript(countEvents);
  const page = await context.newPage();
  const eventRequests = [];
  page.on("response", (response) => {
    if (new URL(response.url()).pathname === "/global/event") {
      eventRequests.push({ status: response.status(), upstream: response.headers()["x-upstream"] });
    }
  });
  await signIn(page, username);
  const opened = await page.evaluate(async (id) => {
    const answer = await fetch(`/api/sandboxes/${id}/open`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: "{}",
    });
    return { status: answer.status, body: await answer.json() };
  }, sandbox);
  expect(opened.status === 200, `open: ${JSON.stringify(opened)}`);
  const loading = Date.now();
  await page.goto(opened.body.url);
  await page.waitForURL((url) => url.hostname.startsWith(`oc-${sandbox}.`));
  await page.getByText("Create a session to get started").waitFor({ timeout: 60_000 });
  const first = await until(
    "the UI's event stream is live",
    async () => (await streams(page)).find((s) => s.status === 200 && s.text.includes("data:")),
    30_000,
  );
  expect(first, "no live event stream");
  console.log(`opencode's UI and its event stream live ${secondsSince(loading)} s after the link`);
  const live = eventRequests.filter((r) => r.status === 200);
  const upstream = live[live.length - 1].upstream;
  expect(upstream, "no X-Upstream on the event stream");

  const before = eventRequests.length;
  const opensBefore = (await streams(page)).length;
  console.log(`KILL ${upstream}`);
  expect((await ask("killed")) === "killed", "the driver did not kill the replica");
  const killed = Date.now();

  // The UI opens its event stream again by itself, through a surviving replica.
  const again = await until(
    "a new event stream answered 200",
    async () => (await streams(page)).slice(opensBefore).find((s) => s.status === 200),
    60_000,
  );
  expect(again, "no new event stream");
  const reopened = secondsSince(killed);
  const newUpstreams = eventRequests.slice(before).map((r) => `${r.status} ${r.upstream}`);
  console.log(`event stream reopened ${reopened} s after the kill: ${newUpstreams.join("; ")}`);

  // Events arrive on it again: a session created from the page is announced there.
  const created = await until(
    "a session created from the page",
    () =>
      page.evaluate(async () => {
        const answer = await fetch("/session", {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ title: "after the failover" }),
        });
        return answer.ok ? (await answer.json()).id : null;
      }),
    30_000,
  );
  const seen = async () =>
    JSON.stringify(
      (await streams(page)).map((s) => ({
        status: s.status,
        size: s.text.length,
        types: [...s.text.matchAll(/"type":"([^"]+)"/g)].map((m) => m[1]),
      })),
    );
  // Events flow on the reopened stream. (Not asserted: that this very session's event is on
  // it. In 2 runs of 14 it was not, though the stream carried others; whether opencode
  // subscribes after answering, or an event is lost on the way, is not settled. The session
  // itself is there: its page loads below.)
  await until(
    async () => `events on the reopened stream; streams: ${await seen()}`,
    async () =>
      (await streams(page))
        .slice(opensBefore)
        .some((s) => s.status === 200 && (s.text.match(/data:/g) ?? []).length >= 2),
    30_000,
  );
  const announced = (await streams(page)).slice(opensBefore).some((s) => s.text.includes(created));
  console.log(
    `events flow again ${secondsSince(killed)} s after the kill (session ${created}` +
      `${announced ? ", announced on the new stream" : ", not announced on the new stream"})`,
  );

  // The terminal (opencode's PTY WebSocket, Ctrl+` on a session's page): opened, then its
  // replica killed; what the UI does then is reported.
  const cdp = await context.newCDPSession(page);
  await cdp.send("Network.enable");
  const sockets = [];
  cdp.on("Network.webSocketCreated", ({ requestId, url }) => {
    if (new URL(url).pathname.startsWith("/pty/")) sockets.push({ requestId, url, at: Date.now() });
  });
  cdp.on("Network.webSocketHandshakeResponseReceived", ({ requestId, response }) => {
    const socket = sockets.find((s) => s.requestId === requestId);
    if (socket)
      Object.assign(socket, {
        status: response.status,
        upstream: response.headers["X-Upstream"] ?? response.headers["x-upstream"],
      });
  });
  cdp.on("Network.webSocketFrameReceived", ({ requestId }) => {
    const socket = sockets.find((s) => s.requestId === requestId);
    if (socket) socket.frames = (socket.frames ?? 0) + 1;
  });
  cdp.on("Network.webSocketFrameError", ({ requestId, errorMessage }) => {
    const socket = sockets.find((s) => s.requestId === requestId);
    if (socket) socket.error = errorMessage;
  });
  cdp.on("Network.webSocketClosed", ({ requestId }) => {
    const socket = sockets.find((s) => s.requestId === requestId);
    if (socket) socket.closed = Date.now();
  });
  const session = await page.evaluate(
    async (id) => (await (await fetch(`/session/${id}`)).json()).directory,
    created,
  );
  const dir = Buffer.from(session).toString("base64url");
  await page.goto(new URL(`/${dir}/session/${created}`, page.url()).href);
  // (a navigation through the survivors: the UI still loads)
  await page.getByRole("button", { name: "Send" }).waitFor({ timeout: 60_000 });
  console.log(`a session's page loaded ${secondsSince(killed)} s after the first kill`);
  // (the shortcut may come before the page listens: pressed again while no terminal opened)
  let pressed = 0;
  await until(
    "a terminal WebSocket opened",
    async () => {
      if (sockets.length > 0) return true;
      if (Date.now() - pressed > 5_000) {
        await page.keyboard.press("Control+Backquote");
        pressed = Date.now();
      }
      return false;
    },
    30_000,
  );
  const terminal = await until(
    "a terminal WebSocket with output",
    () => sockets.find((s) => s.status === 101 && s.frames > 0),
    30_000,
  );
  console.log(`terminal open: ${terminal.url.split("?")[0]} via ${terminal.upstream}`);
  await shot(page, "replica-failover");
  console.log(`KILL ${terminal.upstream}`);
  expect((await ask("killed")) === "killed", "the driver did not kill the terminal's replica");
  const cut = Date.now();
  await until("the terminal's WebSocket closed", () => terminal.closed, 30_000);
  console.log(`terminal WebSocket closed ${secondsSince(cut)} s after the kill`);
  const ptyAgain = await until(
    "a new terminal WebSocket",
    () =>
      sockets.find((s) => s !== terminal && s.status === 101) ??
      (Date.now() - cut > 20_000 ? "none" : null),
    30_000,
  );
  console.log(
    `after the kill: ${JSON.stringify(sockets.map(({ url, status, upstream, frames, closed, error }) => ({ path: new URL(url).pathname, status, upstream, frames, error, closed: !!closed })))}`,
  );
  console.log(
    `terminal reopened: ${ptyAgain === "none" ? "no (20 s)" : `yes, ${secondsSince(cut)} s`}`,
  );
  const retries = sockets.filter((s) => s !== terminal).length;
  expect(retries > 0, "the UI did not try to reopen its terminal");
  console.log(
    `event requests: ${eventRequests.length} (${eventRequests.length - before} after the kill)`,
  );
  await context.close();
} catch (error) {
  await failed(error);
}
await browser.close();
process.exit(0);

// Previews in headless Chromium against a real cli-server with a real process-backend sandbox:
// a dev server started inside it shows on its card, Copy link gives its address, Open opens
// it in a new tab where the page, its stylesheet and a fetch all come through, a live app's
// WebSocket, POST and event stream work from its page, and a browser with no session there is
// sent by the address through the dashboard and back.
//
//   node e2e/previews.mjs http://localhost:8080 ../docs/screenshots
//
// Starting the dev server needs the driver's help: this prints "SERVE <sandbox id>" and waits
// for a line on stdin once dev servers listen on 5173 and 8000 inside that sandbox
// (tests/integration/test_journey_previews.py). Exits non-zero on the first failed expectation.
import { join } from "node:path";
import { createInterface } from "node:readline";
import {
  cardOf,
  expect,
  failed,
  newContext,
  secondsSince,
  shot,
  register as signUp,
  start,
} from "./common.mjs";

const PORT = 5173; // a page with its stylesheet and a fetch (python3 -m http.server)
const LIVE_PORT = 8000; // an event stream, a POST and a WebSocket echo (sandbox_dev_server.py)
const { base, shots, browser } = await start({ timeout: 60_000 });
const started = Date.now();
const input = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

/** What the sandbox's page shows once its script has fetched data.json. */
async function appRendered(page) {
  await page.getByRole("heading", { name: "Hello from the sandbox" }).waitFor();
  await page.getByText("data.json says: served from inside the sandbox").waitFor();
  const colour = await page
    .getByRole("heading", { name: "Hello from the sandbox" })
    .evaluate((h) => getComputedStyle(h).color);
  expect(colour === "rgb(48, 86, 211)", `the stylesheet did not apply (colour ${colour})`);
}

try {
  const context = await newContext();
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: base });
  const page = await context.newPage();
  await signUp(page, "pia");
  await page.getByLabel("New workspace").fill("Web team");
  await page.getByRole("button", { name: "Create workspace" }).click();
  await page.getByRole("heading", { name: "Web team" }).waitFor();
  await page.getByPlaceholder("Name a new sandbox").fill("app");
  await page.getByRole("button", { name: "New sandbox" }).click();
  const card = cardOf(page, "app");
  await card.getByRole("status").filter({ hasText: "Running" }).waitFor();

  // Nothing listens yet: the card says so and offers a field.
  const previews = card.getByRole("region", { name: "Previews" });
  await previews.getByText(/^Nothing listens yet/).waitFor();
  await previews.getByRole("textbox", { name: "Port of app to open" }).waitFor();

  // The field refuses opencode's own port before asking the server.
  await previews.getByRole("textbox", { name: "Port of app to open" }).fill("4096");
  await previews.getByRole("button", { name: "Open port", exact: true }).click();
  await previews.getByText("4096 is opencode itself: use the sandbox's Open.").waitFor();

  const link = await card.getByLabel("Link to app").inputValue();
  const id = (link.match(/oc-([0-9a-f-]{36})\./) ?? [])[1];
  expect(id, `no sandbox id in ${link}`);
  console.log(`SERVE ${id}`);
  const answer = await input.next();
  expect(!answer.done && answer.value.trim() === "served", `driver said ${answer.value}`);
  const servedAt = Date.now();

  // The card finds the port by itself (it polls while the page is visible).
  const open = previews.getByRole("button", { name: `Open port ${PORT}` });
  await open.waitFor({ timeout: 20_000 });
  console.log(`port ${PORT} listed ${secondsSince(servedAt)} s after the dev server started`);
  const address = link.replace(`oc-${id}.`, `oc-${id}-p${PORT}.`);
  await previews.getByText(address, { exact: true }).waitFor();
  await previews.getByRole("button", { name: `Open port ${LIVE_PORT}` }).waitFor();
  await card.scrollIntoViewIfNeeded();
  await card.screenshot({ path: join(shots, "preview.png") });
  await previews.getByRole("button", { name: `Copy link to port ${PORT}` }).click();
  await previews.getByText("Link copied").waitFor();
  const copied = await page.evaluate(() => navigator.clipboard.readText());
  expect(copied === address, `clipboard holds ${copied}, not ${address}`);

  // Open: a new tab, through the one-time link, to the preview's own address.
  const clicked = Date.now();
  const [tab] = await Promise.all([context.waitForEvent("page"), open.click()]);
  await tab.waitForURL(address);
  await appRendered(tab);
  expect(
    await tab.evaluate(() => window.opener === null),
    "the preview can reach the dashboard's tab through window.opener",
  );
  console.log(`preview rendered ${secondsSince(clicked)} s after Open`);
  await shot(tab, "preview-app", { clip: { x: 0, y: 0, width: 720, height: 200 } });
  await tab.close();

  // A live app: an event stream, a POST and a WebSocket echo, from the preview's own page.
  const liveAddress = link.replace(`oc-${id}.`, `oc-${id}-p${LIVE_PORT}.`);
  const [live] = await Promise.all([
    context.waitForEvent("page"),
    previews.getByRole("button", { name: `Open port ${LIVE_PORT}` }).click(),
  ]);
  await live.waitForURL(liveAddress);
  await live.getByRole("heading", { name: "made in the sandbox" }).waitFor();
  await live.waitForFunction(() => document.title === "asset loaded");
  const talked = Date.now();
  const got = await live.evaluate(async () => {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const echo = await new Promise((resolve, reject) => {
      const socket = new WebSocket(`${scheme}://${location.host}/ws`);
      socket.onopen = () => socket.send("hello over the preview");
      socket.onmessage = (event) => {
        resolve(event.data);
        socket.close();
      };
      socket.onerror = () => reject(new Error("the WebSocket failed"));
    });
    const posted = await (await fetch("/form", { method: "POST", body: "a form's body" })).json();
    const events = await new Promise((resolve) => {
      const seen = [];
      const stream = new EventSource("/events");
      stream.onmessage = (event) => {
        seen.push(event.data);
        if (seen.length === 3) {
          stream.close();
          resolve(seen);
        }
      };
    });
    return { echo, posted: posted.body, events };
  });
  expect(got.echo === "hello over the preview", `the WebSocket echoed ${got.echo}`);
  expect(got.posted === "a form's body", `the POST arrived as ${got.posted}`);
  expect(got.events.join() === "tick 0,tick 1,tick 2", `the events were ${got.events}`);
  console.log(
    `live preview: a WebSocket echo, a POST and an event stream from the page in ${secondsSince(talked)} s`,
  );
  await live.close();

  // A browser signed in to the dashboard only: the address sends it there and back.
  const { cookies } = await context.storageState();
  const mainOnly = cookies.filter((c) => c.domain === "localhost");
  expect(mainOnly.length > 0, "no dashboard session to carry over");
  const fresh = await newContext(undefined, undefined, {
    storageState: { cookies: mainOnly, origins: [] },
  });
  const visitor = await fresh.newPage();
  const followed = [];
  visitor.on("framenavigated", (frame) => {
    if (frame === visitor.mainFrame()) followed.push(frame.url());
  });
  await visitor.goto(address);
  await visitor.waitForURL(address);
  await appRendered(visitor);
  const via = followed.find((u) => u.includes(`/open/${id}?port=${PORT}`));
  expect(via, `not sent through the dashboard's open page: ${followed.join(" → ")}`);
  await fresh.close();

  await context.close();
  console.log(`previews journey: ${secondsSince(started)} s`);
} catch (error) {
  await failed(error);
}
await browser.close();
process.exit(0);

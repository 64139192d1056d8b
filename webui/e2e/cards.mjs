// Sandbox cards in headless Chromium against a real cli-server with real opencode: what a
// card tells (short id, created, uptime, who paused it), a copyable link, a name already in
// use, Open landing on /data/disk0, and a crash told with its reason and log.
//
//   node e2e/cards.mjs http://localhost:8080 ../docs/screenshots
//
// The crash needs the driver's help: this prints "KILL <sandbox id>" and waits for a line on
// stdin once that sandbox's opencode has been SIGKILLed (tests/integration/test_journey_cards.py).
// Exits non-zero on the first failed expectation.
import { createInterface } from "node:readline";
import {
  cardOf,
  DESKTOP,
  expect,
  failed,
  newContext,
  PHONE,
  secondsSince,
  shot,
  register as signUp,
  start,
} from "./common.mjs";

const { base, browser } = await start({ timeout: 60_000 });
const started = Date.now();
const input = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

/** The card as the other three ways of looking at it show it: dark, phone, phone dark. */
async function shootEverywhere(context, name, state, withLogs = false) {
  const storageState = await context.storageState();
  const looks = [
    ["", DESKTOP, "light"],
    ["-dark", DESKTOP, "dark"],
    ["-phone", PHONE, "light"],
    ["-phone-dark", PHONE, "dark"],
  ];
  for (const [suffix, viewport, colorScheme] of looks) {
    const other = await newContext(viewport, colorScheme, { storageState });
    try {
      const page = await other.newPage();
      await page.goto(base);
      const card = cardOf(page, name);
      await card.getByRole("status").waitFor();
      if (withLogs) {
        await card.getByRole("button", { name: "Logs" }).click();
        await card.locator("pre.log").filter({ hasText: "opencode" }).waitFor();
      }
      await card.scrollIntoViewIfNeeded();
      await shot(page, `card-${state}${suffix}`);
    } finally {
      await other.close();
    }
  }
}

try {
  const context = await newContext();
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: base });
  const page = await context.newPage();
  await signUp(page, "dana");
  await page.getByLabel("New workspace").fill("Cards");
  await page.getByRole("button", { name: "Create workspace" }).click();
  await page.getByRole("heading", { name: "Cards" }).waitFor();

  // A sandbox: its card tells its short id, who made it and when, uptime, last activity.
  await page.getByPlaceholder("Name a new sandbox").fill("web");
  await page.getByRole("button", { name: "New sandbox" }).click();
  const card = cardOf(page, "web");
  await card.getByRole("status").filter({ hasText: "Running" }).waitFor();
  const shortId = (await card.locator("code.short-id").textContent()) ?? "";
  expect(/^[0-9a-f]{8}$/.test(shortId), `short id is "${shortId}"`);
  await card.getByText("Created by dana").waitFor();
  await card.getByText(/^Up (under a minute|\d+ min)/).waitFor();
  await card.getByText("Last active").waitFor();
  const created = await card.locator("time").first().getAttribute("title");
  expect(created && /\d/.test(created), `created time has no absolute title: ${created}`);

  // The same name again, in other letters: refused next to the name field.
  await page.getByPlaceholder("Name a new sandbox").fill("WEB");
  await page.getByRole("button", { name: "New sandbox" }).click();
  const nameError = page.locator("#sandbox-name-error");
  await nameError
    .filter({ hasText: 'A sandbox named "WEB" already exists in this workspace.' })
    .waitFor();
  expect(
    (await page.getByPlaceholder("Name a new sandbox").getAttribute("aria-invalid")) === "true",
    "the name field is not marked invalid",
  );
  await shot(page, "card-name-taken");
  await page.getByPlaceholder("Name a new sandbox").fill("");

  // The copyable link: the sandbox's own address, copied, and the button says so.
  const link = await card.getByLabel("Link to web").inputValue();
  expect(/^http:\/\/oc-[0-9a-f-]{36}\.localhost:\d+\/$/.test(link), `link is ${link}`);
  expect(link.includes(shortId), "the link is not this sandbox's");
  await card.getByRole("button", { name: "Copy link", exact: true }).click();
  await card.getByRole("button", { name: "Copied" }).waitFor();
  const copied = await page.evaluate(() => navigator.clipboard.readText());
  expect(copied === link, `clipboard holds ${copied}, not ${link}`);
  await card.getByRole("button", { name: "Copy link", exact: true }).waitFor(); // back after a moment
  await shootEverywhere(context, "web", "running");

  // Open lands in the work: opencode's app on the workspace disk, /data/disk0.
  let ticketUrl = "";
  context.on("request", (request) => {
    if (request.url().includes("/_cli/auth?ticket=")) ticketUrl = request.url();
  });
  const [tab] = await Promise.all([
    context.waitForEvent("page"),
    card.getByRole("button", { name: "Open", exact: true }).click(),
  ]);
  await tab.waitForURL(/^http:\/\/oc-[0-9a-f-]+\.localhost:\d+\/new-session/);
  await tab.getByText("disk0", { exact: true }).first().waitFor();
  const where = await tab.evaluate(async () => (await fetch("/path")).json());
  expect(where.directory === "/data/disk0", `opencode works in ${where.directory}`);
  await tab.waitForTimeout(1000); // let opencode's UI finish painting (never networkidle)
  await shot(tab, "opencode-project");
  // The same link again (used up), signed in: straight back to the work, not an error.
  expect(ticketUrl, "no sandbox link was followed");
  await tab.goto(ticketUrl);
  await tab.waitForURL(/\/new-session/);
  await tab.getByText("disk0", { exact: true }).first().waitFor();
  await tab.close();

  // Paused by a person: the card says who.
  await card.getByRole("button", { name: "Pause" }).click();
  await card.getByRole("status").filter({ hasText: "Paused" }).waitFor();
  await card.getByText(/^Paused by dana/).waitFor();
  await shootEverywhere(context, "web", "paused");
  await card.getByRole("button", { name: "Resume" }).click();
  await card.getByRole("status").filter({ hasText: "Running" }).waitFor();

  // opencode killed: the card says it crashed, and why, within seconds; the log shows it.
  const id = (link.match(/oc-([0-9a-f-]{36})\./) ?? [])[1];
  console.log(`KILL ${id}`);
  const answer = await input.next();
  expect(!answer.done && answer.value.trim() === "killed", `driver said ${answer.value}`);
  const killedAt = Date.now();
  await card.getByRole("status").filter({ hasText: "Crashed" }).waitFor({ timeout: 15_000 });
  const seconds = (Date.now() - killedAt) / 1000;
  await card
    .locator(".crash-reason")
    .filter({ hasText: "opencode was killed by signal 9 (SIGKILL)" })
    .waitFor();
  // A crash is restarted, not "resumed"; Open would restart it too.
  await card.getByRole("button", { name: "Restart" }).waitFor();
  expect(
    (await card.getByRole("button", { name: "Open", exact: true }).getAttribute("title")) ===
      "Restarts it, then opens it",
    "Open on a crashed card",
  );
  await card.getByRole("button", { name: "Logs" }).click();
  const log = card.locator("pre.log");
  await log.filter({ hasText: "opencode server listening" }).waitFor();
  await log.filter({ hasText: "--- opencode was killed by signal 9 (SIGKILL) ---" }).waitFor();
  await card.getByRole("button", { name: "Hide logs" }).waitFor();
  await shootEverywhere(context, "web", "failed-logs", true);
  console.log(`crash shown ${seconds.toFixed(1)} s after the kill`);

  // The subdomain says crashed, with the reason, not "starting".
  const crashed = await context.newPage();
  await crashed.goto(link);
  await crashed.getByRole("heading", { name: "This sandbox crashed" }).waitFor();
  await crashed.getByText("opencode was killed by signal 9 (SIGKILL)").waitFor();
  await shot(crashed, "sandbox-crashed-page");
  await crashed.close();
  await context.close();
  console.log(`cards journey: ${secondsSince(started)} s`);
} catch (error) {
  await failed(error);
}
await browser.close();
process.exit(0);

// A local sandbox's previews in headless Chromium: a real cli-agent sharing one port of its
// laptop (--allow-port SHARED) and not another (OTHER). The card lists only the shared port and
// says the others are not shared; Open shows the laptop's page; the other port's address says
// it is not shared.
//
//   node e2e/previews-local.mjs BASE_URL SCREENSHOT_DIR USERNAME SHARED OTHER
//
// The driver (tests/integration/test_journey_previews.py) makes the account, the workspace and
// the agent first. Exits non-zero on the first failed expectation.
import { join } from "node:path";
import { cardOf, expect, failed, newContext, secondsSince, signIn, start } from "./common.mjs";

const { shots, args, browser } = await start({
  usage: "USERNAME SHARED OTHER",
  defaults: ["", "", ""],
  valid: ([user, shared, other]) => !!user && /^\d+$/.test(shared) && /^\d+$/.test(other),
});
const [username, shared, other] = args;
const started = Date.now();

try {
  const context = await newContext();
  const page = await context.newPage();
  await signIn(page, username);
  const card = cardOf(page, "laptop");
  await card.getByText("local", { exact: true }).waitFor();
  await card.getByRole("status").filter({ hasText: "Running" }).waitFor();

  // Only the shared port, said to be the laptop's choice; no field for others.
  const previews = card.getByRole("region", { name: "Previews" });
  await previews.getByText("shared by the laptop (--allow-port)").waitFor();
  await previews.getByText("Other ports of the laptop are not shared.").waitFor();
  const open = previews.getByRole("button", { name: `Open port ${shared}` });
  await open.waitFor();
  expect((await previews.getByRole("listitem").count()) === 1, "more than the shared port");
  expect((await previews.getByRole("textbox").count()) === 0, "a field for unshared ports");
  await card.scrollIntoViewIfNeeded();
  await card.screenshot({ path: join(shots, "preview-local.png") });

  const link = await card.getByLabel("Link to laptop").inputValue();
  const id = (link.match(/oc-([0-9a-f-]{36})\./) ?? [])[1];
  expect(id, `no sandbox id in ${link}`);
  const clicked = Date.now();
  const [tab] = await Promise.all([context.waitForEvent("page"), open.click()]);
  await tab.waitForURL(link.replace(`oc-${id}.`, `oc-${id}-p${shared}.`));
  await tab.getByRole("heading", { name: "Hello from the laptop" }).waitFor();
  console.log(`local preview rendered ${secondsSince(clicked)} s after Open`);

  // A port the laptop does not share: its address says so (signed in there first).
  await tab.goto(link.replace(`oc-${id}.`, `oc-${id}-p${other}.`));
  await tab.getByRole("heading", { name: `Port ${other} is not shared` }).waitFor();
  await context.close();
  console.log(`local previews journey: ${secondsSince(started)} s`);
} catch (error) {
  await failed(error);
}
await browser.close();
process.exit(0);

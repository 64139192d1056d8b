// Browser journeys for Claude's setup, the budget and the local agent dialog, in headless
// Chromium against a real `twistd cli-server` started WITHOUT Anthropic credentials.
//
//   node e2e/claude.mjs BASE_URL SCREENSHOT_DIR ui      (prints "CONNECT <json>" at the end)
//   node e2e/claude.mjs BASE_URL SCREENSHOT_DIR local   (after the agent ran that command)
//
// Exits non-zero on the first failed expectation.
import {
  cardOf,
  expect as check,
  newContext as context,
  DESKTOP,
  failed,
  PHONE,
  register,
  shot,
  signIn,
  start,
} from "./common.mjs";

const { browser, args, base } = await start({
  usage: "ui|local",
  defaults: [""],
  valid: ([phase]) => ["ui", "local"].includes(phase),
});
const [phase] = args;
const WORKSPACE = "Claude team";

/** Desktop and phone, light and dark: "name", "name-dark", "name-phone", "name-phone-dark". */
async function shots4(page, name, { phone = true, fullPage = true } = {}) {
  for (const scheme of ["light", "dark"]) {
    await page.emulateMedia({ colorScheme: scheme });
    const suffix = scheme === "dark" ? "-dark" : "";
    await page.setViewportSize(DESKTOP);
    await shot(page, `${name}${suffix}`);
    if (phone) {
      await page.setViewportSize(PHONE);
      await shot(page, `${name}-phone${suffix}`, { fullPage });
    }
  }
  await page.emulateMedia({ colorScheme: "light" });
  await page.setViewportSize(DESKTOP);
}

async function ui() {
  const owners = await context();
  await owners.grantPermissions(["clipboard-read", "clipboard-write"], { origin: base });
  const page = await owners.newPage();
  await register(page, "olive");
  await page.getByLabel("New workspace").fill(WORKSPACE);
  await page.getByRole("button", { name: "Create workspace" }).click();
  await page.getByRole("heading", { name: WORKSPACE }).waitFor();

  // The owner, here also the server's administrator (the first account), is told at the top
  // of the dashboard what to set and where; the command works after the README's install.
  const banner = page.getByRole("region", { name: "Claude is not set up on this server" });
  await banner.waitFor();
  const said = (await banner.textContent()) ?? "";
  for (const words of ["ANTHROPIC_API_KEY=", ".venv/bin/twistd -n cli-server", "run this server"]) {
    check(said.includes(words), `the banner lacks "${words}": ${said}`);
  }
  await page.getByText("Claude this month: 0 tokens (0 requests)").waitFor();
  await shots4(page, "claude-banner");

  // The budget: a labelled field, validation in words, Save only once changed.
  const field = page.getByLabel("Monthly token budget");
  check((await field.inputValue()) === "", "a budget shows before one is set");
  check((await page.getByRole("button", { name: "Remove budget" }).count()) === 0, "Remove shown");
  await field.fill("lots");
  await page.getByText("Enter a whole number of tokens, e.g. 2,000,000.").waitFor();
  check((await field.getAttribute("aria-invalid")) === "true", "the field is not marked invalid");
  check((await page.getByRole("button", { name: "Set budget" }).count()) === 0, "Set on bad input");
  await field.fill("500");
  await page.getByText("A budget must be at least 1,000 tokens").waitFor();
  await shots4(page, "budget-invalid", { phone: false });
  await field.fill("5 000 000");
  await page.getByRole("button", { name: "Set budget" }).click();
  await page.getByText("Budget saved: 5,000,000 tokens a month.").waitFor();
  check((await field.inputValue()) === "5,000,000", "the field does not show the budget");
  await page.getByText("0 of 5M tokens").waitFor();
  const bar = page.getByRole("progressbar", { name: "Monthly budget used" });
  const valuetext = await bar.getAttribute("aria-valuetext");
  check(valuetext === "0 of 5,000,000 tokens (0%)", `the bar says ${valuetext}`);
  check((await page.getByRole("button", { name: "Save budget" }).count()) === 0, "Save unchanged");
  await page.getByRole("button", { name: "Remove budget" }).waitFor();
  await shots4(page, "budget");
  await page.getByRole("button", { name: "Remove budget" }).click();
  await page.getByText("Budget removed").waitFor();
  check((await page.getByRole("button", { name: "Remove budget" }).count()) === 0, "Remove stays");
  await field.fill("2,000,000");
  await page.getByRole("button", { name: "Set budget" }).click();
  await page.getByText("Budget saved: 2,000,000 tokens a month.").waitFor();
  // ... and the server's own check, in words, reached with a reload after a direct call.
  const bad = await page.request.put(`${base}/api/workspaces/${await workspaceId(page)}/budget`, {
    data: { monthly_tokens: "many" },
  });
  const refusal = await bad.json();
  check(bad.status() === 400 && refusal.error.field === "monthly_tokens", "bad budget accepted");

  // A guest: a short neutral note, the budget read-only.
  const guests = await context();
  const guest = await guests.newPage();
  await register(guest, "gus");
  const invited = await page.request.post(
    `${base}/api/workspaces/${await workspaceId(page)}/members`,
    { data: { username: "gus", role: "guest" } },
  );
  check(invited.status() === 201, `inviting gus: HTTP ${invited.status()}`);
  await guest.reload();
  await guest.getByRole("button", { name: `Accept the invitation to ${WORKSPACE}` }).click();
  await guest.getByRole("heading", { name: WORKSPACE }).waitFor();
  await guest
    .getByRole("note")
    .filter({ hasText: "Claude is not available yet — ask the administrator of this server" })
    .waitFor();
  check((await guest.getByRole("region", { name: /not set up/ }).count()) === 0, "guest banner");
  check(!((await guest.content()) ?? "").includes("ANTHROPIC_API_KEY"), "guest sees the variable");
  await guest
    .getByText("Monthly budget: 2,000,000 tokens, set by the workspace's owners.")
    .waitFor();
  check((await guest.getByLabel("Monthly token budget").count()) === 0, "a guest edits the budget");
  await shots4(guest, "claude-guest-note", { phone: false });
  await guests.close();

  // The local agent dialog: three steps, each copied exactly.
  await page.getByRole("button", { name: "Connect a local agent" }).click();
  const dialog = page.getByRole("dialog", { name: "Connect a local agent" });
  await dialog.getByText("The code expires in").waitFor();
  const copied = {};
  for (const which of ["install", "opencode", "connect"]) {
    const button = dialog.getByRole("button", { name: `Copy the ${which} command` });
    const shown = await button.evaluate((node) => node.previousElementSibling.textContent);
    await button.click();
    await dialog.getByText("Copied to the clipboard.").waitFor();
    const pasted = await page.evaluate(() => navigator.clipboard.readText());
    check(pasted === shown, `copying the ${which} command gave ${pasted}, not ${shown}`);
    copied[which] = pasted;
  }
  check(copied.install.includes("pip install"), `install: ${copied.install}`);
  check(copied.connect.includes(" -n cli-agent --server "), `connect: ${copied.connect}`);
  await dialog.getByText("Copied to the clipboard.").waitFor();
  await shots4(page, "agent-dialog", { fullPage: false });
  await page.keyboard.press("Escape");
  await dialog.waitFor({ state: "detached" });
  await owners.close();
  console.log(`CONNECT ${JSON.stringify(copied.connect)}`);
}

async function workspaceId(page) {
  const listed = await (await page.request.get(`${base}/api/workspaces`)).json();
  return listed.find((w) => w.name === WORKSPACE).id;
}

async function local() {
  const owners = await context();
  const page = await owners.newPage();
  await signIn(page, "olive");
  await page.getByRole("heading", { name: WORKSPACE }).waitFor();
  const card = cardOf(page, "my-laptop");
  await card.getByText("local", { exact: true }).waitFor();
  await card.getByRole("status").filter({ hasText: "Running" }).waitFor();
  await shot(page, "agent-connected");
  await owners.close();
}

try {
  await (phase === "ui" ? ui() : local());
} catch (error) {
  await failed(error);
}
await browser.close();
console.log(`claude journeys (${phase}) passed`);

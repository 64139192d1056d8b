// The newcomer walkthrough's web-UI fixes in headless Chromium against a real cli-server with
// real opencode: the administrator's Claude banner on an empty dashboard (compact on phones,
// its command never broken mid-word), a long workspace name in the sidebar, an invitation
// notice that goes once the person joined, Change role by keyboard, and Open on a paused
// sandbox resuming it.
//
//   node e2e/polish.mjs http://localhost:8080 ../docs/screenshots
//
// Exits non-zero on the first failed expectation.
import {
  cardOf,
  newContext as context,
  expect,
  failed,
  PHONE,
  secondsSince,
  shot,
  signIn,
  register as signUp,
  start,
} from "./common.mjs";

const { browser } = await start({ timeout: 60_000 });
const started = Date.now();
const WORKSPACE = "Customer Success Automation Experiments";

/** The banner's command is one unbroken line that scrolls, whatever the width. */
async function commandOnOneLine(page) {
  const box = page.locator(".claude-banner pre");
  const whiteSpace = await box.evaluate((node) => getComputedStyle(node).whiteSpace);
  expect(whiteSpace === "pre", `the command wraps: white-space ${whiteSpace}`);
  const wide = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  expect(wide <= 0, `the page is ${wide}px wider than the window`);
}

try {
  // The administrator (the first account), no workspace yet: the banner is there, open once.
  const admin = await context();
  const page = await admin.newPage();
  await signUp(page, "ada");
  const banner = page.getByRole("region", { name: "Claude is not set up on this server" });
  await banner.waitFor();
  await page.getByRole("heading", { name: "Welcome, ada" }).waitFor();
  const command = await banner.locator("pre").textContent();
  expect(
    command === "ANTHROPIC_API_KEY=sk-ant-… .venv/bin/twistd -n cli-server",
    `the command: ${command}`,
  );
  expect(await banner.locator("details").evaluate((d) => d.open), "the how-to starts closed");
  await commandOnOneLine(page);
  await shot(page, "claude-banner-admin");
  // Seen once: the next visit shows only the summary line.
  await page.reload();
  await banner.waitFor();
  expect(!(await banner.locator("details").evaluate((d) => d.open)), "open on the 2nd visit");
  await banner.locator("summary").click();
  await commandOnOneLine(page);

  // On a phone (a fresh browser), folded from the start, and the command not broken.
  for (const scheme of ["light", "dark"]) {
    const phone = await context(PHONE, scheme);
    const small = await phone.newPage();
    await signIn(small, "ada");
    const folded = small.getByRole("region", { name: "Claude is not set up on this server" });
    await folded.waitFor();
    expect(!(await folded.locator("details").evaluate((d) => d.open)), "open on a phone");
    const height = await folded.evaluate((node) => node.getBoundingClientRect().height);
    expect(height < 200, `the phone banner is ${height}px tall`);
    const suffix = scheme === "dark" ? "-dark" : "";
    await shot(small, `claude-banner-admin-phone${suffix}`);
    await folded.locator("summary").click();
    await commandOnOneLine(small);
    await phone.close();
  }

  // A long workspace name wraps to two lines in the sidebar, its whole name in the title.
  await page.getByLabel("New workspace").fill(WORKSPACE);
  await page.getByRole("button", { name: "Create workspace" }).click();
  await page.getByRole("heading", { name: WORKSPACE }).waitFor();
  const name = page.locator("nav.sidebar .nav-name").first();
  expect((await name.getAttribute("title")) === WORKSPACE, "no title on the sidebar name");
  await shot(page, "sidebar-long-name");
  // Two lines of it show before the rest is cut (one line at 1280 px cut "Platform te…").
  const shown = await name.evaluate((node) => node.clientHeight);
  expect(shown > 30, `the sidebar shows the name in ${shown}px: one line`);

  // Invite bob; the notice goes once bob accepted and shows in the members table.
  const bos = await context();
  const bo = await bos.newPage();
  await signUp(bo, "bob");
  await page.getByRole("tab", { name: "Members" }).click();
  await page.getByPlaceholder("Username to add").fill("bob");
  await page.getByRole("button", { name: "Add member" }).click();
  const notice = page.getByRole("status").filter({ hasText: "Invited bob" });
  await notice.waitFor();
  await bo.reload();
  await bo.getByRole("button", { name: `Accept the invitation to ${WORKSPACE}` }).click();
  await bo.getByRole("heading", { name: WORKSPACE }).waitFor();
  const members = page.getByRole("table").first();
  await members.getByRole("cell", { name: "bob", exact: true }).waitFor({ timeout: 15_000 });
  await notice.waitFor({ state: "detached" });
  // Keyboard: arrows move through the roles, nothing asks until Change role.
  const role = page.getByRole("combobox", { name: "Role of bob" });
  await role.focus();
  await page.keyboard.press("ArrowDown");
  await page.keyboard.press("ArrowDown");
  expect((await page.getByRole("dialog").count()) === 0, "an arrow key opened the dialog");
  await page.getByRole("button", { name: "Change the role of bob" }).waitFor();
  await shot(page, "members-change-role");
  await page.getByRole("button", { name: "Keep the role of bob" }).click();
  expect((await role.inputValue()) === "developer", "Cancel kept the chosen role");
  await page.getByText("You are the only owner").waitFor();
  const ownerRow = page.locator("tr", { hasText: "You are the only owner" });
  expect(
    (await ownerRow.getByText("ada").count()) === 1,
    "the only-owner note is not in ada's row",
  );
  await shot(page, "members");

  // Open on a paused sandbox resumes it and opens it.
  await page.getByRole("tab", { name: "Sandboxes" }).click();
  await page.getByText("Name one above: it starts opencode in a few seconds.").waitFor();
  await page.getByPlaceholder("Name a new sandbox").fill("web");
  await page.getByRole("button", { name: "New sandbox" }).click();
  const card = cardOf(page, "web");
  await card.getByRole("status").filter({ hasText: "Running" }).waitFor();
  await card.getByRole("button", { name: "Pause" }).click();
  await card.getByRole("status").filter({ hasText: "Paused" }).waitFor();
  const open = card.getByRole("button", { name: "Open", exact: true });
  expect(!(await open.isDisabled()), "Open is disabled on a paused sandbox");
  expect((await open.getAttribute("title")) === "Resumes it, then opens it", "Open's title");
  await shot(page, "card-paused-open");
  const [tab] = await Promise.all([admin.waitForEvent("page"), open.click()]);
  await tab.waitForURL(/^http:\/\/oc-[0-9a-f-]+\.localhost:\d+\//);
  await card.getByRole("status").filter({ hasText: "Running" }).waitFor();
  await tab.getByText("disk0", { exact: true }).first().waitFor();
  await tab.close();
  await bos.close();
  await admin.close();
  console.log(`polish journey: ${secondsSince(started)} s`);
} catch (error) {
  await failed(error);
}
await browser.close();
process.exit(0);

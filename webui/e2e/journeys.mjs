// End-to-end journeys in headless Chromium (Debian's, driven by playwright-core) against a
// real cli-server with real opencode sandboxes.
//
//   node e2e/journeys.mjs http://localhost:8080 ../docs/screenshots
//
// Exits non-zero on the first failed expectation. Saves screenshots of the main screens.
import {
  cardOf,
  failed,
  newContext,
  PHONE,
  register,
  secondsSince,
  shot,
  signIn,
  start,
  statusOf,
  journey as timed,
  timings,
} from "./common.mjs";

const started = Date.now();
const { base, browser } = await start({ timeout: 60_000 });

/** A timed journey in a fresh desktop context. */
async function journey(name, work) {
  await timed(name, async () => {
    const context = await newContext();
    try {
      await work(context);
    } finally {
      await context.close();
    }
  });
}

try {
  await journey("failed login shows an error", async (context) => {
    const page = await context.newPage();
    await page.goto(base);
    await page.getByLabel("Username").fill("nobody");
    await page.getByLabel("Password").fill("not the password");
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("alert").filter({ hasText: "Wrong username or password" }).waitFor();
    await shot(page, "login-error");
  });

  await journey("owner: workspace, member, sandbox lifecycle, open", async (context) => {
    const page = await context.newPage();
    await register(page, "alice");
    await page.getByText("No workspaces yet").waitFor();
    await shot(page, "dashboard-empty");
    await page.getByLabel("New workspace").fill("Platform team");
    await page.getByRole("button", { name: "Create workspace" }).click();
    await page.getByRole("heading", { name: "Platform team" }).waitFor();

    for (const name of ["bob", "carol"]) {
      const api = await context.request.post(`${base}/api/auth/register`, {
        data: { username: name, password: "correct horse battery" },
      });
      if (api.status() !== 201) throw new Error(`registering ${name}: HTTP ${api.status()}`);
    }
    await page.getByRole("tab", { name: "Members" }).click();
    for (const name of ["bob", "carol"]) {
      await page.getByPlaceholder("Username to add").fill(name);
      await page.getByLabel("Role for the new member").selectOption("guest");
      await page.getByRole("button", { name: "Add member" }).click();
      await page
        .getByRole("status")
        .filter({ hasText: `Invited ${name}` })
        .waitFor();
    }
    // Invited, not members: they show as pending until they accept.
    const pending = page.getByRole("table", { name: "Pending invitations" });
    await pending.getByRole("cell", { name: "bob (pending)" }).waitFor();
    await pending.getByRole("cell", { name: "carol (pending)" }).waitFor();
    if ((await page.getByRole("table").first().getByText("bob").count()) !== 0)
      throw new Error("bob is listed as a member before accepting");
    await page.getByPlaceholder("Username to add").fill("ghost");
    await page.getByRole("button", { name: "Add member" }).click();
    await page.getByRole("alert").filter({ hasText: "No user has that username" }).waitFor();
    await shot(page, "members");

    await page.getByRole("tab", { name: "Sandboxes" }).click();
    await page.getByText("No sandboxes yet.").waitFor();
    await page.getByText("Claude this month").waitFor();
    await page.getByPlaceholder("Name a new sandbox").fill("api-refactor");
    await page.getByRole("button", { name: "New sandbox" }).click();
    await statusOf(page, "api-refactor").filter({ hasText: "Running" }).waitFor();
    await shot(page, "sandbox-running");

    const card = cardOf(page, "api-refactor");
    await card.getByRole("button", { name: "Pause" }).click();
    await statusOf(page, "api-refactor").filter({ hasText: "Paused" }).waitFor();
    await card.getByRole("button", { name: "Resume" }).click();
    await statusOf(page, "api-refactor").filter({ hasText: "Running" }).waitFor();

    const [tab] = await Promise.all([
      context.waitForEvent("page"),
      card.getByRole("button", { name: "Open", exact: true }).click(),
    ]);
    await tab.waitForURL(/^http:\/\/oc-[0-9a-f-]+\.localhost:\d+\//);
    await tab.waitForLoadState("load");
    await tab.locator("#root, body").first().waitFor();
    await tab.waitForTimeout(1500); // let opencode's UI paint (never wait for networkidle)
    const title = await tab.title();
    if (!/opencode/i.test(title)) throw new Error(`opened tab title is ${title}`);
    await shot(tab, "opencode-through-proxy");
    await tab.close();

    await card.getByRole("button", { name: "Delete" }).click();
    await page.getByRole("button", { name: "Delete sandbox" }).click();
    await page.getByText("No sandboxes yet.").waitFor();

    await page.getByPlaceholder("Name a new sandbox").fill("for-the-guest");
    await page.getByRole("button", { name: "New sandbox" }).click();
    await statusOf(page, "for-the-guest").filter({ hasText: "Running" }).waitFor();
  });

  await journey("owner: connect a local agent", async (context) => {
    const page = await context.newPage();
    await signIn(page, "alice");
    await page.getByRole("heading", { name: "Platform team" }).waitFor();
    await page.getByRole("button", { name: "Connect a local agent" }).click();
    const dialog = page.getByRole("dialog", { name: "Connect a local agent" });
    await dialog.waitFor();
    const command = dialog.locator(".command pre").filter({ hasText: "twistd -n cli-agent" });
    await command.waitFor();
    const text = (await command.textContent()) ?? "";
    for (const part of ["twistd -n cli-agent", "--server "]) {
      if (!text.includes(part)) throw new Error(`the agent command lacks "${part}": ${text}`);
    }
    const code = /--code '?([^\s']+)/.exec(text)?.[1] ?? "";
    if (code.length < 20) throw new Error(`the agent command's --code is too short: ${text}`);
    await dialog.getByText("The code expires in").waitFor();
    const left = (await dialog.locator("time.countdown").textContent()) ?? "";
    if (!/^\d+:\d{2}$/.test(left)) throw new Error(`the countdown reads "${left}"`);
    await dialog.getByRole("button", { name: "Copy the connect command" }).waitFor();
    await shot(page, "local-agent");
    await page.keyboard.press("Escape");
    await dialog.waitFor({ state: "detached" });
    await page.getByRole("button", { name: "Connect a local agent" }).waitFor();
  });

  await journey("invitee declines: nothing of the workspace is shown", async (context) => {
    const page = await context.newPage();
    await signIn(page, "carol");
    await page.getByText("No workspaces yet").waitFor();
    const invitations = page.getByRole("region", { name: "Invitations" });
    await invitations.getByText("alice").waitFor();
    if ((await page.getByRole("button", { name: /^Platform team/ }).count()) !== 0)
      throw new Error("carol sees the workspace before answering");
    await page.getByRole("button", { name: "Decline the invitation to Platform team" }).click();
    await invitations.waitFor({ state: "detached" });
    await page.reload();
    await page.getByText("No workspaces yet").waitFor();
    if ((await page.getByRole("region", { name: "Invitations" }).count()) !== 0)
      throw new Error("the declined invitation came back");
  });

  await journey("guest sees no mutating controls", async (context) => {
    const page = await context.newPage();
    await signIn(page, "bob");
    await page.getByText("No workspaces yet").waitFor();
    await shot(page, "invitation");
    await page.getByRole("button", { name: "Accept the invitation to Platform team" }).click();
    await page.getByRole("heading", { name: "Platform team" }).waitFor();
    await statusOf(page, "for-the-guest").filter({ hasText: "Running" }).waitFor();
    for (const name of [
      "New sandbox",
      "Connect a local agent",
      "Pause",
      "Resume",
      "Delete",
      "Delete workspace",
    ]) {
      if ((await page.getByRole("button", { name, exact: true }).count()) !== 0)
        throw new Error(`a guest sees "${name}"`);
    }
    await page.getByText("You are a guest here").waitFor();
    await shot(page, "guest-view");
    await page.getByRole("tab", { name: "Members" }).click();
    if ((await page.getByRole("button", { name: "Add member" }).count()) !== 0)
      throw new Error("a guest can add members");
    await page.locator("summary[aria-label='Account menu']").click();
    await page.getByRole("button", { name: "Sign out" }).click();
    await page.getByRole("button", { name: "Sign in" }).waitFor();
  });

  await journey("phone width", async (context) => {
    const page = await context.newPage();
    await page.setViewportSize(PHONE);
    await signIn(page, "alice");
    await page.getByRole("heading", { name: "Platform team" }).waitFor();
    await shot(page, "phone");
  });
} catch (error) {
  await failed(error);
}
await browser.close();
console.log(timings.join("\n"));
console.log(`all journeys passed in ${secondsSince(started)} s`);

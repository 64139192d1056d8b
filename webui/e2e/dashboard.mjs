// Issue 17, items 7, 9 and 11 in headless Chromium against a real cli-server: addresses and
// Back, live role changes and removals, the typed delete confirmation, roles explained,
// the phone drawer; screenshots light and dark.
//
//   node e2e/dashboard.mjs http://localhost:8080 ../docs/screenshots
import {
  expect,
  failed,
  journey,
  newContext,
  PHONE,
  register,
  shot as screenshot,
  secondsSince,
  start,
  timings,
} from "./common.mjs";

const started = Date.now();
const { base, browser } = await start();
// Open dashboards poll every 5 s; a change must show within 10 s.
const LIVE = 10_000;

/** The screen in the light and the dark scheme. */
async function shot(page, name) {
  await page.emulateMedia({ colorScheme: "light" });
  await screenshot(page, name);
  await page.emulateMedia({ colorScheme: "dark" });
  await screenshot(page, `${name}-dark`);
  await page.emulateMedia({ colorScheme: "light" });
}

async function call(context, method, path, data) {
  const response = await context.request.fetch(`${base}${path}`, { method, data });
  const text = await response.text();
  expect(response.ok(), `${method} ${path}: HTTP ${response.status()} ${text}`);
  return text ? JSON.parse(text) : null;
}

async function waitForStatus(context, sandboxId, wanted) {
  for (let i = 0; i < 120; i++) {
    const sandbox = await call(context, "GET", `/api/sandboxes/${sandboxId}`);
    if (sandbox.status === wanted) return;
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  throw new Error(`sandbox ${sandboxId} never reached ${wanted}`);
}

async function expectPath(page, path) {
  await page.waitForURL((url) => url.pathname === path);
}

async function expectTitle(page, title) {
  await page.waitForFunction((t) => document.title === t, title);
}

function nav(page) {
  return page.getByRole("navigation", { name: "Workspaces" });
}

/** Milliseconds until ``locator`` shows, failing after LIVE. */
async function within(locator, what) {
  const t = Date.now();
  try {
    await locator.waitFor({ timeout: LIVE });
  } catch {
    throw new Error(`${what} did not show within ${LIVE / 1000} s`);
  }
  return Date.now() - t;
}

const alice = await newContext();
const bob = await newContext();
try {
  const page = await alice.newPage();
  const bobPage = await bob.newPage();
  let alpha;
  let beta;

  await journey("addresses: each workspace and tab has a URL; reload and Back", async () => {
    await register(page, "alice");
    await page.getByText("No workspaces yet").waitFor();
    alpha = await call(alice, "POST", "/api/workspaces", { name: "Alpha" });
    beta = await call(alice, "POST", "/api/workspaces", { name: "Beta" });

    await page.goto(base);
    // "/" shows the first workspace, under its own address.
    await page.getByRole("heading", { name: "Alpha" }).waitFor();
    await expectPath(page, `/w/${alpha.id}`);
    await expectTitle(page, "Alpha · Sandboxes — cli-server");

    await nav(page).getByRole("link", { name: /^Beta/ }).click();
    await page.getByRole("heading", { name: "Beta" }).waitFor();
    await expectPath(page, `/w/${beta.id}`);
    await expectTitle(page, "Beta · Sandboxes — cli-server");

    await page.getByRole("tab", { name: "Members" }).click();
    await expectPath(page, `/w/${beta.id}/members`);
    await expectTitle(page, "Beta · Members — cli-server");

    await page.reload();
    await page.getByRole("heading", { name: "Beta" }).waitFor();
    await page.locator("[role=tab][aria-selected=true]", { hasText: "Members" }).waitFor();
    await page.getByRole("columnheader", { name: "Member" }).waitFor();
    await expectTitle(page, "Beta · Members — cli-server");

    await page.goBack();
    await expectPath(page, `/w/${beta.id}`);
    await page.locator("[role=tab][aria-selected=true]", { hasText: "Sandboxes" }).waitFor();
    await expectTitle(page, "Beta · Sandboxes — cli-server");
    await page.goBack();
    await expectPath(page, `/w/${alpha.id}`);
    await page.getByRole("heading", { name: "Alpha" }).waitFor();
    await expectTitle(page, "Alpha · Sandboxes — cli-server");
    await page.goForward();
    await page.getByRole("heading", { name: "Beta" }).waitFor();

    // A shared link to a workspace one cannot see says so and leads home.
    await page.goto(`${base}/w/00000000-0000-4000-8000-000000000000/members`);
    await page.getByRole("heading", { name: "Workspace not found" }).waitFor();
    await page.getByText("you no longer have access").waitFor();
    await expectTitle(page, "Workspace not found — cli-server");
    await shot(page, "workspace-not-found");
    await page.getByRole("link", { name: "Go to your workspaces" }).click();
    await page.getByRole("heading", { name: "Alpha" }).waitFor();
    await expectPath(page, `/w/${alpha.id}`);

    // The account page has its own address, reached from the account menu.
    const me = await call(alice, "GET", "/api/auth/me");
    await page.locator("summary[aria-label='Account menu']").click();
    const users = await page.getByRole("link", { name: "Users", exact: true }).count();
    expect(users === (me.is_admin ? 1 : 0), `the Users link shows ${users} times`);
    await page.getByRole("link", { name: "Account", exact: true }).click();
    await expectPath(page, "/account");
    await expectTitle(page, "Account — cli-server");
    await page.getByRole("heading", { name: "Account" }).waitFor();
    await page.goBack();
    await page.getByRole("heading", { name: "Alpha" }).waitFor();

    // A real favicon, served as SVG.
    const icon = await page.locator("link[rel=icon]").getAttribute("href");
    expect(icon, "no favicon link");
    const served = await alice.request.get(new URL(icon, base).href);
    expect(served.ok(), `favicon: HTTP ${served.status()}`);
    const type = served.headers()["content-type"];
    expect(type === "image/svg+xml", `favicon content-type ${type}`);
    await shot(page, "dashboard");
  });

  await journey("members: roles explained, last owner, live role change and removal", async () => {
    await register(bobPage, "bob");
    const invited = await call(alice, "POST", `/api/workspaces/${beta.id}/members`, {
      username: "bob",
      role: "developer",
    });
    await call(bob, "POST", `/api/invitations/${invited.invitation_id}/accept`);
    await bobPage.goto(`${base}/w/${beta.id}`);
    await bobPage.getByRole("heading", { name: "Beta" }).waitFor();
    expect(
      (await bobPage.getByText("opencode is read-only for you").count()) === 0,
      "a developer is told opencode is read-only",
    );

    await page.goto(`${base}/w/${beta.id}/members`);
    const table = page.getByRole("table").first();
    await table.getByRole("cell", { name: "bob", exact: true }).waitFor();
    // The only owner is offered neither Leave nor another role.
    expect((await page.getByRole("button", { name: "Leave" }).count()) === 0, "last owner: Leave");
    expect(
      (await page.getByRole("combobox", { name: "Role of alice" }).count()) === 0,
      "last owner: role select",
    );
    await page.getByText("You are the only owner").waitFor();
    // Each role is explained where it is chosen.
    await page.getByLabel("Role for the new member").selectOption("guest");
    await page.locator(".add-member .hint", { hasText: "Read-only" }).waitFor();
    await page.getByLabel("Role for the new member").selectOption("maintainer");
    await page.locator(".add-member .hint", { hasText: "Adds members" }).waitFor();
    await page.getByText("What can each role do?").click();
    await shot(page, "members-roles");

    // Demote bob: arrow keys move through the roles without asking; Change role asks first,
    // naming who and what changes.
    const bobRole = page.getByRole("combobox", { name: "Role of bob" });
    await bobRole.focus();
    await page.keyboard.press("ArrowDown");
    await page.keyboard.press("ArrowUp");
    expect((await page.getByRole("dialog").count()) === 0, "an arrow key asked to confirm");
    await bobRole.selectOption("guest");
    await page.getByRole("button", { name: "Change the role of bob" }).click();
    const dialog = page.getByRole("dialog");
    await dialog.getByText(`Change bob's role in "Beta" from developer to guest?`).waitFor();
    await dialog.getByText("Read-only").waitFor();
    await shot(page, "role-change-confirm");
    await dialog.getByRole("button", { name: "Make bob guest" }).click();
    await page.waitForFunction(
      () => document.querySelector("select[aria-label='Role of bob']")?.value === "guest",
    );

    // bob's open dashboard learns it without a reload.
    const demoted = await within(
      bobPage.getByText("opencode is read-only for you"),
      "bob's guest note",
    );
    await nav(bobPage)
      .getByRole("link", { name: /^Beta\s+guest/ })
      .waitFor();
    timings.push(`  role change reached bob's dashboard in ${(demoted / 1000).toFixed(1)} s`);
    await shot(bobPage, "guest-readonly");

    // Removed: bob's dashboard says so and leaves the workspace.
    await page.getByRole("button", { name: "Remove bob" }).click();
    await page.getByRole("dialog").getByRole("button", { name: "Remove" }).click();
    await table.getByRole("cell", { name: "bob", exact: true }).waitFor({ state: "detached" });
    const removed = await within(
      bobPage.getByRole("alert").filter({ hasText: `You no longer have access to "Beta"` }),
      "bob's no-access notice",
    );
    timings.push(`  removal reached bob's dashboard in ${(removed / 1000).toFixed(1)} s`);
    await expectPath(bobPage, "/");
    await bobPage.getByRole("heading", { name: "Welcome, bob" }).waitFor();
    await shot(bobPage, "no-longer-access");
    expect((await nav(bobPage).getByRole("link", { name: /^Beta/ }).count()) === 0, "Beta stays");
  });

  await journey("delete workspace: counts its sandboxes, needs its name typed", async () => {
    const doomed = await call(alice, "POST", "/api/workspaces", { name: "Doomed" });
    const made = [];
    for (const name of ["one", "two"]) {
      made.push(await call(alice, "POST", `/api/workspaces/${doomed.id}/sandboxes`, { name }));
    }
    for (const sandbox of made) await waitForStatus(alice, sandbox.id, "running");
    await call(alice, "POST", `/api/sandboxes/${made[0].id}/pause`);
    await waitForStatus(alice, made[0].id, "paused");

    await page.goto(`${base}/w/${doomed.id}`);
    await page.getByRole("heading", { name: "Doomed" }).waitFor();
    await page.getByRole("button", { name: "Delete workspace" }).click();
    const dialog = page.getByRole("dialog", { name: `Delete the workspace "Doomed"?` });
    await dialog.getByText("2 sandboxes (1 running) will be stopped and deleted").waitFor();
    const confirm = dialog.getByRole("button", { name: "Delete everything" });
    expect(await confirm.isDisabled(), "Delete everything is enabled before typing");
    await dialog.getByLabel("Type Doomed to confirm").fill("doomed");
    expect(await confirm.isDisabled(), "a wrongly typed name enables Delete everything");
    await dialog.getByLabel("Type Doomed to confirm").fill("Doomed");
    await shot(page, "delete-workspace");
    await confirm.click();
    await page.getByRole("alert").filter({ hasText: `"Doomed" was deleted.` }).waitFor();
    await page.getByRole("heading", { name: "Alpha" }).waitFor();
    expect(
      (await nav(page)
        .getByRole("link", { name: /^Doomed/ })
        .count()) === 0,
      "Doomed stays",
    );
    const left = await call(alice, "GET", "/api/workspaces");
    expect(!left.some((w) => w.id === doomed.id), "the workspace still exists");
  });

  await journey("phone: the workspace list folds behind a toggle", async () => {
    const phone = await newContext(PHONE, undefined, { storageState: await alice.storageState() });
    try {
      const small = await phone.newPage();
      await small.goto(`${base}/w/${alpha.id}`);
      await small.getByRole("heading", { name: "Alpha" }).waitFor();
      const toggle = small.getByRole("button", { name: "Workspaces" });
      expect((await toggle.getAttribute("aria-expanded")) === "false", "drawer starts open");
      expect(!(await nav(small).isVisible()), "the workspace list shows on a phone");
      await shot(small, "phone-dashboard");
      await toggle.click();
      await nav(small).getByRole("link", { name: /^Beta/ }).waitFor();
      await shot(small, "phone-workspaces");
      await nav(small).getByRole("link", { name: /^Beta/ }).click();
      await small.getByRole("heading", { name: "Beta" }).waitFor();
      await nav(small).waitFor({ state: "hidden" });
      await expectPath(small, `/w/${beta.id}`);
    } finally {
      await phone.close();
    }
  });
} catch (error) {
  await failed(error);
}
await browser.close();
console.log(timings.join("\n"));
console.log(`all dashboard journeys passed in ${secondsSince(started)} s`);

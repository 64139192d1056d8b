// The workspace's audit log in headless Chromium against a real `twistd cli-server`: a
// developer creates and deletes a sandbox, and the owner answers "who deleted that sandbox?"
// on the Audit tab (who, what, which sandbox, when, from where); the action filter narrows to
// deletions and says when nothing matches; "Load more" pages; the tab fits 1280 and 640 px
// windows; a developer and a guest have no tab and the API refuses them. Screenshots: audit.png
// and api-tokens.png (the owner's account page with a new token's secret).
//
//   node e2e/audit.mjs http://localhost:8080 ../docs/screenshots
import { expect, failed, newContext, register, secondsSince, shot, start } from "./common.mjs";

const started = Date.now();
const { base, browser } = await start();

async function call(context, method, path, data) {
  const response = await context.request.fetch(`${base}${path}`, { method, data });
  const text = await response.text();
  expect(response.ok(), `${method} ${path}: HTTP ${response.status()} ${text}`);
  return text ? JSON.parse(text) : null;
}

async function statusOfCall(context, method, path) {
  return (await context.request.fetch(`${base}${path}`, { method })).status();
}

async function waitForStatus(context, sandboxId, wanted) {
  for (let i = 0; i < 120; i++) {
    const sandbox = await call(context, "GET", `/api/sandboxes/${sandboxId}`);
    if (wanted.includes(sandbox.status)) return;
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  throw new Error(`sandbox ${sandboxId} never reached ${wanted}`);
}

/** A signed-up user in a fresh 1280×800 window, and their page. */
async function person(name) {
  const context = await newContext({ width: 1280, height: 800 });
  const page = await context.newPage();
  await register(page, name);
  return { context, page };
}

async function join(owner, workspace, member, username, role) {
  const invited = await call(owner.context, "POST", `/api/workspaces/${workspace.id}/members`, {
    username,
    role,
  });
  if (invited.status === "invited") {
    await call(member.context, "POST", `/api/invitations/${invited.invitation_id}/accept`);
  }
}

/** Whether the page scrolls sideways (content wider than the window). */
async function overflows(page) {
  return page.evaluate(
    () => document.documentElement.scrollWidth > document.documentElement.clientWidth,
  );
}

try {
  const owner = await person("olive");
  const dev = await person("devon");
  const guest = await person("gus");
  const workspace = await call(owner.context, "POST", "/api/workspaces", { name: "atelier" });
  await join(owner, workspace, dev, "devon", "developer");
  await join(owner, workspace, guest, "gus", "guest");

  // The developer makes a sandbox and deletes it again.
  const sandbox = await call(dev.context, "POST", `/api/workspaces/${workspace.id}/sandboxes`, {
    name: "scratchpad",
  });
  await waitForStatus(dev.context, sandbox.id, ["running", "failed"]);
  await call(dev.context, "DELETE", `/api/sandboxes/${sandbox.id}`);

  // The owner asks who deleted it.
  const page = owner.page;
  await page.goto(`${base}/w/${workspace.id}`);
  await page.getByRole("tab", { name: "Audit" }).click();
  const log = page.getByRole("region", { name: "Audit log" });
  const deleted = log.locator("tbody tr", { hasText: "deleted the sandbox" });
  await deleted.waitFor();
  const said = (await deleted.textContent()) ?? "";
  for (const part of ["devon", "deleted the sandbox", "scratchpad", "127.0.0.1", "just now"]) {
    expect(said.includes(part), `the deletion row says ${part}: ${said}`);
  }
  expect(/\d{1,2}:\d{2}/.test(said), `the deletion row has a time of day: ${said}`);
  const created = log.locator("tbody tr", { hasText: "created the sandbox" });
  expect((await created.textContent()).includes("devon"), "the creation row names devon");
  await log.locator("tbody tr", { hasText: "created the workspace" }).waitFor();
  expect(!(await log.textContent()).includes("sandbox.deleted"), "no raw action codes shown");
  expect(!(await overflows(page)), "the tab fits a 1280 px window");
  await shot(page, "audit");

  // The filter narrows to deletions, and says when nothing matches.
  await log.getByLabel("What").selectOption({ label: "Sandbox deleted" });
  await log.getByRole("button", { name: "Filter" }).click();
  await log.locator("tbody tr", { hasText: "created the sandbox" }).waitFor({ state: "detached" });
  const rows = await log.locator("tbody tr").allTextContents();
  expect(rows.length === 1 && rows[0].includes("scratchpad"), `only the deletion: ${rows}`);
  await log.getByLabel("What").selectOption({ label: "Sandbox paused" });
  await log.getByRole("button", { name: "Filter" }).click();
  await log.getByText("Nothing matches this filter").waitFor();
  await log.getByRole("button", { name: "Show everything" }).click();
  await log.locator("tbody tr", { hasText: "created the workspace" }).waitFor();

  // Enough rows for a second page, made cheaply: agent codes.
  for (let i = 0; i < 55; i++) {
    await call(dev.context, "POST", `/api/workspaces/${workspace.id}/agent-code`);
  }
  await page.reload();
  await log.locator("tbody tr").first().waitFor();
  const first = await log.locator("tbody tr").count();
  expect(first === 50, `one page of 50 rows at first: ${first}`);
  expect(!(await log.textContent()).includes("scratchpad"), "older rows are on the next page");
  await log.getByRole("button", { name: "Load more" }).click();
  await deleted.waitFor();
  await log.getByRole("button", { name: "Load more" }).waitFor({ state: "detached" });
  const all = await log.locator("tbody tr").count();
  expect(all > 55, `the next page added the older rows: ${all}`);

  // A narrow window: no sideways scrolling of the page.
  await page.setViewportSize({ width: 640, height: 800 });
  await deleted.waitFor();
  expect(!(await overflows(page)), "the tab fits a 640 px window");

  // Neither a developer nor a guest has the tab, and the API refuses them.
  for (const { page: theirs, context } of [dev, guest]) {
    await theirs.goto(`${base}/w/${workspace.id}`);
    await theirs.getByRole("tab", { name: "Members" }).waitFor();
    expect((await theirs.getByRole("tab", { name: "Audit" }).count()) === 0, "no Audit tab");
    await theirs.goto(`${base}/w/${workspace.id}/audit`);
    await theirs.getByText("Only owners and maintainers see the workspace's audit log.").waitFor();
    const status = await statusOfCall(context, "GET", `/api/workspaces/${workspace.id}/audit`);
    expect(status === 403, `the audit route answers 403, not ${status}`);
  }
  // The owner's API tokens page, a new token's secret shown once (worthless: a test server).
  await page.setViewportSize({ width: 1280, height: 800 });
  await page.locator("summary[aria-label='Account menu']").click();
  await page.getByRole("link", { name: "Account" }).click();
  const tokens = page.getByRole("region", { name: "API tokens" });
  await tokens.getByLabel("Token name").fill("audit export");
  await tokens.getByLabel("Scope").selectOption("read");
  await tokens.getByRole("button", { name: "Create token" }).click();
  await tokens.getByTestId("new-token").waitFor();
  await tokens.scrollIntoViewIfNeeded();
  await shot(page, "api-tokens");
  await tokens.getByRole("button", { name: "Done" }).click();
  await tokens.locator("li.token", { hasText: "audit export" }).waitFor();

  for (const { context } of [owner, dev, guest]) await context.close();
  console.log(`audit journey: ${secondsSince(started)} s`);
} catch (error) {
  await failed(error);
}
await browser.close();
process.exit(0);

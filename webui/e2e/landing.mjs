// A sandbox's shared address in headless Chromium against a real cli-server (started with
// --direct-members '*') and real opencode: a member signed in on the dashboard opens the copied
// link and lands in opencode on /data/disk0; a signed-out visitor gets the sign-in screen and,
// signed in, lands there too; a paused sandbox offers "Resume and open"; a guest lands on the
// project's latest session, and opencode refuses its prompt in words.
//
//   node e2e/landing.mjs http://localhost:8080 ../docs/screenshots
//
// Exits non-zero on the first failed expectation.
import {
  cardOf,
  DESKTOP,
  expect,
  newContext,
  PASSWORD,
  PHONE,
  register,
  secondsSince,
  shot,
  signIn,
  start,
} from "./common.mjs";

const { base, browser } = await start({ timeout: 60_000 });
const started = Date.now();
const IN_OPENCODE =
  /^http:\/\/oc-[0-9a-f-]{36}\.localhost:\d+\/(new-session|[A-Za-z0-9_-]+\/session)/;

async function person(username) {
  const context = await newContext();
  const page = await context.newPage();
  await register(page, username);
  return { context, page };
}

/** A JSON call from a page, as its own scripts make it (same origin, its cookies). */
async function call(page, method, path, body) {
  return page.evaluate(
    async ([m, p, b]) => {
      const r = await fetch(p, {
        method: m,
        headers: b === undefined ? {} : { "content-type": "application/json" },
        body: b === undefined ? undefined : JSON.stringify(b),
      });
      return { status: r.status, body: await r.json().catch(() => null) };
    },
    [method, path, body],
  );
}

async function inOpencode(page) {
  await page.waitForURL(IN_OPENCODE);
  await page.getByText("disk0", { exact: true }).first().waitFor();
  const where = await page.evaluate(async () => (await fetch("/path")).json());
  expect(where.directory === "/data/disk0", `opencode works in ${where.directory}`);
}

try {
  const alice = await person("alice");
  const bob = await person("bob");
  const carol = await person("carol");
  await alice.page.getByLabel("New workspace").fill("Links");
  await alice.page.getByRole("button", { name: "Create workspace" }).click();
  await alice.page.getByRole("heading", { name: "Links" }).waitFor();
  const workspaceId = new URL(alice.page.url()).pathname.split("/")[2];
  for (const [username, role] of [
    ["bob", "developer"],
    ["carol", "guest"],
  ]) {
    const added = await call(alice.page, "POST", `/api/workspaces/${workspaceId}/members`, {
      username,
      role,
    });
    expect(added.status === 201 || added.status === 200, `adding ${username}: ${added.status}`);
  }
  await alice.page.getByPlaceholder("Name a new sandbox").fill("shared");
  await alice.page.getByRole("button", { name: "New sandbox" }).click();
  const card = cardOf(alice.page, "shared");
  await card.getByRole("status").filter({ hasText: "Running" }).waitFor();
  const link = await card.getByLabel("Link to shared").inputValue();
  const sandboxId = /oc-([0-9a-f-]{36})\./.exec(link)?.[1];
  expect(sandboxId, `link is ${link}`);

  // bob, signed in on the dashboard only, opens the copied link: into the work at once.
  const seen = [];
  bob.page.on("framenavigated", (frame) => {
    if (frame === bob.page.mainFrame()) seen.push(frame.url());
  });
  await bob.page.goto(link);
  await inOpencode(bob.page);
  expect(
    seen.some((u) => u === `${base}/open/${sandboxId}`),
    `bob did not pass the open page: ${seen.join(" ")}`,
  );
  console.log("member opened the shared link");
  // A deeper path of the same link works as well.
  await bob.page.goto(`${link}global/health`);
  expect((await bob.page.textContent("body"))?.includes("healthy"), "no health answer");

  // A signed-out visitor: the sign-in screen first, kept address, then the work.
  const visitor = await newContext();
  const stranger = await visitor.newPage();
  await stranger.goto(link);
  await stranger.waitForURL(`${base}/open/${sandboxId}`);
  await stranger.getByRole("heading", { name: "Sign in to cli-server" }).waitFor();
  await shot(stranger, "open-link-sign-in");
  await stranger.getByLabel("Username").fill("bob");
  await stranger.getByLabel("Password").fill(PASSWORD);
  await stranger.getByRole("button", { name: "Sign in" }).click();
  await inOpencode(stranger);
  console.log("signed-out visitor signed in and opened the link");

  // Someone not in the workspace reads why nothing opens.
  const dave = await person("dave");
  await dave.page.goto(link);
  await dave.page
    .getByText("This sandbox does not exist or you are not a member of its workspace.")
    .waitFor();
  await shot(dave.page, "open-link-not-member");

  // bob starts a session (opencode's own API), for the guest to read.
  const made = await bob.page.evaluate(async () => {
    const r = await fetch("/session", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ title: "Shared notes" }),
    });
    return { status: r.status, body: await r.json() };
  });
  expect(made.status === 200 && made.body.id, `creating a session: ${made.status}`);

  // carol, a guest: the project's latest session (to read), not a new-session prompt.
  const guestSeen = [];
  carol.page.on("framenavigated", (frame) => {
    if (frame === carol.page.mainFrame()) guestSeen.push(frame.url());
  });
  await carol.page.goto(link);
  await carol.page.waitForURL(new RegExp(`/session/${made.body.id}`));
  try {
    await carol.page.getByText("Shared notes").first().waitFor();
  } finally {
    await shot(carol.page, "guest-opencode");
  }
  const refused = await carol.page.evaluate(async () => {
    const r = await fetch("/session", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: "{}",
    });
    return { status: r.status, body: await r.json() };
  });
  expect(
    refused.status === 403 &&
      refused.body.name === "Forbidden" &&
      refused.body.data.message.includes("read-only"),
    `a guest's POST /session: ${JSON.stringify(refused)}`,
  );
  // Prompting anyway: opencode's own UI says why not (our 403, in its error shape).
  const prompt = carol.page.getByRole("textbox").last();
  await prompt.click();
  await prompt.pressSequentially("hello");
  await carol.page.keyboard.press("Enter");
  await carol.page.getByText("Failed to send prompt").waitFor();
  await carol.page.getByText(/You are a guest in this workspace: opencode is read-only/).waitFor();
  await shot(carol.page, "guest-opencode");
  console.log("guest prompt refused in opencode's own words");
  console.log(`guest landed on the latest session (${guestSeen.at(-1)})`);

  // Paused: bob's open page offers Resume and open; the guest's says she cannot.
  const paused = await call(alice.page, "POST", `/api/sandboxes/${sandboxId}/pause`);
  expect(paused.status === 200, `pause: ${paused.status}`);
  await card.getByRole("status").filter({ hasText: "Paused" }).waitFor();
  await carol.page.goto(`${base}/open/${sandboxId}`);
  await carol.page.getByText(/As a guest you cannot resume it/).waitFor();
  expect(
    (await carol.page.getByRole("button", { name: "Resume and open" }).count()) === 0,
    "a guest is offered Resume",
  );
  // (bob on another browser: signed in on the dashboard, never on the sandbox)
  const laptop = await newContext();
  const other = await laptop.newPage();
  await signIn(other, "bob");
  await other.goto(link);
  await other.waitForURL(`${base}/open/${sandboxId}`);
  await other.getByRole("button", { name: "Resume and open" }).waitFor();
  await shot(other, "open-link-paused");
  await other.setViewportSize(PHONE);
  await other.emulateMedia({ colorScheme: "dark" });
  await shot(other, "open-link-paused-phone-dark");
  await other.setViewportSize(DESKTOP);
  await other.getByRole("button", { name: "Resume and open" }).click();
  await inOpencode(other);
  console.log("paused sandbox resumed and opened");
  console.log(`landing journey passed in ${secondsSince(started)} s`);
} finally {
  await browser.close();
}

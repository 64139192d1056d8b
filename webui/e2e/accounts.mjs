// Accounts and the instance (issue 17, item 6) in headless Chromium against a real
// `twistd cli-server`:
//
//   node e2e/accounts.mjs BASE_URL SCREENSHOT_DIR open     # a fresh server, open registration
//   node e2e/accounts.mjs BASE_URL SCREENSHOT_DIR closed   # the same server restarted closed
//   node e2e/accounts.mjs BASE_URL SCREENSHOT_DIR invite   # ... and restarted by invitation
//
// "open": a password change in one browser signs the same user's other browser out; the
// admin's users page disables a user, whose open dashboard is signed out. "closed": the
// sign-in screen says registration is closed and offers no sign-up. "invite": a sign-up
// link from the users page creates an account, once. Screenshots of the
// account page, the users page and the closed sign-in screen, desktop and phone; with
// DARK_SHOTS=dir, dark-scheme ones there too (for looking, not for docs/).
import {
  expect,
  journey,
  newContext,
  PASSWORD,
  register,
  shoot,
  shot,
  signIn,
  start,
  timings,
} from "./common.mjs";

const { base, args, browser } = await start({
  usage: "[open|closed|invite]",
  defaults: ["open"],
});
const [scenario] = args;

async function signInScreen(page) {
  await page.getByRole("heading", { name: "Sign in to cli-server" }).waitFor();
}

async function openFromMenu(page, link) {
  await page.locator("summary[aria-label='Account menu']").click();
  await page.getByRole("link", { name: link }).click();
}

async function openScenario() {
  await journey("a password change signs the user's other browser out", async () => {
    const here = await newContext();
    const there = await newContext();
    const page = await here.newPage();
    await page.goto(base);
    await page.getByRole("button", { name: "New here? Create an account" }).click();
    await page.getByText("No accounts yet: this first one becomes the administrator").waitFor();
    await shot(page, "signup-first");
    await register(page, "alice", { rulesFirst: true }); // the first account: the admin
    const other = await there.newPage();
    await signIn(other, "alice");

    await openFromMenu(page, "Account");
    await page.getByRole("heading", { name: "Account" }).waitFor();
    const sessions = page.locator("li.session");
    await sessions.nth(1).waitFor();
    expect((await sessions.count()) === 2, "two sessions listed");
    expect(
      (await page.locator("li.session[data-current]").getByText("This device").count()) === 1,
      "this device marked once",
    );

    // Errors next to the field that caused them.
    await page.getByLabel("Current password").fill("not my password");
    await page.getByLabel("New password", { exact: true }).fill("a brand new password");
    await page.getByLabel("Repeat the new password").fill("a brand new password");
    await page.getByRole("button", { name: "Change password" }).click();
    const wrong = page.locator("#current_password-error");
    await wrong.filter({ hasText: "That is not your current password." }).waitFor();
    expect(
      (await page.getByLabel("Current password").getAttribute("aria-invalid")) === "true",
      "the current password field marked invalid",
    );
    await page.getByLabel("Current password").fill(PASSWORD);
    await page.getByLabel("Repeat the new password").fill("something else");
    await page.getByRole("button", { name: "Change password" }).click();
    await page.locator("#repeat-error").filter({ hasText: "does not match" }).waitFor();

    await page.getByLabel("Repeat the new password").fill("a brand new password");
    await page.getByRole("button", { name: "Change password" }).click();
    await page.getByRole("status").filter({ hasText: "Password changed" }).waitFor();
    // The list is read again: only this device is left, with no Revoke.
    await page.waitForFunction(() => document.querySelectorAll("li.session").length === 1);
    expect((await page.getByRole("button", { name: /^Revoke/ }).count()) === 0, "stale Revoke");

    // The other browser's next action lands on the sign-in screen, which says why.
    await other.getByLabel("New workspace").fill("After the change");
    await other.getByRole("button", { name: "Create workspace" }).click();
    await signInScreen(other);
    await other.getByText("You were signed out: your session ended on another device").waitFor();
    await signIn(other, "alice", "a brand new password");

    // This browser kept its session; the list now has this device and the new sign-in.
    await page.reload();
    await page.getByRole("heading", { name: "Account" }).waitFor();
    await page.locator("li.session").nth(1).waitFor();
    expect((await page.locator("li.session").count()) === 2, "this device and the new one");
    // Revoke the other one from here: it is signed out at once.
    await page.locator("li.session:not([data-current])").getByRole("button").click();
    await page.waitForFunction(() => document.querySelectorAll("li.session").length === 1);
    await other.reload();
    await signInScreen(other);
    await here.close();
    await there.close();
  });

  await journey("the admin disables a user; their open dashboard is signed out", async () => {
    const admin = await newContext();
    const user = await newContext();
    const page = await admin.newPage();
    await signIn(page, "alice", "a brand new password");
    const bob = await user.newPage();
    await register(bob, "bob", { rulesFirst: true });
    await bob.getByLabel("New workspace").fill("Bob's team");
    await bob.getByRole("button", { name: "Create workspace" }).click();
    await bob.getByRole("heading", { name: "Bob's team" }).waitFor();

    await openFromMenu(page, "Users");
    await page.getByRole("heading", { name: "Users" }).waitFor();
    const row = page.locator("tr[data-username='bob']");
    await row.getByText("Active").waitFor();
    expect(
      (await page
        .locator("tr[data-username='alice']")
        .getByRole("button", { name: "Disable" })
        .count()) === 0,
      "the admin is not offered to disable themselves",
    );
    await row.getByRole("button", { name: "Disable" }).click();
    await page.getByRole("dialog").getByRole("button", { name: "Disable bob" }).click();
    await row.getByText("Disabled").waitFor();

    // Bob's dashboard, left alone, notices within seconds (its next poll gets 401).
    await signInScreen(bob);
    await bob.getByLabel("Username").fill("bob");
    await bob.getByLabel("Password").fill(PASSWORD);
    await bob.getByRole("button", { name: "Sign in" }).click();
    await bob.getByRole("alert").filter({ hasText: "disabled" }).waitFor();

    // Enable again; a reset shows a temporary password once, which signs bob in.
    await row.getByRole("button", { name: "Enable" }).click();
    await row.getByText("Active").waitFor();
    await row.getByRole("button", { name: "Reset password" }).click();
    await page.getByRole("dialog").getByRole("button", { name: "Reset password" }).click();
    const temporary = (await row.locator("pre.temporary-password").textContent())?.trim();
    expect(temporary && temporary.length >= 12, "a temporary password shown");
    await row.getByRole("button", { name: "Copy" }).waitFor();
    await shot(page, "users-reset");
    await signIn(bob, "bob", temporary);
    await admin.close();
    await user.close();
  });

  await journey("screenshots: account page and users page", async () => {
    const asAlice = (page) => signIn(page, "alice", "a brand new password");
    await shoot("account", async (page) => {
      await asAlice(page);
      await page.goto(`${base}/account`);
      await page.locator("li.session").first().waitFor();
    });
    await shoot("users", async (page) => {
      await asAlice(page);
      await page.goto(`${base}/admin/users`);
      await page.locator("tr[data-username='bob']").waitFor();
      await page.getByText("Registration is open").waitFor();
    });
  });
}

async function closedScenario() {
  await journey("registration closed: the sign-in screen says so, offers no sign-up", async () => {
    const ctx = await newContext();
    const page = await ctx.newPage();
    await page.goto(base);
    await page
      .getByText("Registration is closed — ask your administrator for an account.")
      .waitFor();
    expect(
      (await page.getByRole("button", { name: "New here? Create an account" }).count()) === 0,
      "no sign-up offered",
    );
    await signIn(page, "alice", "a brand new password"); // signing in still works
    await ctx.close();
  });
  await shoot("signin-closed", async (page) => {
    await page.goto(base);
    await page.getByText("Registration is closed").waitFor();
  });
}

async function inviteScenario() {
  await journey("registration by invite: the admin's sign-up link creates an account", async () => {
    const admin = await newContext();
    const page = await admin.newPage();
    await page.goto(base);
    await page.getByText("New accounts need a sign-up link").waitFor();
    expect(
      (await page.getByRole("button", { name: "New here? Create an account" }).count()) === 0,
      "no sign-up offered without a link",
    );
    await signIn(page, "alice", "a brand new password");
    await openFromMenu(page, "Users");
    await page.getByText("Registration is by invitation").waitFor();
    await page.getByRole("button", { name: "Create sign-up link" }).click();
    const url = (await page.locator("pre.signup-url").textContent())?.trim() ?? "";
    expect(url.includes("/#invite="), `a sign-up link (${url})`);
    await shot(page, "users-invite");

    const newcomer = await newContext();
    const join_ = await newcomer.newPage();
    // The link names the server's configured origin; open its path on the address under test.
    await join_.goto(base + new URL(url).pathname + new URL(url).hash);
    await join_.getByText("You were invited").waitFor();
    await join_.getByLabel("Username").fill("carol");
    await join_.getByLabel("Password").fill(PASSWORD);
    await join_.getByRole("button", { name: "Create account" }).click();
    await join_.locator("summary[aria-label='Account menu']").waitFor();
    expect(!join_.url().includes("invite="), "the token left the address bar");

    // The link worked once.
    const again = await (await newContext()).newPage();
    await again.goto(base + new URL(url).pathname + new URL(url).hash);
    await again.getByLabel("Username").fill("dave");
    await again.getByLabel("Password").fill(PASSWORD);
    await again.getByRole("button", { name: "Create account" }).click();
    await again.getByRole("alert").filter({ hasText: "already used" }).waitFor();
    await admin.close();
    await newcomer.close();
  });
}

try {
  if (scenario === "closed") await closedScenario();
  else if (scenario === "invite") await inviteScenario();
  else await openScenario();
  console.log(`accounts journeys (${scenario}) passed\n${timings.join("\n")}`);
} catch (error) {
  console.error(`FAILED after: ${timings.join(", ")}\n${error.stack ?? error}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}

// The account side of single sign-on (issue 20) in headless Chromium against a real
// cli-server whose providers are configured (GitHub and an OpenID provider labelled
// "Keycloak"); the pytest driver (tests/integration/test_journey_sso_accounts.py) makes a
// user through the account side and hands its session to this browser:
//
//   SESSION=<token> node e2e/sso-accounts.mjs BASE_URL SCREENSHOT_DIR accounts
//   node e2e/sso-accounts.mjs BASE_URL SCREENSHOT_DIR sso-only   # --password-login off
//
// "accounts": a refused sign-in lands on the sign-in screen with a sentence (the address
// cleaned), one button per provider; an account made by a provider cannot unlink its only
// way in, sets a first password without a current one, then may unlink; back from a link,
// the page says so, and a refused link is said there. "sso-only": no password form, only the providers' buttons.
// Screenshots desktop and phone; with DARK_SHOTS=dir, dark-scheme ones there too.
import { DESKTOP, expect, journey, newContext, shoot, start, timings } from "./common.mjs";

const { base, args, browser } = await start({
  usage: "[accounts|sso-only]",
  defaults: ["accounts"],
});
const [scenario] = args;
const session = process.env.SESSION;

async function context(viewport = DESKTOP, colorScheme = "light", signedIn = false) {
  const made = await newContext(viewport, colorScheme);
  if (signedIn) await signedInAs(made);
  return made;
}

/** The session the driver made, as a cookie. */
async function signedInAs(ctx) {
  await ctx.addCookies([{ name: "cli_session", value: session, url: base }]);
}

async function refusedSignIn(page) {
  await page.goto(`${base}/?sso_error=account_exists`);
  await page.getByRole("alert").filter({ hasText: "An account with your email address" }).waitFor();
  await page.getByRole("link", { name: "Sign in with Keycloak" }).waitFor();
}

async function accountsScenario() {
  await journey("a refused sign-in is said in words; a button per provider", async () => {
    const ctx = await context();
    const page = await ctx.newPage();
    await refusedSignIn(page);
    expect(new URL(page.url()).search === "", "the code left the address bar");
    const github = page.getByRole("link", { name: "Sign in with GitHub" });
    expect(
      (await github.getAttribute("href")) === "/api/auth/oidc/github/login?return_to=%2F",
      "GitHub's button starts its sign-in, back to this page",
    );
    await page.getByLabel("Password").waitFor(); // (password login is on here)
    await ctx.close();
  });
  await shoot("sso-signin", refusedSignIn);

  const methods = (page) => page.getByRole("region", { name: "Sign-in methods" });
  async function accountPage(page) {
    await page.goto(`${base}/account`);
    await methods(page).getByRole("button", { name: "Unlink GitHub" }).waitFor();
    await page.getByRole("heading", { name: "Set a password" }).waitFor();
  }
  await shoot("sso-account", accountPage, signedInAs);

  await journey("the only way in stays; a first password; then unlink", async () => {
    const ctx = await context(DESKTOP, "light", true);
    const page = await ctx.newPage();
    await accountPage(page);
    const unlink = methods(page).getByRole("button", { name: "Unlink GitHub" });
    expect(await unlink.isDisabled(), "the only way in cannot be unlinked");
    await methods(page).getByText("This is your only way to sign in").waitFor();
    const link = methods(page).getByRole("link", { name: "Link Keycloak" });
    expect(
      (await link.getAttribute("href")) ===
        "/api/auth/oidc/oidc/login?link=1&return_to=%2Faccount%3Flinked%3Doidc",
      "Link Keycloak starts a link, back to the account page",
    );
    expect((await page.getByLabel("Current password").count()) === 0, "no current password");
    await page.getByLabel("New password", { exact: true }).fill("a first password");
    await page.getByLabel("Repeat the new password").fill("a first password");
    await page.getByRole("button", { name: "Set password" }).click();
    await page.getByRole("status").filter({ hasText: "Password set" }).waitFor();
    await page.getByRole("heading", { name: "Change password" }).waitFor();
    await methods(page).getByText("Set. Change it below.").waitFor();
    expect(!(await unlink.isDisabled()), "with a password, GitHub may be unlinked");
    await unlink.click();
    await methods(page).getByRole("link", { name: "Link GitHub" }).waitFor();
    expect((await unlink.count()) === 0, "GitHub is unlinked");

    await page.goto(`${base}/account?linked=oidc`);
    await page.getByRole("status").filter({ hasText: "Keycloak linked" }).waitFor();
    expect(new URL(page.url()).search === "", "the address bar forgot it");

    // A refused link lands signed in on /?sso_error=: the account page says why.
    await page.goto(`${base}/?sso_error=identity_taken`);
    await page
      .getByRole("alert")
      .filter({ hasText: "already linked to another account" })
      .waitFor();
    expect(new URL(page.url()).pathname === "/account", "moved to the account page");
    expect(new URL(page.url()).search === "", "the code left the address bar");
    await ctx.close();
  });
}

async function ssoOnlyScenario() {
  async function signInScreen(page) {
    await page.goto(base);
    await page.getByRole("link", { name: "Sign in with GitHub" }).waitFor();
    await page.getByRole("link", { name: "Sign in with Keycloak" }).waitFor();
  }
  await journey("password login off: only the providers' buttons", async () => {
    const ctx = await context();
    const page = await ctx.newPage();
    await signInScreen(page);
    await page.waitForLoadState("load");
    // (the form goes once the server said so)
    await page.getByLabel("Password").waitFor({ state: "detached" });
    expect((await page.getByRole("button", { name: "Sign in" }).count()) === 0, "no form");
    await ctx.close();
  });
  await shoot("sso-only-signin", async (page) => {
    await signInScreen(page);
    await page.getByLabel("Password").waitFor({ state: "detached" });
  });
}

try {
  if (scenario === "sso-only") await ssoOnlyScenario();
  else await accountsScenario();
  console.log(`sso account journeys (${scenario}) passed\n${timings.join("\n")}`);
} catch (error) {
  console.error(`FAILED after: ${timings.join(", ")}\n${error.stack ?? error}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}

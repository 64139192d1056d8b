// Single sign-on in headless Chromium against a real `twistd cli-server` whose OpenID
// provider is a real one (npm oidc-provider, tests/integration/oidc/provider.mjs):
//
//   node e2e/sso.mjs http://localhost:8080 ../docs/screenshots "Company login"
//
// 1. the sign-in screen's button -> the provider's login and consent -> the dashboard,
//    signed in; 2. cancelled at the provider -> back on the sign-in screen, which says so.
import { DESKTOP, newContext, PHONE, shot, start } from "./common.mjs";

const { base, args, browser } = await start({
  usage: "[BUTTON_LABEL]",
  defaults: ["Single sign-on"],
});
const [label] = args;

async function withPage(viewport, colorScheme, work) {
  const context = await newContext(viewport, colorScheme);
  try {
    await work(await context.newPage());
  } finally {
    await context.close();
  }
}

function ssoButton(page) {
  return page.getByRole("link", { name: new RegExp(label) });
}

try {
  await withPage(DESKTOP, "light", async (page) => {
    await page.goto(base);
    await ssoButton(page).waitFor();
    await shot(page, "sso-oidc-signin");
    await ssoButton(page).click();
    // The provider's own pages (oidc-provider's development login and consent).
    await page.locator("input[name=login]").fill("journey-user");
    await page.locator("input[name=password]").fill("any password");
    await page.getByRole("button", { name: "Sign-in" }).click();
    await page.getByRole("button", { name: "Continue" }).click();
    await page.locator("summary[aria-label='Account menu']").waitFor();
    if (new URL(page.url()).origin !== new URL(base).origin) throw new Error(`on ${page.url()}`);
    const me = await page.evaluate(() => fetch("/api/auth/me").then((r) => r.json()));
    if (me.email !== "journey-user@example.com")
      throw new Error(`signed in as ${JSON.stringify(me)}`);
    console.log(`signed in through the provider as ${me.username}`);
  });

  for (const [viewport, scheme, name] of [
    [DESKTOP, "light", "sso-denied"],
    [PHONE, "dark", "sso-denied-phone-dark"],
  ]) {
    await withPage(viewport, scheme, async (page) => {
      await page.goto(base);
      await ssoButton(page).click();
      await page.getByRole("link", { name: "[ Cancel ]" }).click();
      await page.getByText("The sign-in was cancelled at the provider.").waitFor();
      await ssoButton(page).waitFor(); // (and it may be tried again from here)
      if (new URL(page.url()).origin !== new URL(base).origin) throw new Error(`on ${page.url()}`);
      await shot(page, name);
      console.log(`cancelled at the provider: the sign-in screen says so (${name})`);
    });
  }
} finally {
  await browser.close();
}

// Personal API tokens in headless Chromium against a real `twistd cli-server`: a token made
// on the account page (its secret shown once) works from a script, its last use shows up in
// the list, and revoking it there ends it.
//
//   node e2e/tokens.mjs http://localhost:8080 ../docs/screenshots
//
// The script is the driver (tests/integration/test_journey_tokens.py): this prints
// "TOKEN <secret>" and waits for a line once the driver has used it, then "REVOKED" and waits
// for a line once the driver saw it refused. Exits non-zero on the first failed expectation.
import { createInterface } from "node:readline";
import { expect, failed, newContext, register, secondsSince, shot, start } from "./common.mjs";

const { browser } = await start();
const started = Date.now();
const input = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

async function driverSays() {
  const { value, done } = await input.next();
  expect(!done, "the driver went away");
  return value;
}

try {
  const context = await newContext();
  const page = await context.newPage();
  await register(page, "tess");
  await page.locator("summary[aria-label='Account menu']").click();
  await page.getByRole("link", { name: "Account" }).click();
  const tokens = page.getByRole("region", { name: "API tokens" });
  await tokens.waitFor();
  await tokens.getByText("No tokens yet.").waitFor();

  await tokens.getByLabel("Token name").fill("nightly build");
  await tokens.getByLabel("Scope").selectOption("write");
  expect(
    (await tokens.getByLabel("Expires after").inputValue()) === "30",
    "30 days is the default expiry",
  );
  await tokens.getByRole("button", { name: "Create token" }).click();
  const secret = (await tokens.getByTestId("new-token").textContent()) ?? "";
  expect(/^cli_pat_[A-Za-z0-9_-]{43}$/.test(secret), `a token was shown: ${secret}`);
  await tokens.getByText("it is not shown again").waitFor();
  await shot(page, "account-api-tokens", { fullPage: true });
  await tokens.getByRole("button", { name: "Done" }).click();
  expect((await tokens.getByTestId("new-token").count()) === 0, "the secret is gone");

  console.log(`TOKEN ${secret}`);
  expect((await driverSays()) === "used", "the driver used the token");
  await page.reload();
  const row = page.locator("li.token", { hasText: "nightly build" });
  await row.getByText("last used just now").waitFor();
  expect((await row.textContent()).includes("expires in 29 days"), "30 days left, less a bit");
  expect(!(await page.content()).includes(secret), "the secret is not on the page again");

  await row.getByRole("button", { name: "Revoke" }).click();
  await page.getByRole("button", { name: "Revoke token" }).click();
  await tokens.getByText("No tokens yet.").waitFor();
  console.log("REVOKED");
  expect((await driverSays()) === "refused", "the driver saw the token refused");
  await context.close();
  console.log(`tokens journey: ${secondsSince(started)} s`);
} catch (error) {
  await failed(error);
}
await browser.close();
process.exit(0);

// What the browser journeys share: their arguments, the browser, contexts, the sign-up and
// sign-in forms, screenshots and the timings they print. A script starts with
//
//   const { base, shots, args } = await start({ usage: "[SCENARIO]", defaults: ["open"] });
//
// (`node e2e/<script> BASE_URL [SCREENSHOT_DIR] ...`); the helpers below then know the base
// URL, the screenshot folder and the browser.
import { mkdirSync } from "node:fs";
import { basename, join } from "node:path";
import { launchChromium } from "./chromium.mjs";

export const PASSWORD = "correct horse battery";
export const DESKTOP = { width: 1200, height: 800 };
export const PHONE = { width: 390, height: 844 };
/** With DARK_SHOTS=dir, `shoot` saves dark-scheme screenshots there too (not for docs/). */
export const dark = process.env.DARK_SHOTS;
export const timings = [];

const run = {};

/**
 * Reads `BASE_URL [SCREENSHOT_DIR] ...rest` (rest filled from `defaults`), makes the folders,
 * launches Chromium; contexts made here time out after `timeout` ms. Exits 2 on bad usage
 * (no base URL, or `valid(args)` false).
 */
export async function start({ usage = "", defaults = [], timeout = 30_000, valid } = {}) {
  const [base, shots = "screenshots", ...rest] = process.argv.slice(2);
  const args = defaults.map((fallback, i) => rest[i] ?? fallback);
  if (!base || (valid && !valid(args))) {
    const script = basename(process.argv[1]);
    console.error(`usage: node e2e/${script} BASE_URL [SCREENSHOT_DIR] ${usage}`.trimEnd());
    process.exit(2);
  }
  mkdirSync(shots, { recursive: true });
  if (dark) mkdirSync(dark, { recursive: true });
  Object.assign(run, { base, shots, timeout, browser: await launchChromium() });
  return { base, shots, args, browser: run.browser };
}

export function expect(condition, message) {
  if (!condition) throw new Error(message);
}

/** Seconds since `began` (a `Date.now()`), one decimal. */
export function secondsSince(began) {
  return ((Date.now() - began) / 1000).toFixed(1);
}

/** Runs `work`, noting how long it took in `timings`. */
export async function journey(name, work) {
  const t = Date.now();
  await work();
  timings.push(`${name}: ${secondsSince(t)} s`);
}

/** A context at `viewport` (in `colorScheme` if given), timing out as `start` was told. */
export async function newContext(viewport = DESKTOP, colorScheme = undefined, more = {}) {
  const scheme = colorScheme ? { colorScheme } : {};
  const made = await run.browser.newContext({ viewport, ...scheme, ...more });
  made.setDefaultTimeout(run.timeout);
  return made;
}

/** `SCREENSHOT_DIR/<name>.png` of the page. */
export async function shot(page, name, options = {}) {
  await page.screenshot({ path: join(run.shots, `${name}.png`), ...options });
}

/**
 * Full-page screenshots of what `show(page)` opens in a fresh context, desktop and phone
 * (`name`, `name-phone`), and dark ones in DARK_SHOTS if set; `prepare(context)` first.
 */
export async function shoot(name, show, prepare) {
  const variants = [
    [run.shots, DESKTOP, "light", name],
    [run.shots, PHONE, "light", `${name}-phone`],
  ];
  if (dark) {
    variants.push([dark, DESKTOP, "dark", name], [dark, PHONE, "dark", `${name}-phone`]);
  }
  for (const [dir, viewport, scheme, file] of variants) {
    const ctx = await newContext(viewport, scheme);
    if (prepare) await prepare(ctx);
    const page = await ctx.newPage();
    await show(page);
    await page.screenshot({ path: join(dir, `${file}.png`), fullPage: true });
    await ctx.close();
  }
}

/** Signs up on the sign-in screen; `rulesFirst`: the password rules show before submitting. */
export async function register(page, username, { rulesFirst = false } = {}) {
  await page.goto(run.base);
  await page.getByRole("button", { name: "New here? Create an account" }).click();
  await page.getByLabel("Username").fill(username);
  await page.getByLabel("Password").fill(PASSWORD);
  if (rulesFirst) await page.getByText("Password: at least 8 characters.").waitFor();
  await page.getByRole("button", { name: "Create account" }).click();
  await page.locator("summary[aria-label='Account menu']").waitFor();
}

export async function signIn(page, username, password = PASSWORD) {
  await page.goto(run.base);
  await page.getByLabel("Username").fill(username);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.locator("summary[aria-label='Account menu']").waitFor();
}

/** The sandbox card named `name` on the dashboard. */
export function cardOf(page, name) {
  return page.locator("li.sandbox", { hasText: name });
}

export function statusOf(page, name) {
  return cardOf(page, name).getByRole("status");
}

/** On failure: says so, closes the browser and exits 1. */
export async function failed(error) {
  console.error(`E2E FAILED: ${error?.stack ?? error}`);
  await run.browser.close();
  process.exit(1);
}

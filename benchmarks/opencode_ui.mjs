// Loads opencode's UI in headless Chromium, for benchmarks/opencode_ui.py: reads the plan (JSON:
// rounds, targets with url and a cookie or headers) on stdin, prints one JSON line per load.
// Loaded ("ms"): the load event has fired, opencode's session search box is in the document
// and, for QUIET_MS, no request but an event stream has been pending; the time is the latest
// of the load event's end, the search box's appearance and the last response's end, from the
// navigation's start.
import { launchChromium } from "../webui/e2e/chromium.mjs";

const QUIET_MS = 500;
const TIMEOUT_MS = 60000;
const SEARCH = 'input[placeholder="Search sessions"]'; // on opencode's home page

// Runs in every document before its own scripts: when did the search box first appear?
const marks = `
  performance.setResourceTimingBufferSize(100000);
  window.__searchSeen = 0;
  new MutationObserver((_, observer) => {
    if (document.querySelector(${JSON.stringify(SEARCH)})) {
      window.__searchSeen = performance.now();
      observer.disconnect();
    }
  }).observe(document, { childList: true, subtree: true });
`;

async function load(context, url) {
  const page = await context.newPage();
  const pending = new Set();
  let last = Date.now();
  let failed = 0;
  const done = (request) => {
    pending.delete(request);
    last = Date.now();
  };
  page.on("request", (request) => {
    pending.add(request);
    last = Date.now();
  });
  page.on("requestfinished", done);
  page.on("requestfailed", (request) => {
    failed += 1;
    done(request);
  });
  page.on("response", (response) => {
    if (response.status() >= 400) failed += 1;
    if ((response.headers()["content-type"] ?? "").startsWith("text/event-stream"))
      done(response.request());
  });
  const began = Date.now();
  await page.goto(url, { waitUntil: "load", timeout: TIMEOUT_MS });
  await page.waitForSelector(SEARCH, { state: "attached", timeout: TIMEOUT_MS });
  while (pending.size > 0 || Date.now() - last < QUIET_MS) {
    if (Date.now() - began > TIMEOUT_MS) throw new Error(`${url}: still loading`);
    await page.waitForTimeout(50);
  }
  const result = await page.evaluate(() => {
    const nav = performance.getEntriesByType("navigation")[0];
    const resources = performance.getEntriesByType("resource");
    const bytes = [nav, ...resources].reduce((sum, r) => sum + (r.transferSize ?? 0), 0);
    const last = resources.reduce((a, b) => (b.responseEnd > a.responseEnd ? b : a), nav);
    return {
      ms: Math.max(nav.loadEventEnd, window.__searchSeen, last.responseEnd) - nav.startTime,
      load_ms: nav.loadEventEnd - nav.startTime,
      last: new URL(last.name).pathname,
      search_ms: window.__searchSeen - nav.startTime,
      requests: resources.length + 1,
      kib: bytes / 1024,
    };
  });
  await page.close();
  return { ...result, failed };
}

const plan = JSON.parse(await new Promise((resolve) => {
  let text = "";
  process.stdin.on("data", (chunk) => (text += chunk));
  process.stdin.on("end", () => resolve(text));
}));
const browser = await launchChromium();
try {
  const names = Object.keys(plan.targets);
  for (let round = 1; round <= plan.rounds; round++) {
    const turn = (round - 1) % names.length;
    for (const name of [...names.slice(turn), ...names.slice(0, turn)]) {
      const target = plan.targets[name];
      const context = await browser.newContext({ extraHTTPHeaders: target.headers ?? {} });
      if (target.cookie) await context.addCookies([{ ...target.cookie, path: "/" }]);
      await context.addInitScript(marks);
      try {
        for (const cache of ["cold", "warm"]) {
          const result = await load(context, target.url);
          console.log(JSON.stringify({ round, target: name, cache, ...result }));
        }
      } finally {
        await context.close();
      }
    }
  }
} finally {
  await browser.close();
}

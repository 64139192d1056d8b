// Cross-sandbox attacks in headless Chromium (Debian's, driven by playwright-core): a page
// served by sandbox A attacks sandbox B while the victim is signed in on both and on the main
// site; then B's own page uses B, and B's paused page is resumed with its button.
//
//   node e2e/isolation.mjs '{"base": ..., "a": TICKET_URL, "b": TICKET_URL, ...}'
//
// Prints one JSON line of what happened (the test decides); exits non-zero if it could not
// finish. A hostile upstream (the test's FAKE sandbox) serves /attack.html and /own.html.
import { launchChromium } from "./chromium.mjs";

const plan = JSON.parse(process.argv[2]);
const TIMEOUT = 20_000;
setTimeout(() => {
  console.error("isolation.mjs: out of time");
  process.exit(3);
}, 150_000).unref();

const browser = await launchChromium([
  // The test's base domain is a registrable one (sandboxes same-site, as in production),
  // served on loopback.
  `--host-resolver-rules=MAP ${new URL(plan.base).hostname} 127.0.0.1, MAP *.${new URL(plan.base).hostname} 127.0.0.1`,
]);
const report = { statuses: [], cookies: [] };
try {
  const context = await browser.newContext();
  context.setDefaultTimeout(TIMEOUT);
  const page = await context.newPage();
  // Every answer the browser saw from B, by method and path (no-cors answers included).
  const hostB = new URL(plan.b).host;
  page.on("response", (r) => {
    const url = new URL(r.url());
    if (url.host === hostB) {
      report.statuses.push([r.request().method(), url.pathname + url.search, r.status()]);
    }
  });

  // (every request goes through the browser, whose resolver rules keep the test's names on
  // loopback: playwright's own request client would look them up)
  const main = await context.newPage();
  const api = (method, path, body) =>
    main.evaluate(
      async ([method, path, body]) => {
        const init = { method, headers: { "content-type": "application/json" } };
        const r = await fetch(path, body ? { ...init, body: JSON.stringify(body) } : init);
        return [r.status, r.status === 200 ? await r.json() : null];
      },
      [method, path, body],
    );
  await main.goto(plan.base);
  const login = await api("POST", "/api/auth/login", {
    username: plan.username,
    password: plan.password,
  });
  if (login[0] !== 200) throw new Error(`login: HTTP ${login[0]}`);
  for (const ticket of [plan.a, plan.b]) {
    const opened = await page.goto(ticket);
    if (opened.status() !== 200) throw new Error(`opening ${ticket}: HTTP ${opened.status()}`);
  }
  const a = new URL(plan.a).origin;
  const b = new URL(plan.b).origin;

  // Sandbox A's page attacks B: a no-cors POST, a form POST, a WebSocket, a CORS read.
  await page.goto(`${a}/attack.html?target=${encodeURIComponent(b)}`);
  await page.waitForFunction(() => window.done === true);
  report.attack = await page.evaluate(() => window.results);

  // B's own page: a POST and a WebSocket keep working (the upstream's 101 carries cookies
  // for the parent domain and with our names: none may be stored).
  await page.goto(`${b}/own.html`);
  await page.waitForFunction(() => window.done === true);
  report.own = await page.evaluate(() => window.results);
  report.cookies = (await context.cookies()).map((c) => `${c.name}=${c.value}@${c.domain}`);

  // A's page frames B's (clickjacking under B's same-site session cookie): every sandbox
  // answer refuses to be framed by another origin, so the frame never shows B's page.
  await page.goto(`${a}/framing-host`);
  await page.evaluate(
    (target) =>
      new Promise((done) => {
        const frame = document.createElement("iframe");
        frame.onload = () => done();
        setTimeout(done, 5_000);
        frame.src = target;
        document.body.appendChild(frame);
      }),
    `${b}/own.html?framed=1`,
  );
  report.framed = page
    .frames()
    .map((f) => f.url())
    .filter((url) => url.startsWith(b));
  const me = await api("GET", "/api/auth/me");
  report.me = [me[0], me[1] && me[1].username];

  // B paused: its page offers Resume; the button (a form POST from a no-referrer page, so
  // Origin: null with Sec-Fetch-Site: same-origin) resumes it.
  const paused = await api("POST", `/api/sandboxes/${plan.bId}/pause`);
  report.paused = paused[0]; // (not 200 if the main site no longer knows the victim)
  if (paused[0] === 200) {
    const button = page.getByRole("button", { name: "Resume" });
    for (let tries = 0; ; tries++) {
      await page.goto(`${b}/`);
      if (await button.count()) break;
      if (tries > 40) throw new Error("no Resume button on B's page");
      await page.waitForTimeout(250);
    }
    const [resumed] = await Promise.all([
      page.waitForResponse((r) => new URL(r.url()).pathname === "/_cli/resume"),
      button.click(),
    ]);
    report.resume = resumed.status();
    report.resumeOrigin = await resumed.request().headerValue("origin");
    report.resumeSite = await resumed.request().headerValue("sec-fetch-site");
  }
  console.log(JSON.stringify(report));
} finally {
  await browser.close();
}

import { act, fireEvent, render, screen, within } from "@testing-library/react";
import { afterEach, expect, test, vi } from "vitest";
import type { Ports, Sandbox } from "./api";
import { Previews, portProblem, previewUrl } from "./Previews";

const ID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
const sandbox: Sandbox = {
  id: ID,
  workspace_id: "w",
  name: "web",
  status: "running",
  error: null,
  is_local: false,
  created_at: "2026-12-06T09:00:00Z",
  url: `http://oc-${ID}.localhost:8080/`,
};
const LINK = `http://oc-${ID}-p5173.localhost:8080/_cli/auth?ticket=t1`;

afterEach(() => {
  vi.useRealTimers();
  vi.restoreAllMocks();
  Object.defineProperty(navigator, "clipboard", { value: undefined, configurable: true });
});

/** Answers the ports with ``ports`` (one answer per call while more than one is given, then
 * the last) and opens with ``LINK`` or ``openStatus``'s error. */
function serve(ports: Ports[], openStatus = 200) {
  return vi.spyOn(globalThis, "fetch").mockImplementation((input, init) => {
    const url = String(input);
    if (init?.method === "POST" && url === `/api/sandboxes/${ID}/open`) {
      const body =
        openStatus === 200
          ? { url: LINK }
          : { error: { code: "port_not_shared", message: "the laptop does not share port 9000" } };
      return Promise.resolve(new Response(JSON.stringify(body), { status: openStatus }));
    }
    if (url === `/api/sandboxes/${ID}/ports`) {
      const next = ports.length > 1 ? ports.shift() : ports[0];
      return Promise.resolve(new Response(JSON.stringify(next)));
    }
    return Promise.resolve(new Response("{}", { status: 500 }));
  });
}

function posts(fetch: ReturnType<typeof serve>): unknown[] {
  return fetch.mock.calls
    .filter(([, init]) => init?.method === "POST")
    .map(([, init]) => JSON.parse(String(init?.body)));
}

function fakeTab() {
  const tab = { location: { href: "" }, close: vi.fn(), opener: window as Window | null };
  const open = vi.spyOn(window, "open").mockReturnValue(tab as unknown as Window);
  return { tab, open };
}

test("a port is 1024–65535 written in digits, and not opencode's 4096", () => {
  expect(portProblem("5173")).toBeNull();
  expect(portProblem(" 8000 ")).toBeNull();
  expect(portProblem("1024")).toBeNull();
  expect(portProblem("65535")).toBeNull();
  expect(portProblem("")).toBe("Type a port number.");
  for (const text of ["abc", "51.73", "-1", "0x1f90", "1e4"])
    expect(portProblem(text)).toBe("A port is a whole number, like 5173.");
  for (const text of ["0", "80", "1023", "65536", "99999999"])
    expect(portProblem(text)).toBe("Ports 1024–65535 can be previewed.");
  expect(portProblem("4096")).toBe("4096 is opencode itself: use the sandbox's Open.");
});

test("a preview's address sits next to the sandbox's own", () => {
  expect(previewUrl(`http://oc-${ID}.localhost:8080/`, 5173)).toBe(
    `http://oc-${ID}-p5173.localhost:8080/`,
  );
  expect(previewUrl("https://oc-abc.cli.example.com/", 8000)).toBe(
    "https://oc-abc-p8000.cli.example.com/",
  );
  expect(previewUrl(null, 5173)).toBeNull();
  expect(previewUrl("http://example.com/", 5173)).toBeNull();
  expect(previewUrl("not a url", 5173)).toBeNull();
});

test("listening ports: Open opens the one-time link in a new tab, Copy link the address", async () => {
  const fetch = serve([{ ports: [8000, 5173], listed: true }]);
  const { tab, open } = fakeTab();
  const writeText = vi.fn(() => Promise.resolve());
  Object.defineProperty(navigator, "clipboard", { value: { writeText }, configurable: true });
  render(<Previews sandbox={sandbox} pollMs={60_000} />);
  const region = screen.getByRole("region", { name: "Previews" });
  const button = await within(region).findByRole("button", { name: "Open port 5173" });
  // Sorted, each with its address; no field to type one, since they are listed.
  const rows = within(region).getAllByRole("listitem");
  expect(rows.map((r) => r.querySelector("code")?.textContent)).toEqual(["5173", "8000"]);
  expect(within(region).getByText(`http://oc-${ID}-p5173.localhost:8080/`)).toBeTruthy();
  expect(within(region).queryByRole("textbox")).toBeNull();

  fireEvent.click(button);
  // The tab opens during the click (popup blockers allow only that), then gets the link.
  expect(open).toHaveBeenCalledWith("about:blank", "_blank");
  await vi.waitFor(() => expect(tab.location.href).toBe(LINK));
  expect(posts(fetch)).toEqual([{ port: 5173 }]);
  // What the sandbox serves cannot reach back to (and navigate) the dashboard's tab.
  expect(tab.opener).toBeNull();

  fireEvent.click(within(region).getByRole("button", { name: "Copy link to port 8000" }));
  await within(region).findByText("Link copied");
  expect(writeText).toHaveBeenCalledWith(`http://oc-${ID}-p8000.localhost:8080/`);
  expect(within(region).getByRole("button", { name: "Copy link to port 8000" }).textContent).toBe(
    "Copied",
  );
});

test("a blocked popup: the link opens in this tab instead", async () => {
  serve([{ ports: [5173], listed: true }]);
  vi.spyOn(window, "open").mockReturnValue(null);
  const location = { href: "" };
  vi.spyOn(window, "location", "get").mockReturnValue(location as unknown as Location);
  render(<Previews sandbox={sandbox} pollMs={60_000} />);
  fireEvent.click(await screen.findByRole("button", { name: "Open port 5173" }));
  await vi.waitFor(() => expect(location.href).toBe(LINK));
});

test("a refused open closes the blank tab and says why", async () => {
  serve([{ ports: [9000], listed: true }], 404);
  const { tab } = fakeTab();
  render(<Previews sandbox={sandbox} pollMs={60_000} />);
  fireEvent.click(await screen.findByRole("button", { name: "Open port 9000" }));
  expect((await screen.findByRole("alert")).textContent).toBe(
    "The laptop does not share port 9000",
  );
  expect(tab.close).toHaveBeenCalled();
});

test("the list follows the sandbox: read again every poll", async () => {
  vi.useFakeTimers({ shouldAdvanceTime: true });
  const fetch = serve([
    { ports: [], listed: true },
    { ports: [5173], listed: true },
  ]);
  render(<Previews sandbox={sandbox} pollMs={5000} />);
  await screen.findByText(/Nothing listens yet/);
  // Nothing listed: a port may be typed.
  expect(screen.getByRole("textbox", { name: "Port of web to open" })).toBeTruthy();
  await act(() => vi.advanceTimersByTimeAsync(5000));
  await screen.findByRole("button", { name: "Open port 5173" });
  expect(screen.queryByRole("textbox")).toBeNull();
  const reads = fetch.mock.calls.filter(([u]) => String(u).endsWith("/ports")).length;
  expect(reads).toBe(2);
});

test("unlisted ports: a typed port is checked, then opened and kept in the list", async () => {
  const fetch = serve([{ ports: [], listed: false }]);
  const { tab } = fakeTab();
  render(<Previews sandbox={sandbox} pollMs={60_000} />);
  await screen.findByText("This backend cannot see which ports listen: type one to open it.");
  const field = screen.getByRole("textbox", { name: "Port of web to open" });
  for (const [text, problem] of [
    ["4096", "4096 is opencode itself: use the sandbox's Open."],
    ["80", "Ports 1024–65535 can be previewed."],
    ["vite", "A port is a whole number, like 5173."],
  ] as const) {
    fireEvent.change(field, { target: { value: text } });
    fireEvent.click(screen.getByRole("button", { name: "Open port" }));
    expect((await screen.findByRole("alert")).textContent).toBe(problem);
    expect(field.getAttribute("aria-invalid")).toBe("true");
    expect(field.getAttribute("aria-describedby")).toBe(`port-error-${ID}`);
  }
  expect(posts(fetch)).toEqual([]);

  fireEvent.change(field, { target: { value: "5173" } });
  expect(field.getAttribute("aria-invalid")).toBeNull();
  fireEvent.click(screen.getByRole("button", { name: "Open port" }));
  await vi.waitFor(() => expect(tab.location.href).toBe(LINK));
  expect(posts(fetch)).toEqual([{ port: 5173 }]);
  expect(screen.getByRole("button", { name: "Copy link to port 5173" })).toBeTruthy();
  expect((field as HTMLInputElement).value).toBe("");
});

test("a local sandbox: only the laptop's shared ports, and it says so", async () => {
  serve([{ ports: [5173], listed: true, shared_only: true }]);
  render(<Previews sandbox={{ ...sandbox, is_local: true }} pollMs={60_000} />);
  await screen.findByRole("button", { name: "Open port 5173" });
  expect(screen.getByText("shared by the laptop (--allow-port)")).toBeTruthy();
  expect(screen.getByText("Other ports of the laptop are not shared.")).toBeTruthy();
  expect(screen.queryByRole("textbox")).toBeNull();
});

test("a local sandbox sharing nothing says how to share a port", async () => {
  serve([{ ports: [], listed: true, shared_only: true }]);
  render(<Previews sandbox={{ ...sandbox, is_local: true }} pollMs={60_000} />);
  await screen.findByText(
    "The laptop shares no ports: its agent shares one with --allow-port 5173.",
  );
  expect(screen.queryByRole("textbox")).toBeNull();
});

test("ports that cannot be read: says so, and a port can still be typed", async () => {
  vi.spyOn(globalThis, "fetch").mockResolvedValue(
    new Response(JSON.stringify({ error: { code: "unavailable", message: "busy" } }), {
      status: 503,
    }),
  );
  render(<Previews sandbox={sandbox} pollMs={60_000} />);
  await screen.findByText("Its ports could not be listed: Busy");
  expect(screen.getByRole("textbox", { name: "Port of web to open" })).toBeTruthy();
});

test("a sandbox that stopped a moment ago (409) is not reported as an error", async () => {
  const fetch = vi.spyOn(globalThis, "fetch").mockResolvedValue(
    new Response(JSON.stringify({ error: { code: "invalid_state", message: "it is paused" } }), {
      status: 409,
    }),
  );
  render(<Previews sandbox={sandbox} pollMs={60_000} />);
  await vi.waitFor(() => expect(fetch).toHaveBeenCalledTimes(1));
  await act(() => Promise.resolve());
  expect(screen.queryByText(/could not be listed/)).toBeNull();
  expect(screen.getByText("Looking for listening ports…")).toBeTruthy();
});

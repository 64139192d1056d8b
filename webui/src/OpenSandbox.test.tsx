import { render, screen } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { afterEach, expect, test, vi } from "vitest";
import type { Sandbox, Workspace } from "./api";
import { OpenSandbox, portParam } from "./OpenSandbox";

const ID = "5e19d6c8-5340-490f-8b60-d32be3ee5eec";
const sandbox = (status: Sandbox["status"]): Sandbox => ({
  id: ID,
  workspace_id: "w1",
  name: "shared",
  status,
  error: null,
  is_local: false,
  created_at: "2026-12-06T10:00:00Z",
  url: null,
});
const team = (role: Workspace["role"]): Workspace[] => [
  { id: "w1", name: "Links", role } as Workspace,
];

function json(status: number, body: unknown) {
  return Promise.resolve(new Response(JSON.stringify(body), { status }));
}

afterEach(() => {
  vi.restoreAllMocks();
  sessionStorage.clear();
});

function serve(status: Sandbox["status"] | null, refusePort = false) {
  return vi.spyOn(globalThis, "fetch").mockImplementation((input, init) => {
    const url = String(input);
    const method = init?.method ?? "GET";
    if (status === null) return json(404, { error: { code: "not_found", message: "no" } });
    if (method === "POST" && url.endsWith("/open") && init?.body) {
      if (refusePort)
        return json(404, {
          error: { code: "port_not_shared", message: "the laptop does not share port 9000" },
        });
      const { port } = JSON.parse(String(init.body)) as { port: number };
      return json(200, { url: `http://oc-x-p${port}.localhost/_cli/auth?ticket=p` });
    }
    if (method === "GET" && url.endsWith(`/api/sandboxes/${ID}`)) return json(200, sandbox(status));
    if (method === "POST" && url.endsWith("/resume")) return json(200, sandbox("resuming"));
    if (method === "POST" && url.endsWith("/open"))
      return json(200, { url: "http://oc-x.localhost/_cli/auth?ticket=t" });
    return json(500, {});
  });
}

test("a sandbox one may not see reads as missing, with the way back", async () => {
  serve(null);
  render(<OpenSandbox sandboxId={ID} workspaces={team("owner")} navigate={() => {}} />);
  await screen.findByText("This sandbox does not exist or you are not a member of its workspace.");
  expect(screen.getByRole("link", { name: "Go to your workspaces" })).toBeTruthy();
});

test("a paused sandbox: a developer resumes and opens; nothing happens by itself", async () => {
  const fetch = serve("paused");
  const replace = vi.fn();
  vi.spyOn(window, "location", "get").mockReturnValue({ ...window.location, replace });
  render(<OpenSandbox sandboxId={ID} workspaces={team("developer")} navigate={() => {}} />);
  const button = await screen.findByRole("button", { name: "Resume and open" });
  expect(fetch.mock.calls.some(([, init]) => init?.method === "POST")).toBe(false);
  await userEvent.click(button);
  await vi.waitFor(() =>
    expect(replace).toHaveBeenCalledWith("http://oc-x.localhost/_cli/auth?ticket=t"),
  );
  const posts = fetch.mock.calls
    .filter(([, init]) => init?.method === "POST")
    .map(([u]) => String(u));
  expect(posts).toEqual([`/api/sandboxes/${ID}/resume`, `/api/sandboxes/${ID}/open`]);
});

test("a paused sandbox: a guest is told, not offered Resume", async () => {
  serve("paused");
  render(<OpenSandbox sandboxId={ID} workspaces={team("guest")} navigate={() => {}} />);
  await screen.findByText(/As a guest you cannot resume it/);
  expect(screen.queryByRole("button", { name: "Resume and open" })).toBeNull();
});

test("a running sandbox opens at once, but not twice in a row", async () => {
  const replace = vi.fn();
  vi.spyOn(window, "location", "get").mockReturnValue({ ...window.location, replace });
  serve("running");
  const first = render(
    <OpenSandbox sandboxId={ID} workspaces={team("guest")} navigate={() => {}} />,
  );
  await vi.waitFor(() => expect(replace).toHaveBeenCalledTimes(1));
  first.unmount();
  render(<OpenSandbox sandboxId={ID} workspaces={team("guest")} navigate={() => {}} />);
  await screen.findByRole("button", { name: "Open shared" });
  expect(replace).toHaveBeenCalledTimes(1);
});

function posted(fetch: ReturnType<typeof serve>): unknown[] {
  return fetch.mock.calls
    .filter(([, init]) => init?.method === "POST")
    .map(([u, init]) => [String(u), init?.body ? JSON.parse(String(init.body)) : null]);
}

test("the port of /open/<id>?port=N is read as written", () => {
  expect(portParam("?port=5173")).toBe("5173");
  expect(portParam("?port=abc&x=1")).toBe("abc");
  expect(portParam("")).toBeNull();
});

test("a preview's address opens that port, at once, and each port on its own", async () => {
  const replace = vi.fn();
  vi.spyOn(window, "location", "get").mockReturnValue({ ...window.location, replace });
  const fetch = serve("running");
  const first = render(
    <OpenSandbox sandboxId={ID} workspaces={team("guest")} navigate={() => {}} port="5173" />,
  );
  await vi.waitFor(() =>
    expect(replace).toHaveBeenCalledWith("http://oc-x-p5173.localhost/_cli/auth?ticket=p"),
  );
  expect(posted(fetch)).toEqual([[`/api/sandboxes/${ID}/open`, { port: 5173 }]]);
  first.unmount();
  // The same port again this soon waits for a click; another port of it does not.
  const again = render(
    <OpenSandbox sandboxId={ID} workspaces={team("guest")} navigate={() => {}} port="5173" />,
  );
  const button = await screen.findByRole("button", { name: "Open port 5173 of shared" });
  expect(screen.getByRole("heading", { name: "shared: port 5173" })).toBeTruthy();
  await userEvent.click(button);
  await vi.waitFor(() => expect(replace).toHaveBeenCalledTimes(2));
  again.unmount();
  render(<OpenSandbox sandboxId={ID} workspaces={team("guest")} navigate={() => {}} port="8000" />);
  await vi.waitFor(() =>
    expect(replace).toHaveBeenLastCalledWith("http://oc-x-p8000.localhost/_cli/auth?ticket=p"),
  );
  // (opencode's own address keeps its own count: it would still open at once)
  expect(sessionStorage.getItem(`cli-open:${ID}`)).toBeNull();
});

test("a paused sandbox's preview: a developer resumes it, then opens the port", async () => {
  const replace = vi.fn();
  vi.spyOn(window, "location", "get").mockReturnValue({ ...window.location, replace });
  const fetch = serve("paused");
  render(
    <OpenSandbox sandboxId={ID} workspaces={team("developer")} navigate={() => {}} port="8000" />,
  );
  await userEvent.click(await screen.findByRole("button", { name: "Resume and open" }));
  await vi.waitFor(() =>
    expect(replace).toHaveBeenCalledWith("http://oc-x-p8000.localhost/_cli/auth?ticket=p"),
  );
  expect(posted(fetch)).toEqual([
    [`/api/sandboxes/${ID}/resume`, null],
    [`/api/sandboxes/${ID}/open`, { port: 8000 }],
  ]);
});

test("a port one cannot preview is refused here, with no request", async () => {
  const fetch = serve("running");
  render(<OpenSandbox sandboxId={ID} workspaces={team("owner")} navigate={() => {}} port="4096" />);
  await screen.findByRole("heading", { name: "The preview could not be opened" });
  expect(screen.getByRole("alert").textContent).toBe(
    "Port 4096 cannot be previewed. 4096 is opencode itself: use the sandbox's Open.",
  );
  expect(screen.getByRole("link", { name: "Go to your workspaces" })).toBeTruthy();
  expect(fetch).not.toHaveBeenCalled();
});

test("a port the laptop does not share: told so, not 'sandbox not found'", async () => {
  serve("running", true);
  render(<OpenSandbox sandboxId={ID} workspaces={team("owner")} navigate={() => {}} port="9000" />);
  await screen.findByRole("heading", { name: "The preview could not be opened" });
  expect(screen.getByRole("alert").textContent).toBe("The laptop does not share port 9000");
});

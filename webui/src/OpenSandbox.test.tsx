import { render, screen } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { afterEach, expect, test, vi } from "vitest";
import type { Sandbox, Workspace } from "./api";
import { OpenSandbox } from "./OpenSandbox";

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

function serve(status: Sandbox["status"] | null) {
  return vi.spyOn(globalThis, "fetch").mockImplementation((input, init) => {
    const url = String(input);
    const method = init?.method ?? "GET";
    if (status === null) return json(404, { error: { code: "not_found", message: "no" } });
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

import { act, fireEvent, render, screen, waitFor } from "@testing-library/react";
import { afterEach, expect, test, vi } from "vitest";
import type { User, Workspace } from "./api";
import { Dashboard } from "./Dashboard";
import { useRoute } from "./route";

const user: User = { id: "u", username: "bob", email: null };
const alpha: Workspace = { id: "a", name: "Alpha", role: "developer", created_at: "" };
const beta: Workspace = { id: "b", name: "Beta", role: "developer", created_at: "" };

afterEach(() => {
  vi.restoreAllMocks();
  window.history.replaceState(null, "", "/");
});

/** The server as the dashboard sees it: ``workspaces()`` is asked anew at every poll. */
function serve(workspaces: () => Workspace[]) {
  vi.spyOn(globalThis, "fetch").mockImplementation((input) => {
    const url = String(input);
    let body: unknown = [];
    if (url === "/api/workspaces") body = workspaces();
    else if (url.endsWith("/usage"))
      body = { month: { requests: 0, total_tokens: 0 }, monthly_token_budget: null };
    return Promise.resolve(new Response(JSON.stringify(body)));
  });
}

function Routed() {
  const [route, navigate] = useRoute();
  return <Dashboard user={user} route={route} navigate={navigate} onSignedOut={() => undefined} />;
}

test("/ shows the first workspace under its own address and title", async () => {
  serve(() => [alpha, beta]);
  render(<Routed />);
  await screen.findByRole("heading", { name: "Alpha" });
  expect(window.location.pathname).toBe("/w/a");
  await waitFor(() => expect(document.title).toBe("Alpha · Sandboxes — cli-server"));
});

test("a workspace taken away while shown is announced and left", async () => {
  let list = [alpha, beta];
  serve(() => list);
  window.history.replaceState(null, "", "/w/b/members");
  render(<Routed />);
  await screen.findByRole("heading", { name: "Beta" });
  expect(document.title).toBe("Beta · Members — cli-server");

  list = [alpha];
  act(() => {
    window.dispatchEvent(new Event("focus")); // what a returning user does; the poll too
  });
  const alert = await screen.findByRole("alert");
  expect(alert.textContent).toContain(`You no longer have access to "Beta"`);
  await screen.findByRole("heading", { name: "Alpha" });
  expect(window.location.pathname).toBe("/w/a");
});

test("a role change reaches the open workspace: the guest note appears", async () => {
  let list = [beta];
  serve(() => list);
  window.history.replaceState(null, "", "/w/b");
  render(<Routed />);
  await screen.findByRole("heading", { name: "Beta" });
  expect(screen.queryByText("opencode is read-only for you")).toBeNull();
  list = [{ ...beta, role: "guest" }];
  act(() => {
    window.dispatchEvent(new Event("focus"));
  });
  await screen.findByText("opencode is read-only for you");
});

test("an address of a workspace one cannot see says so and links home", async () => {
  serve(() => [alpha]);
  window.history.replaceState(null, "", "/w/zzz");
  render(<Routed />);
  await screen.findByRole("heading", { name: "Workspace not found" });
  expect(document.title).toBe("Workspace not found — cli-server");
  fireEvent.click(screen.getByRole("link", { name: "Go to your workspaces" }));
  await screen.findByRole("heading", { name: "Alpha" });
  expect(window.location.pathname).toBe("/w/a");
});

test("tabs are links with their own addresses; Back returns", async () => {
  serve(() => [alpha]);
  window.history.replaceState(null, "", "/w/a");
  render(<Routed />);
  await screen.findByRole("heading", { name: "Alpha" });
  const members = screen.getByRole("tab", { name: "Members" });
  expect(members.getAttribute("href")).toBe("/w/a/members");
  fireEvent.click(members);
  expect(window.location.pathname).toBe("/w/a/members");
  await waitFor(() => expect(document.title).toBe("Alpha · Members — cli-server"));
  act(() => {
    window.history.back();
  });
  await waitFor(() => expect(window.location.pathname).toBe("/w/a"));
  await waitFor(() =>
    expect(screen.getByRole("tab", { name: "Sandboxes" }).getAttribute("aria-selected")).toBe(
      "true",
    ),
  );
});

test("a workspace name already in use is said next to the name field", async () => {
  vi.spyOn(globalThis, "fetch").mockImplementation((input, init) => {
    const url = String(input);
    if (url === "/api/workspaces" && init?.method === "POST") {
      const error = {
        code: "name_taken",
        message: 'You already created a workspace named "Alpha".',
        field: "name",
      };
      return Promise.resolve(new Response(JSON.stringify({ error }), { status: 409 }));
    }
    const body = url === "/api/workspaces" ? [alpha] : [];
    return Promise.resolve(new Response(JSON.stringify(body)));
  });
  render(<Routed />);
  await screen.findByRole("heading", { name: "Alpha" });
  const field = screen.getByLabelText("New workspace");
  fireEvent.change(field, { target: { value: "alpha" } });
  fireEvent.click(screen.getByRole("button", { name: "Create workspace" }));
  const said = await screen.findByText('You already created a workspace named "Alpha".');
  expect(said.id).toBe("workspace-name-error");
  expect(field.getAttribute("aria-invalid")).toBe("true");
  fireEvent.change(field, { target: { value: "Gamma" } });
  expect(screen.queryByText('You already created a workspace named "Alpha".')).toBeNull();
});

test("a workspace's full name is the title of its sidebar link (names wrap, then cut)", async () => {
  const long = { ...alpha, name: "Platform team for the payments rewrite" };
  serve(() => [long]);
  render(<Routed />);
  const nav = await screen.findByRole("navigation", { name: "Workspaces" });
  const name = await vi.waitFor(() => {
    const found = nav.querySelector(".nav-name");
    if (!found) throw new Error("no link yet");
    return found;
  });
  expect(name.getAttribute("title")).toBe("Platform team for the payments rewrite");
});

test("the administrator sees the Claude banner with no workspace at all", async () => {
  window.localStorage.clear();
  vi.spyOn(globalThis, "fetch").mockImplementation((input) => {
    const url = String(input);
    const body = url === "/readyz" ? { status: "ready", claude: "not configured" } : [];
    return Promise.resolve(new Response(JSON.stringify(body)));
  });
  render(
    <Dashboard
      user={{ ...user, is_admin: true }}
      route={{ page: "home" }}
      navigate={() => undefined}
      onSignedOut={() => undefined}
    />,
  );
  await screen.findByRole("region", { name: "Claude is not set up on this server" });
  expect(screen.getByText(/Welcome, bob/)).toBeTruthy();
});

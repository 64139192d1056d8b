import { render, screen } from "@testing-library/react";
import { afterEach, expect, test, vi } from "vitest";
import type { Sandbox, Workspace } from "./api";
import { Sandboxes } from "./Sandboxes";

const sandboxes: Sandbox[] = [
  {
    id: "s1",
    workspace_id: "w",
    name: "alpha",
    status: "running",
    error: null,
    is_local: false,
    created_at: "2026-11-28T00:00:00Z",
    url: null,
  },
  {
    id: "s2",
    workspace_id: "w",
    name: "beta",
    status: "failed",
    error: "opencode did not become healthy (HTTP 500)",
    is_local: false,
    created_at: "2026-11-28T00:00:00Z",
    url: null,
  },
  {
    id: "s3",
    workspace_id: "w",
    name: "gamma",
    status: "creating",
    error: null,
    is_local: false,
    created_at: "2026-11-28T00:00:00Z",
    url: null,
  },
];

function workspace(role: Workspace["role"]): Workspace {
  return { id: "w", name: "W", role, created_at: "2026-11-28T00:00:00Z" };
}

afterEach(() => vi.restoreAllMocks());

/** Answers the panel's two calls: the sandbox list and the workspace's usage. */
function serve(list: Sandbox[]) {
  return vi.spyOn(globalThis, "fetch").mockImplementation((input) => {
    const body = String(input).endsWith("/usage")
      ? { month: { requests: 3, total_tokens: 1234 }, monthly_token_budget: 5000 }
      : list;
    return Promise.resolve(new Response(JSON.stringify(body)));
  });
}

test("developers see every control; failed sandboxes show their error", async () => {
  serve(sandboxes);
  render(<Sandboxes workspace={workspace("developer")} pollMs={60_000} />);
  await screen.findByText("alpha");
  expect(screen.getByRole("button", { name: "New sandbox" })).toBeTruthy();
  expect(screen.getByRole("button", { name: "Pause" })).toBeTruthy();
  expect(screen.getByRole("button", { name: "Resume" })).toBeTruthy();
  expect(screen.getAllByRole("button", { name: "Delete" })).toHaveLength(3);
  expect(screen.getByText("opencode did not become healthy (HTTP 500)")).toBeTruthy();
  expect(screen.getByText("Starting…")).toBeTruthy();
});

test("guests see no mutating controls, only Open", async () => {
  serve(sandboxes);
  render(<Sandboxes workspace={workspace("guest")} pollMs={60_000} />);
  await screen.findByText("alpha");
  for (const name of ["New sandbox", "Pause", "Resume", "Delete"]) {
    expect(screen.queryByRole("button", { name })).toBeNull();
  }
  expect(screen.getAllByRole("button", { name: "Open" })).toHaveLength(3);
});

test("an empty workspace says what to do next", async () => {
  serve([]);
  render(<Sandboxes workspace={workspace("owner")} pollMs={60_000} />);
  expect(await screen.findByText("No sandboxes yet.")).toBeTruthy();
  expect((await screen.findByText("1,234")).closest("p")?.textContent).toContain(
    "of a 5,000 budget",
  );
  expect(screen.getByRole("button", { name: "Remove budget" })).toBeTruthy();
});

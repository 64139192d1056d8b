import { fireEvent, render, screen, waitFor } from "@testing-library/react";
import { afterEach, expect, test, vi } from "vitest";
import type { Invitation } from "./api";
import { Invitations } from "./Invitations";

const invitation: Invitation = {
  id: "i1",
  workspace_id: "w1",
  workspace_name: "Platform team",
  role: "developer",
  invited_by: "alice",
  created_at: "2026-12-06T00:00:00Z",
  expires_at: "2026-12-20T00:00:00Z",
};

afterEach(() => {
  vi.restoreAllMocks();
});

/** Answers GET /api/invitations with what is still pending, and the two answers. */
function serve() {
  let pending = [invitation];
  const calls: string[] = [];
  vi.spyOn(globalThis, "fetch").mockImplementation((input, init) => {
    const url = String(input);
    calls.push(`${init?.method ?? "GET"} ${url}`);
    if (url.endsWith("/accept")) {
      pending = [];
      const joined = { id: "w1", name: "Platform team", role: "developer", created_at: "" };
      return Promise.resolve(new Response(JSON.stringify(joined), { status: 200 }));
    }
    if (url.endsWith("/decline")) {
      pending = [];
      return Promise.resolve(new Response(null, { status: 204 }));
    }
    return Promise.resolve(new Response(JSON.stringify(pending), { status: 200 }));
  });
  return calls;
}

test("accepting joins the workspace and the invitation goes away", async () => {
  const calls = serve();
  const joined = vi.fn();
  render(<Invitations onJoined={joined} />);
  await screen.findByText("Platform team");
  expect(screen.getByText("alice")).toBeTruthy();
  fireEvent.click(screen.getByRole("button", { name: "Accept the invitation to Platform team" }));
  await waitFor(() => expect(joined).toHaveBeenCalledWith(expect.objectContaining({ id: "w1" })));
  await waitFor(() => expect(screen.queryByText("Platform team")).toBeNull());
  expect(calls).toContain("POST /api/invitations/i1/accept");
});

test("declining joins nothing", async () => {
  const calls = serve();
  const joined = vi.fn();
  render(<Invitations onJoined={joined} />);
  fireEvent.click(
    await screen.findByRole("button", { name: "Decline the invitation to Platform team" }),
  );
  await waitFor(() => expect(screen.queryByText("Platform team")).toBeNull());
  expect(joined).not.toHaveBeenCalled();
  expect(calls).toContain("POST /api/invitations/i1/decline");
});

test("no invitations, no section", async () => {
  vi.spyOn(globalThis, "fetch").mockResolvedValue(new Response("[]", { status: 200 }));
  const { container } = render(<Invitations onJoined={vi.fn()} />);
  await waitFor(() => expect(globalThis.fetch).toHaveBeenCalled());
  expect(container.querySelector("section")).toBeNull();
});

import { fireEvent, render, screen, waitFor, within } from "@testing-library/react";
import { afterEach, expect, test, vi } from "vitest";
import type { Member, User, Workspace } from "./api";
import { Members } from "./Members";

const me: User = { id: "a", username: "alice", email: null };
const workspace: Workspace = {
  id: "w",
  name: "Platform team",
  role: "owner",
  created_at: "2026-12-06T00:00:00Z",
};
const alice: Member = { user_id: "a", username: "alice", role: "owner" };
const bob: Member = { user_id: "b", username: "bob", role: "developer" };

afterEach(() => {
  vi.restoreAllMocks();
});

/** The members and pending lists; a role change answers ``roleReply``. */
function serve(members: Member[], roleReply?: { status: number; body: unknown }) {
  const calls: string[] = [];
  vi.spyOn(globalThis, "fetch").mockImplementation((input, init) => {
    const url = String(input);
    const method = init?.method ?? "GET";
    calls.push(`${method} ${url}`);
    if (method === "PUT" && roleReply)
      return Promise.resolve(
        new Response(JSON.stringify(roleReply.body), { status: roleReply.status }),
      );
    if (url.endsWith("/invitations")) return Promise.resolve(new Response("[]"));
    return Promise.resolve(new Response(JSON.stringify(members)));
  });
  return calls;
}

test("the only owner is offered neither Leave nor another role, and is told why", async () => {
  serve([alice, bob]);
  render(<Members workspace={workspace} me={me} onLeft={() => undefined} />);
  await screen.findByText("bob");
  expect(screen.queryByRole("combobox", { name: "Role of alice" })).toBeNull();
  expect(screen.queryByRole("button", { name: "Leave" })).toBeNull();
  expect(screen.getByRole("combobox", { name: "Role of bob" })).toBeTruthy();
  expect(screen.getByRole("button", { name: "Remove bob" })).toBeTruthy();
  expect(screen.getByText(/You are the only owner/)).toBeTruthy();
});

test("with a second owner, Leave is offered", async () => {
  serve([alice, { ...bob, role: "owner" }]);
  render(<Members workspace={workspace} me={me} onLeft={() => undefined} />);
  await screen.findByRole("button", { name: "Leave" });
  expect(screen.getByRole("combobox", { name: "Role of alice" })).toBeTruthy();
  expect(screen.queryByText(/You are the only owner/)).toBeNull();
});

test("the role chosen for a new member is explained next to the select", async () => {
  serve([alice]);
  render(<Members workspace={workspace} me={me} onLeft={() => undefined} />);
  const select = await screen.findByRole("combobox", { name: "Role for the new member" });
  fireEvent.change(select, { target: { value: "guest" } });
  const help = document.getElementById(select.getAttribute("aria-describedby") ?? "");
  expect(help?.textContent).toContain("Read-only");
});

test("a role change is confirmed first; its failure shows in that member's row", async () => {
  const calls = serve([alice, bob], {
    status: 409,
    body: { error: { code: "conflict", message: "the last owner cannot be demoted" } },
  });
  render(<Members workspace={workspace} me={me} onLeft={() => undefined} />);
  const select = await screen.findByRole("combobox", { name: "Role of bob" });
  fireEvent.change(select, { target: { value: "guest" } });
  // Nothing is sent before the confirmation, which names who and what changes.
  expect(calls.some((c) => c.startsWith("PUT"))).toBe(false);
  const dialog = screen.getByRole("dialog", { hidden: true });
  expect(dialog.textContent).toContain(
    `Change bob's role in "Platform team" from developer to guest?`,
  );
  fireEvent.click(within(dialog).getByRole("button", { name: "Make bob guest", hidden: true }));
  await waitFor(() => expect(calls).toContain("PUT /api/workspaces/w/members/b"));
  const row = (await screen.findByText("The last owner cannot be demoted")).closest("tr");
  expect(row?.textContent).toContain("bob");
});

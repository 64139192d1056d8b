import { fireEvent, render, screen, waitFor, within } from "@testing-library/react";
import { afterEach, expect, test, vi } from "vitest";
import type { Member, PendingInvitation, User, Workspace } from "./api";
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
  // The reason sits in the only owner's own row, not under the table.
  expect(screen.getByText(/You are the only owner/).closest("tr")?.textContent).toContain("alice");
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
  fireEvent.click(screen.getByRole("button", { name: "Change the role of bob" }));
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

test("moving through roles with the keyboard asks nothing until Change role", async () => {
  const calls = serve([alice, bob]);
  render(<Members workspace={workspace} me={me} onLeft={() => undefined} />);
  const select = await screen.findByRole("combobox", { name: "Role of bob" });
  for (const role of ["maintainer", "guest", "owner", "maintainer"])
    fireEvent.change(select, { target: { value: role } });
  expect(screen.queryByRole("dialog", { hidden: true })?.hasAttribute("open") ?? false).toBe(false);
  expect((select as HTMLSelectElement).value).toBe("maintainer");
  expect(calls.some((c) => c.startsWith("PUT"))).toBe(false);
  // Cancel puts the select back; choosing the current role offers no button.
  fireEvent.click(screen.getByRole("button", { name: "Keep the role of bob" }));
  expect((select as HTMLSelectElement).value).toBe("developer");
  expect(screen.queryByRole("button", { name: "Change the role of bob" })).toBeNull();
  fireEvent.change(select, { target: { value: "guest" } });
  fireEvent.click(screen.getByRole("button", { name: "Change the role of bob" }));
  const dialog = screen.getByRole("dialog", { hidden: true });
  expect(dialog.textContent).toContain("from developer to guest?");
});

test("the invitation notice goes once the invited person is a member", async () => {
  let members: Member[] = [alice];
  let invited: PendingInvitation[] = [];
  vi.spyOn(globalThis, "fetch").mockImplementation((input, init) => {
    const url = String(input);
    if (init?.method === "POST") {
      invited = [
        {
          id: "i1",
          username: "carol",
          role: "developer",
          invited_by: "alice",
          created_at: "2026-12-06T00:00:00Z",
          expires_at: "2026-12-13T00:00:00Z",
        },
      ];
      return Promise.resolve(
        new Response(JSON.stringify({ status: "invited", invitation_id: "i1", ...invited[0] }), {
          status: 201,
        }),
      );
    }
    if (url.endsWith("/invitations")) return Promise.resolve(new Response(JSON.stringify(invited)));
    return Promise.resolve(new Response(JSON.stringify(members)));
  });
  render(<Members workspace={workspace} me={me} onLeft={() => undefined} />);
  fireEvent.change(await screen.findByPlaceholderText("Username to add"), {
    target: { value: "carol" },
  });
  fireEvent.click(screen.getByRole("button", { name: "Add member" }));
  await screen.findByText("Invited carol: they join once they accept.");
  // carol accepts: the next reading of the lists has her as a member, no invitation.
  members = [alice, { user_id: "c", username: "carol", role: "developer" }];
  invited = [];
  fireEvent.focus(window); // (the lists are read again when the window regains focus)
  await screen.findByRole("combobox", { name: "Role of carol" });
  expect(screen.queryByText(/Invited carol/)).toBeNull();
});

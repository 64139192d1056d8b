import { fireEvent, render, screen, within } from "@testing-library/react";
import { afterEach, expect, test, vi } from "vitest";
import { ACTION_LABELS, Audit, detailText } from "./Audit";
import type { AuditEntry, AuditPage, Workspace } from "./api";

const workspace: Workspace = {
  id: "w1",
  name: "Team",
  role: "maintainer",
  created_at: "2026-11-28T00:00:00Z",
};

function entry(id: number, changes: Partial<AuditEntry> = {}): AuditEntry {
  return {
    id,
    at: "2026-12-01T12:00:00Z",
    actor_id: "u1",
    actor_name: "alice",
    action: "sandbox.created",
    workspace_id: "w1",
    target_type: "sandbox",
    target_id: `s${id}`,
    target_name: `box ${id}`,
    address: "192.0.2.1",
    details: {},
    ...changes,
  };
}

/** Answers each GET with the next page, and keeps the URLs asked for. */
function serve(pages: AuditPage[]) {
  const asked: string[] = [];
  vi.spyOn(globalThis, "fetch").mockImplementation((input) => {
    asked.push(String(input));
    const page = pages.shift() ?? { entries: [], next: null };
    return Promise.resolve(new Response(JSON.stringify(page)));
  });
  return asked;
}

afterEach(() => {
  vi.restoreAllMocks();
});

test("a row says when, who, what, the target and from where", async () => {
  serve([
    {
      entries: [
        entry(2, { action: "sandbox.opened", details: { port: 5173 } }),
        entry(1, { actor_id: null, actor_name: null, action: "agent.revoked", address: null }),
      ],
      next: null,
    },
  ]);
  render(<Audit workspace={workspace} />);
  const table = await screen.findByRole("table");
  const rows = within(table).getAllByRole("row");
  expect(rows).toHaveLength(3);
  expect(rows[1]?.textContent).toContain("alice");
  expect(rows[1]?.textContent).toContain("opened port 5173");
  expect(rows[1]?.textContent).toContain("sandbox box 2");
  expect(rows[1]?.textContent).toContain("192.0.2.1");
  expect(rows[2]?.textContent).toContain("the server");
  expect(rows[2]?.textContent).toContain("revoked the local agent");
  expect(screen.queryByRole("button", { name: "Load more" })).toBeNull();
});

test("Load more asks for the entries before the last one shown and adds them", async () => {
  const asked = serve([
    { entries: [entry(9), entry(8)], next: 8 },
    { entries: [entry(7)], next: null },
  ]);
  render(<Audit workspace={workspace} />);
  fireEvent.click(await screen.findByRole("button", { name: "Load more" }));
  await screen.findByText("sandbox box 7");
  expect(asked[1]).toContain("before=8");
  expect(within(screen.getByRole("table")).getAllByRole("row")).toHaveLength(4);
  expect(screen.queryByRole("button", { name: "Load more" })).toBeNull();
});

test("filters by action and actor, and says when nothing matches", async () => {
  const asked = serve([
    { entries: [entry(1)], next: null },
    { entries: [], next: null },
  ]);
  render(<Audit workspace={workspace} />);
  await screen.findByRole("table");
  fireEvent.change(screen.getByLabelText("What"), { target: { value: "member.removed" } });
  fireEvent.change(screen.getByLabelText("Who"), { target: { value: " bob " } });
  fireEvent.click(screen.getByRole("button", { name: "Filter" }));
  await screen.findByText("Nothing matches this filter.");
  expect(asked[1]).toContain("action=member.removed");
  expect(asked[1]).toContain("actor=bob");
  expect(asked[0]).toBe("/api/workspaces/w1/audit?limit=50");
});

test("a refusal is shown", async () => {
  vi.spyOn(globalThis, "fetch").mockResolvedValue(
    new Response(JSON.stringify({ error: { code: "forbidden", message: "no" } }), { status: 403 }),
  );
  render(<Audit workspace={workspace} />);
  expect((await screen.findByRole("alert")).textContent).toContain("Your role does not allow this");
});

test("details in words", () => {
  expect(detailText(entry(1, { details: { role: "guest" } }))).toBe("as guest");
  expect(detailText(entry(1, { details: { role: "guest", was: "owner" } }))).toBe("owner → guest");
  expect(detailText(entry(1, { details: { budget: 2000000 } }))).toBe("budget 2,000,000");
  expect(detailText(entry(1, { details: { budget: null } }))).toBe("no budget");
  expect(detailText(entry(1))).toBe("");
  expect(detailText(entry(1, { details: { budget: 5000, via: "api_token t1" } }))).toBe(
    "budget 5,000, (with an API token)",
  );
});

test("the filter offers actions in words, grouped by what they act on", async () => {
  serve([{ entries: [entry(1)], next: null }]);
  render(<Audit workspace={workspace} />);
  await screen.findByRole("table");
  const what = screen.getByLabelText("What");
  const options = within(what).getAllByRole("option");
  expect(options.map((o) => o.textContent)).toContain("Sandbox deleted");
  for (const option of options) expect(option.textContent).not.toMatch(/\w\.\w/);
  expect(
    what.querySelector("optgroup[label='Sandboxes'] option[value='sandbox.deleted']"),
  ).not.toBeNull();
  // Every action the table names can be chosen in the filter.
  const offered = options.map((o) => (o as HTMLOptionElement).value).filter((v) => v);
  expect(offered.sort()).toEqual(Object.keys(ACTION_LABELS).sort());
});

test("a filter with no matches offers to show everything again", async () => {
  const asked = serve([
    { entries: [entry(1)], next: null },
    { entries: [], next: null },
    { entries: [entry(1)], next: null },
  ]);
  render(<Audit workspace={workspace} />);
  await screen.findByRole("table");
  fireEvent.change(screen.getByLabelText("What"), { target: { value: "sandbox.paused" } });
  fireEvent.click(screen.getByRole("button", { name: "Filter" }));
  fireEvent.click(await screen.findByRole("button", { name: "Show everything" }));
  await screen.findByRole("table");
  expect(asked[2]).toBe("/api/workspaces/w1/audit?limit=50");
  expect((screen.getByLabelText("What") as HTMLSelectElement).value).toBe("");
});

test("an empty log says what will show up in it", async () => {
  serve([{ entries: [], next: null }]);
  render(<Audit workspace={workspace} />);
  expect((await screen.findByText(/Nothing recorded yet/)).textContent).toContain("sandboxes");
});

test("the time of a row is also said in words", async () => {
  const at = new Date(Date.now() - 5 * 60_000).toISOString();
  serve([{ entries: [entry(1, { at })], next: null }]);
  render(<Audit workspace={workspace} />);
  await screen.findByText("(5 min ago)");
});

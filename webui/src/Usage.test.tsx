import { act, fireEvent, render, screen, within } from "@testing-library/react";
import { afterEach, expect, test, vi } from "vitest";
import type { UsageReport, Workspace } from "./api";
import { SEEN_KEY, ServerClaudeBanner, START_COMMAND } from "./ClaudeBanner";
import { parseBudget, Usage } from "./Usage";

const NOT_SET_UP =
  "Claude is not set up on this server: the administrator sets ANTHROPIC_API_KEY (or ANTHROPIC_AUTH_TOKEN) in the server's environment and restarts it.";

function report(budget: number | null, configured = true, used = 1_234_567): UsageReport {
  return {
    month: { requests: 3, total_tokens: used },
    monthly_token_budget: budget,
    claude: { configured, message: configured ? "Claude is set up." : NOT_SET_UP },
  };
}

function workspace(role: Workspace["role"]): Workspace {
  return { id: "w", name: "W", role, created_at: "2026-11-28T00:00:00Z" };
}

/** Answers GET usage with ``first``, and each PUT budget with the budget it was sent. */
function serve(first: UsageReport) {
  return vi.spyOn(globalThis, "fetch").mockImplementation((_input, init) => {
    if (init?.method === "PUT") {
      const sent = JSON.parse(String(init.body)) as { monthly_tokens: number | null };
      return Promise.resolve(
        new Response(JSON.stringify({ ...first, monthly_token_budget: sent.monthly_tokens })),
      );
    }
    return Promise.resolve(new Response(JSON.stringify(first)));
  });
}

afterEach(() => {
  vi.restoreAllMocks();
});

test("owners see whom to ask and what that person does, on one line first", async () => {
  window.localStorage.clear();
  serve(report(null, false));
  render(<Usage workspace={workspace("owner")} refreshKey={0} />);
  const banner = await screen.findByRole("region", { name: "Claude is not set up on this server" });
  expect(banner.querySelector(".claude-summary")?.textContent).toContain(
    "ask the administrator of this server",
  );
  expect(banner.textContent).not.toContain("workspace owner");
  const command = within(banner).getByText(/twistd -n cli-server/);
  expect(command.textContent).toBe(START_COMMAND);
  expect(command.textContent).toContain(".venv/bin/twistd");
  expect(banner.textContent).toContain("Claude in sandboxes: the Anthropic proxy");
  expect(screen.queryByRole("note")).toBeNull();
});

test("the how-to is open the first time, folded once it was seen", async () => {
  window.localStorage.clear();
  serve(report(null, false));
  const first = render(<Usage workspace={workspace("owner")} refreshKey={0} />);
  const open = await screen.findByRole("region", { name: /not set up/ });
  expect(open.querySelector("details")?.open).toBe(true);
  await vi.waitFor(() => expect(window.localStorage.getItem(SEEN_KEY)).not.toBeNull());
  first.unmount();
  render(<Usage workspace={workspace("owner")} refreshKey={0} />);
  const folded = await screen.findByRole("region", { name: /not set up/ });
  expect(folded.querySelector("details")?.open).toBe(false);
  expect(within(folded).getByText("What the administrator does").tagName).toBe("SUMMARY");
});

test("on a phone the how-to starts folded", async () => {
  window.localStorage.clear();
  const small = vi.fn((query: string) => ({ matches: query.includes("max-width") }));
  Object.defineProperty(window, "matchMedia", { value: small, configurable: true });
  try {
    serve(report(null, false));
    render(<Usage workspace={workspace("maintainer")} refreshKey={0} />);
    const banner = await screen.findByRole("region", { name: /not set up/ });
    expect(banner.querySelector("details")?.open).toBe(false);
    expect(window.localStorage.getItem(SEEN_KEY)).toBeNull();
  } finally {
    Reflect.deleteProperty(window, "matchMedia");
  }
});

test("maintainers see the banner too; developers and guests a short note naming the administrator", async () => {
  for (const role of ["maintainer", "developer", "guest"] as const) {
    serve(report(null, false));
    const { unmount } = render(<Usage workspace={workspace(role)} refreshKey={0} />);
    await screen.findByText(/Claude this month/);
    if (role === "maintainer") {
      expect(screen.getByRole("region", { name: /not set up/ })).toBeTruthy();
    } else {
      expect(screen.queryByRole("region", { name: /not set up/ })).toBeNull();
      expect(screen.getByRole("note").textContent).toContain(
        "Claude is not available yet — ask the administrator of this server",
      );
      expect(screen.getByRole("note").textContent).not.toContain("ANTHROPIC");
    }
    unmount();
    vi.restoreAllMocks();
  }
});

test("the administrator's banner is at the top of the dashboard, not in the workspace", async () => {
  serve(report(null, false));
  render(<Usage workspace={workspace("owner")} refreshKey={0} isAdmin />);
  await screen.findByText(/Claude this month/);
  expect(screen.queryByRole("region")).toBeNull();
  expect(screen.queryByRole("note")).toBeNull();
});

test("the administrator sees the banner from /readyz, with no workspace at all", async () => {
  window.localStorage.clear();
  const fetch = vi
    .spyOn(globalThis, "fetch")
    .mockImplementation(() =>
      Promise.resolve(new Response(JSON.stringify({ status: "ready", claude: "not configured" }))),
    );
  render(<ServerClaudeBanner />);
  const banner = await screen.findByRole("region", { name: /not set up/ });
  expect(String(fetch.mock.calls[0]?.[0])).toBe("/readyz");
  expect(banner.textContent).toContain("you, who run this server");
  expect(within(banner).getByText(START_COMMAND)).toBeTruthy();
});

test("a configured server gives the administrator no banner", async () => {
  const said = vi.fn(() => ({ status: "ready", claude: "configured" }));
  vi.spyOn(globalThis, "fetch").mockImplementation(() =>
    Promise.resolve(new Response(JSON.stringify(said()))),
  );
  render(<ServerClaudeBanner />);
  await vi.waitFor(() => expect(said).toHaveBeenCalled());
  await act(async () => undefined);
  expect(screen.queryByRole("region")).toBeNull();
});

test("members without the budget field hear of no budget once", async () => {
  serve(report(null, true));
  render(<Usage workspace={workspace("developer")} refreshKey={0} />);
  await screen.findByText(/Claude this month/);
  expect(screen.getByText("No monthly budget. Owners can set one.")).toBeTruthy();
  expect(document.body.textContent?.match(/no monthly budget/gi)).toHaveLength(1);
});

test("a configured server shows no banner", async () => {
  serve(report(null, true));
  render(<Usage workspace={workspace("owner")} refreshKey={0} />);
  await screen.findByText(/Claude this month/);
  expect(screen.queryByRole("region")).toBeNull();
  expect(screen.queryByRole("note")).toBeNull();
});

test("the budget field shows the budget; Save only once changed; Remove only when set", async () => {
  const fetch = serve(report(5_000_000));
  render(<Usage workspace={workspace("owner")} refreshKey={0} />);
  const field = (await screen.findByLabelText("Monthly token budget")) as HTMLInputElement;
  expect(field.value).toBe("5,000,000");
  expect(screen.getByText("1.2M of 5M tokens")).toBeTruthy();
  const bar = screen.getByRole("progressbar", { name: "Monthly budget used" });
  expect(bar.getAttribute("aria-valuetext")).toBe("1,234,567 of 5,000,000 tokens (25%)");
  expect(screen.queryByRole("button", { name: /Save budget|Set budget/ })).toBeNull();
  expect(screen.getByRole("button", { name: "Remove budget" })).toBeTruthy();

  fireEvent.change(field, { target: { value: "lots" } });
  expect(field.getAttribute("aria-invalid")).toBe("true");
  expect(screen.getByText("Enter a whole number of tokens, e.g. 2,000,000.").id).toBe(
    field.getAttribute("aria-describedby"),
  );
  expect(screen.queryByRole("button", { name: "Save budget" })).toBeNull();
  fireEvent.change(field, { target: { value: "500" } });
  expect(screen.getByText(/must be at least 1,000 tokens/)).toBeTruthy();
  fireEvent.change(field, { target: { value: "5 000 000" } });
  expect(screen.queryByRole("button", { name: "Save budget" })).toBeNull(); // (unchanged)

  fireEvent.change(field, { target: { value: "8 000 000" } });
  fireEvent.click(screen.getByRole("button", { name: "Save budget" }));
  expect(await screen.findByText("Budget saved: 8,000,000 tokens a month.")).toBeTruthy();
  const put = fetch.mock.calls.find(([, init]) => init?.method === "PUT");
  expect(String(put?.[0])).toBe("/api/workspaces/w/budget");
  expect(JSON.parse(String(put?.[1]?.body))).toEqual({ monthly_tokens: 8_000_000 });
  expect(field.value).toBe("8,000,000");
  expect(screen.queryByRole("button", { name: "Save budget" })).toBeNull();

  fireEvent.click(screen.getByRole("button", { name: "Remove budget" }));
  expect(await screen.findByText(/Budget removed/)).toBeTruthy();
  expect(field.value).toBe("");
  expect(screen.queryByRole("button", { name: "Remove budget" })).toBeNull();
  expect(screen.queryByRole("progressbar")).toBeNull();
  fireEvent.change(field, { target: { value: "2000000" } });
  expect(screen.getByRole("button", { name: "Set budget" })).toBeTruthy();
});

test("others read the budget; no field, no buttons", async () => {
  for (const role of ["maintainer", "developer", "guest"] as const) {
    serve(report(5_000_000));
    const { unmount } = render(<Usage workspace={workspace(role)} refreshKey={0} />);
    expect(
      await screen.findByText("Monthly budget: 5,000,000 tokens, set by the workspace's owners."),
    ).toBeTruthy();
    expect(screen.queryByLabelText("Monthly token budget")).toBeNull();
    expect(screen.queryByRole("button")).toBeNull();
    unmount();
    vi.restoreAllMocks();
  }
});

test("a used-up budget says so, and the server's refusal shows next to the field", async () => {
  vi.spyOn(globalThis, "fetch").mockImplementation((_input, init) =>
    Promise.resolve(
      init?.method === "PUT"
        ? new Response(
            JSON.stringify({ error: { code: "forbidden", message: "owners only", field: null } }),
            { status: 403 },
          )
        : new Response(JSON.stringify(report(1_000_000, true, 1_000_000))),
    ),
  );
  render(<Usage workspace={workspace("owner")} refreshKey={0} />);
  expect(await screen.findByText(/The budget is used up/)).toBeTruthy();
  fireEvent.change(screen.getByLabelText("Monthly token budget"), {
    target: { value: "3000000" },
  });
  fireEvent.click(screen.getByRole("button", { name: "Save budget" }));
  expect((await screen.findByRole("alert")).textContent).toBe(
    "Your role does not allow this: owners only.",
  );
});

test("parseBudget reads separators and explains in words", () => {
  expect(parseBudget("2,000,000")).toEqual({ value: 2_000_000 });
  expect(parseBudget(" 2 000 000 ")).toEqual({ value: 2_000_000 });
  expect(parseBudget("1.5")).toEqual({
    problem: "Enter a whole number of tokens, e.g. 2,000,000.",
  });
  expect(parseBudget("-5")).toHaveProperty("problem");
  expect(parseBudget("999")).toEqual({
    problem: "A budget must be at least 1,000 tokens: one Claude call needs more.",
  });
  expect(parseBudget("1".repeat(17))).toEqual({
    problem: "That is more tokens than a budget can hold.",
  });
});

import { fireEvent, render, screen, within } from "@testing-library/react";
import { afterEach, expect, test, vi } from "vitest";
import { ApiTokens, expiresIn } from "./ApiTokens";
import type { ApiToken, Workspace } from "./api";

const DAY = 86_400_000;
const workspaces: Workspace[] = [
  { id: "w1", name: "frontend", role: "owner", created_at: "2026-01-01T00:00:00Z" },
];
const existing: ApiToken[] = [
  {
    id: "t1",
    name: "ci",
    scope: "write",
    workspace_id: "w1",
    created_at: new Date().toISOString(),
    expires_at: new Date(Date.now() + 10 * DAY + 60_000).toISOString(),
    last_used_at: null,
  },
];

function json(status: number, body: unknown) {
  return Promise.resolve(new Response(JSON.stringify(body), { status }));
}

type Answer = (url: string, init?: RequestInit) => Promise<Response> | undefined;

/** The component's calls: the workspaces, the token list, and ``answer`` first. */
function serve(answer: Answer = () => undefined, tokens: ApiToken[] = existing) {
  return vi.spyOn(globalThis, "fetch").mockImplementation((input, init) => {
    const url = String(input);
    const given = answer(url, init);
    if (given) return given;
    if (url.endsWith("/api/workspaces")) return json(200, workspaces);
    if (url.endsWith("/api/auth/tokens") && (init?.method ?? "GET") === "GET")
      return json(200, tokens);
    return json(500, {});
  });
}

afterEach(() => vi.restoreAllMocks());

test("tokens are listed with their workspace, expiry and last use", async () => {
  serve();
  render(<ApiTokens />);
  const item = await screen.findByText("ci");
  const row = item.closest("li") as HTMLElement;
  await vi.waitFor(() => expect(row.textContent).toContain("For frontend"));
  expect(row.textContent).toContain("expires in 10 days");
  expect(row.textContent).toContain("never used");
  expect(within(row).getByText("write")).toBeTruthy();
});

test("a new token is sent with a 30-day default expiry and its secret shown once", async () => {
  const secret = `cli_pat_${"a".repeat(43)}`;
  const fetch = serve((url, init) =>
    url.endsWith("/api/auth/tokens") && init?.method === "POST"
      ? json(201, { ...existing[0], id: "t2", name: "deploy", token: secret })
      : undefined,
  );
  render(<ApiTokens />);
  await screen.findByText("ci");
  fireEvent.change(screen.getByLabelText("Token name"), { target: { value: " deploy " } });
  fireEvent.change(screen.getByLabelText("Workspace"), { target: { value: "w1" } });
  fireEvent.click(screen.getByRole("button", { name: "Create token" }));
  const shown = await screen.findByTestId("new-token");
  expect(shown.textContent).toBe(secret);
  expect(screen.getByText(/it is not shown again/)).toBeTruthy();
  const sent = fetch.mock.calls.find(([, init]) => init?.method === "POST");
  const body = JSON.parse(String(sent?.[1]?.body));
  expect(body).toMatchObject({ name: "deploy", scope: "read", workspace_id: "w1" });
  const days = (Date.parse(body.expires_at) - Date.now()) / DAY;
  expect(days).toBeGreaterThan(29.9);
  expect(days).toBeLessThan(30.1);
  fireEvent.click(screen.getByRole("button", { name: "Done" }));
  expect(screen.queryByTestId("new-token")).toBeNull();
});

test("a refused field is shown next to it", async () => {
  serve((url, init) =>
    url.endsWith("/api/auth/tokens") && init?.method === "POST"
      ? json(400, {
          error: {
            code: "invalid_request",
            message: "expires_at can be at most a year ahead",
            field: "expires_at",
          },
        })
      : undefined,
  );
  render(<ApiTokens />);
  fireEvent.click(screen.getByRole("button", { name: "Create token" }));
  expect(await screen.findByText(/Give the token a name/)).toBeTruthy();
  fireEvent.change(screen.getByLabelText("Token name"), { target: { value: "x" } });
  fireEvent.click(screen.getByRole("button", { name: "Create token" }));
  const error = await screen.findByText(/at most a year/);
  expect(error.id).toBe("token-expires_at-error");
});

test("revoking asks first, then deletes by id", async () => {
  const fetch = serve((_url, init) =>
    init?.method === "DELETE" ? Promise.resolve(new Response(null, { status: 204 })) : undefined,
  );
  render(<ApiTokens />);
  const row = (await screen.findByText("ci")).closest("li") as HTMLElement;
  fireEvent.click(within(row).getByRole("button", { name: "Revoke" }));
  fireEvent.click(screen.getByRole("button", { name: "Revoke token", hidden: true }));
  await vi.waitFor(() =>
    expect(
      fetch.mock.calls.some(
        ([url, init]) => String(url).endsWith("/api/auth/tokens/t1") && init?.method === "DELETE",
      ),
    ).toBe(true),
  );
});

test("expiry in words", () => {
  const now = Date.parse("2026-12-06T12:00:00Z");
  expect(expiresIn("2026-12-16T12:00:01Z", now)).toBe("expires in 10 days");
  expect(expiresIn("2026-12-07T12:00:01Z", now)).toBe("expires in 1 day");
  expect(expiresIn("2026-12-06T15:30:00Z", now)).toBe("expires in 3 hours");
  expect(expiresIn("2026-12-06T12:30:00Z", now)).toBe("expires within the hour");
  expect(expiresIn("2026-12-06T11:00:00Z", now)).toBe("expired");
});

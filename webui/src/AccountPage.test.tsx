import { fireEvent, render, screen, within } from "@testing-library/react";
import { afterEach, expect, test, vi } from "vitest";
import { AccountPage, browserName } from "./AccountPage";
import type { Session, User } from "./api";

const alice: User = { id: "u1", username: "alice", email: null, is_admin: false };
const now = new Date().toISOString();
const sessions: Session[] = [
  {
    id: "s-here",
    created_at: now,
    last_seen_at: now,
    user_agent: "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/140.0 Safari/537.36",
    address: "192.0.2.1",
    current: true,
  },
  {
    id: "s-phone",
    created_at: now,
    last_seen_at: now,
    user_agent: "Mozilla/5.0 (iPhone; CPU iPhone OS 18_0 like Mac OS X) Safari/604.1",
    address: "198.51.100.7",
    current: false,
  },
];

function json(status: number, body: unknown) {
  return Promise.resolve(new Response(JSON.stringify(body), { status }));
}

/** The page's calls: the session list, and ``answer`` for everything else. */
function serve(answer: (url: string, init?: RequestInit) => Promise<Response>) {
  return vi.spyOn(globalThis, "fetch").mockImplementation((input, init) => {
    const url = String(input);
    if (url.endsWith("/api/auth/sessions") && (init?.method ?? "GET") === "GET")
      return json(200, sessions);
    return answer(url, init);
  });
}

afterEach(() => vi.restoreAllMocks());

function fill(label: string, value: string) {
  fireEvent.change(screen.getByLabelText(label), { target: { value } });
}

test("the new password is checked before anything is sent, errors next to the field", async () => {
  const fetch = serve(() => json(500, {}));
  render(<AccountPage user={alice} />);
  fill("Current password", "old password");
  fill("New password", "short");
  fireEvent.click(screen.getByRole("button", { name: "Change password" }));
  const error = await screen.findByText("The new password needs at least 8 characters.");
  expect(error.id).toBe("new_password-error");
  expect(screen.getByLabelText("New password").getAttribute("aria-describedby")).toBe(
    "new_password-error",
  );
  expect(screen.getByLabelText("New password").getAttribute("aria-invalid")).toBe("true");
  fill("New password", "long enough now");
  fill("Repeat the new password", "something else");
  fireEvent.click(screen.getByRole("button", { name: "Change password" }));
  expect(await screen.findByText("This does not match the new password.")).toBeTruthy();
  expect(fetch.mock.calls.some(([url]) => String(url).endsWith("/api/auth/password"))).toBe(false);
});

test("a wrong current password is shown next to that field", async () => {
  serve(() =>
    json(403, { error: { code: "wrong_password", message: "the current password is wrong" } }),
  );
  render(<AccountPage user={alice} />);
  fill("Current password", "not it");
  fill("New password", "a new password");
  fill("Repeat the new password", "a new password");
  fireEvent.click(screen.getByRole("button", { name: "Change password" }));
  const error = await screen.findByText("That is not your current password.");
  expect(error.id).toBe("current_password-error");
  expect(screen.getByLabelText("Current password").getAttribute("aria-invalid")).toBe("true");
});

test("a changed password is sent once and confirmed", async () => {
  const fetch = serve(() => Promise.resolve(new Response(null, { status: 204 })));
  render(<AccountPage user={alice} />);
  fill("Current password", "old password");
  fill("New password", "a new password");
  fill("Repeat the new password", "a new password");
  fireEvent.click(screen.getByRole("button", { name: "Change password" }));
  expect((await screen.findByRole("status")).textContent).toContain(
    "other sessions were signed out",
  );
  const sent = fetch.mock.calls.find(([url]) => String(url).endsWith("/api/auth/password"));
  expect(sent?.[1]?.method).toBe("PUT");
  expect(sent?.[1]?.body).toBe(
    JSON.stringify({ current_password: "old password", new_password: "a new password" }),
  );
  expect((screen.getByLabelText("Current password") as HTMLInputElement).value).toBe("");
});

test("sessions: this device is marked, another one is revoked by its id", async () => {
  const fetch = serve(() => Promise.resolve(new Response(null, { status: 204 })));
  render(<AccountPage user={alice} />);
  const items = await screen.findAllByRole("listitem");
  expect(items).toHaveLength(2);
  const [here, phone] = items as [HTMLElement, HTMLElement];
  expect(within(here).getByText("This device")).toBeTruthy();
  expect(within(here).getByText("Chrome on Linux")).toBeTruthy();
  expect(within(phone).queryByText("This device")).toBeNull();
  expect(within(phone).getByText("Safari on iPhone")).toBeTruthy();
  expect(phone.textContent).toContain("198.51.100.7");
  fireEvent.click(within(phone).getByRole("button", { name: "Revoke Safari on iPhone session" }));
  await vi.waitFor(() =>
    expect(
      fetch.mock.calls.some(
        ([url, init]) =>
          String(url).endsWith("/api/auth/sessions/s-phone") && init?.method === "DELETE",
      ),
    ).toBe(true),
  );
});

test("browser names from User-Agent strings", () => {
  expect(browserName(null)).toBe("Unknown browser");
  expect(browserName("curl/8.5.0")).toBe("curl");
  expect(browserName("Mozilla/5.0 (Windows NT 10.0) Gecko/20100101 Firefox/130.0")).toBe(
    "Firefox on Windows",
  );
  expect(browserName("Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) Chrome/140 Edg/140")).toBe(
    "Edge on macOS",
  );
});

/** The server after a password change or a revoke: only this device's session is left. */
function serveShrinking() {
  let list = sessions;
  return vi.spyOn(globalThis, "fetch").mockImplementation((input, init) => {
    const url = String(input);
    if (url.endsWith("/api/auth/sessions") && (init?.method ?? "GET") === "GET")
      return json(200, list);
    list = sessions.filter((s) => s.current);
    return Promise.resolve(new Response(null, { status: 204 }));
  });
}

test("after a password change the other sessions are gone from the list", async () => {
  serveShrinking();
  render(<AccountPage user={alice} />);
  expect(await screen.findAllByRole("listitem")).toHaveLength(2);
  fill("Current password", "old password");
  fill("New password", "a new password");
  fill("Repeat the new password", "a new password");
  fireEvent.click(screen.getByRole("button", { name: "Change password" }));
  await screen.findByText("Password changed. Your other sessions were signed out.");
  await vi.waitFor(() => expect(screen.getAllByRole("listitem")).toHaveLength(1));
  expect(screen.queryByRole("button", { name: /^Revoke/ })).toBeNull();
});

test("a revoked session leaves the list", async () => {
  serveShrinking();
  render(<AccountPage user={alice} />);
  fireEvent.click(await screen.findByRole("button", { name: "Revoke Safari on iPhone session" }));
  await vi.waitFor(() => expect(screen.getAllByRole("listitem")).toHaveLength(1));
  expect(screen.queryByText("Safari on iPhone")).toBeNull();
});

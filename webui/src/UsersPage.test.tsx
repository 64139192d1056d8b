import { fireEvent, render, screen, within } from "@testing-library/react";
import { afterEach, beforeAll, expect, test, vi } from "vitest";
import type { AdminUser, Registration, User } from "./api";
import { UsersPage } from "./UsersPage";

const admin: User = { id: "a", username: "admin", email: null, is_admin: true };
const people: AdminUser[] = [
  {
    id: "a",
    username: "admin",
    email: null,
    created_at: "2026-12-01T00:00:00Z",
    is_admin: true,
    disabled: false,
    last_seen_at: new Date().toISOString(),
  },
  {
    id: "b",
    username: "bob",
    email: "bob@example.com",
    created_at: "2026-12-02T00:00:00Z",
    is_admin: false,
    disabled: false,
    last_seen_at: null,
  },
  {
    id: "c",
    username: "carol",
    email: null,
    created_at: "2026-12-03T00:00:00Z",
    is_admin: false,
    disabled: true,
    last_seen_at: null,
  },
];

function json(status: number, body: unknown) {
  return Promise.resolve(new Response(JSON.stringify(body), { status }));
}

function serve(mode: Registration["mode"] = "open") {
  return vi.spyOn(globalThis, "fetch").mockImplementation((input, init) => {
    const url = String(input);
    const method = init?.method ?? "GET";
    if (url.endsWith("/api/admin/users")) return json(200, people);
    if (url.endsWith("/api/auth/registration"))
      return json(200, { mode, first: false, username_rule: "u", password_rule: "p" });
    if (url.endsWith("/password")) return json(200, { password: "Temp-Pass-1234" });
    if (url.endsWith("/api/admin/signup-links") && method === "POST")
      return json(201, {
        url: "http://localhost/#invite=TOKEN123",
        expires_at: "2026-12-13T00:00:00Z",
      });
    if (url.endsWith("/api/admin/signup-links")) return json(200, []);
    return Promise.resolve(new Response(null, { status: 204 }));
  });
}

afterEach(() => vi.restoreAllMocks());

// jsdom has <dialog> without its methods: open and close it as a browser would.
beforeAll(() => {
  HTMLDialogElement.prototype.showModal = function (this: HTMLDialogElement) {
    this.setAttribute("open", "");
  };
  HTMLDialogElement.prototype.close = function (this: HTMLDialogElement) {
    this.removeAttribute("open");
  };
});

function row(username: string): HTMLElement {
  const found = document.querySelector<HTMLElement>(`tr[data-username='${username}']`);
  if (!found) throw new Error(`no row for ${username}`);
  return found;
}

test("someone who is not the admin is told so and nothing is fetched", () => {
  const fetch = serve();
  render(<UsersPage user={{ ...admin, id: "x", is_admin: false }} />);
  expect(screen.getByText("Only the administrator of this server sees this page.")).toBeTruthy();
  expect(fetch).not.toHaveBeenCalled();
});

test("the table lists everyone; the admin cannot disable themselves", async () => {
  serve();
  render(<UsersPage user={admin} />);
  await screen.findByText("bob@example.com");
  expect(row("admin").querySelector(".badge")?.textContent).toBe("admin");
  expect(within(row("admin")).getByText("you")).toBeTruthy();
  expect(within(row("admin")).queryByRole("button", { name: "Disable" })).toBeNull();
  expect(within(row("bob")).getByText("Active")).toBeTruthy();
  expect(within(row("bob")).getByText("never")).toBeTruthy();
  expect(within(row("carol")).getByText("Disabled")).toBeTruthy();
  expect(within(row("carol")).getByRole("button", { name: "Enable carol" })).toBeTruthy();
  expect(await screen.findByText(/Registration is open/)).toBeTruthy();
  expect(screen.queryByRole("button", { name: "Create sign-up link" })).toBeNull();
});

test("disabling asks first, then posts for that user", async () => {
  const fetch = serve();
  render(<UsersPage user={admin} />);
  await screen.findByText("bob@example.com");
  fireEvent.click(within(row("bob")).getByRole("button", { name: "Disable" }));
  const posted = () =>
    fetch.mock.calls.some(([url]) => String(url).endsWith("/api/admin/users/b/disable"));
  expect(posted()).toBe(false); // only the confirmation so far
  const confirm = within(row("bob")).getByRole("button", { name: "Disable bob", hidden: true });
  fireEvent.click(confirm);
  await vi.waitFor(() => expect(posted()).toBe(true));
});

test("a reset shows the temporary password once, with Copy", async () => {
  serve();
  const writeText = vi.fn(() => Promise.resolve());
  Object.defineProperty(navigator, "clipboard", { value: { writeText }, configurable: true });
  render(<UsersPage user={admin} />);
  await screen.findByText("bob@example.com");
  const confirm = within(row("bob")).getAllByRole("button", {
    name: "Reset password",
    hidden: true,
  });
  fireEvent.click(confirm[confirm.length - 1] as HTMLElement); // the dialog's confirmation
  expect(await within(row("bob")).findByText("Temp-Pass-1234")).toBeTruthy();
  expect(row("bob").textContent).toContain("shown only this once");
  fireEvent.click(within(row("bob")).getByRole("button", { name: "Copy" }));
  expect(writeText).toHaveBeenCalledWith("Temp-Pass-1234");
  expect(await within(row("bob")).findByText("Copied")).toBeTruthy();
  fireEvent.click(within(row("bob")).getByRole("button", { name: "Done, hide it" }));
  expect(screen.queryByText("Temp-Pass-1234")).toBeNull();
});

test("in invite mode the admin creates a sign-up link and sees its URL", async () => {
  serve("invite");
  render(<UsersPage user={admin} />);
  fireEvent.click(await screen.findByRole("button", { name: "Create sign-up link" }));
  expect(await screen.findByText("http://localhost/#invite=TOKEN123")).toBeTruthy();
  expect(screen.getByText(/Registration is by invitation/)).toBeTruthy();
});

test("the admin's own row offers no password reset, and says where to change it", async () => {
  serve();
  render(<UsersPage user={admin} />);
  await screen.findByText("bob@example.com");
  expect(
    within(row("admin")).queryByRole("button", { name: "Reset password", hidden: true }),
  ).toBeNull();
  expect(row("admin").textContent).toContain("Change your own password on your account page.");
  expect(
    within(row("admin")).getByRole("link", { name: "account page" }).getAttribute("href"),
  ).toBe("/account");
  expect(
    within(row("bob")).getAllByRole("button", { name: "Reset password", hidden: true }).length,
  ).toBeGreaterThan(0);
});

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
  const listed = await screen.findByRole("region", { name: "Where you are signed in" });
  const items = await within(listed).findAllByRole("listitem");
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

// Sign-in methods (issue 20).

const github = { name: "github", label: "GitHub", login_url: "/api/auth/oidc/github/login" };
const keycloak = { name: "oidc", label: "Keycloak", login_url: "/api/auth/oidc/oidc/login" };
const linkedGithub = {
  id: "i-gh",
  provider: "github",
  label: "GitHub",
  email: "alice@example.com",
  created_at: now,
  last_used_at: now,
};

/** The account page's server: ``me`` says ``hasPassword``; ``identities`` listed. */
function methods(hasPassword: boolean, identities: unknown[], passwordLogin = true) {
  return serve((url, init) => {
    const method = init?.method ?? "GET";
    if (url.endsWith("/api/auth/me")) return json(200, { ...alice, has_password: hasPassword });
    if (url.endsWith("/api/auth/identities")) return json(200, identities);
    if (url.endsWith("/api/auth/providers")) return json(200, [github, keycloak]);
    if (url.endsWith("/api/auth/registration"))
      return json(200, { mode: "open", first: false, password_login: passwordLogin });
    if (method === "DELETE" || method === "PUT")
      return Promise.resolve(new Response(null, { status: 204 }));
    return json(404, {});
  });
}

function methodsSection() {
  return screen.findByRole("region", { name: "Sign-in methods" });
}

test("the only way in cannot be unlinked, and says why", async () => {
  methods(false, [linkedGithub]);
  render(<AccountPage user={{ ...alice, has_password: false }} />);
  const section = await methodsSection();
  const unlink = await within(section).findByRole("button", { name: "Unlink GitHub" });
  expect(unlink).toHaveProperty("disabled", true);
  const why = document.getElementById(unlink.getAttribute("aria-describedby") ?? "");
  expect(why?.textContent).toContain("This is your only way to sign in");
  expect(within(section).getByText(/Not set: you sign in through a provider/)).toBeTruthy();
  expect(within(section).getByText(/alice@example.com/)).toBeTruthy();
  // Keycloak is not linked yet: its button links it and comes back here.
  const link = within(section).getByRole("link", { name: "Link Keycloak" });
  expect(link.getAttribute("href")).toBe(
    "/api/auth/oidc/oidc/login?link=1&return_to=%2Faccount%3Flinked%3Doidc",
  );
  expect(within(section).queryByRole("link", { name: "Link GitHub" })).toBeNull();
});

test("with a password, an identity can be unlinked", async () => {
  const fetch = methods(true, [linkedGithub]);
  render(<AccountPage user={alice} />);
  const section = await methodsSection();
  const unlink = await within(section).findByRole("button", { name: "Unlink GitHub" });
  expect(unlink).toHaveProperty("disabled", false);
  fireEvent.click(unlink);
  await vi.waitFor(() =>
    expect(
      fetch.mock.calls.some(
        ([url, init]) =>
          String(url).endsWith("/api/auth/identities/i-gh") && init?.method === "DELETE",
      ),
    ).toBe(true),
  );
});

test("password login off: a password is no way in, so the last identity stays", async () => {
  methods(true, [linkedGithub], false);
  render(<AccountPage user={alice} />);
  const section = await methodsSection();
  await within(section).findByText("This server signs people in through its providers only.");
  const unlink = within(section).getByRole("button", { name: "Unlink GitHub" });
  expect(unlink).toHaveProperty("disabled", true);
});

test("back from linking: said once, the address cleaned", async () => {
  window.history.replaceState(null, "", "/account?linked=github");
  methods(true, [linkedGithub]);
  render(<AccountPage user={alice} />);
  expect(await screen.findByText("GitHub linked: you can now sign in with it.")).toBeTruthy();
  expect(window.location.pathname + window.location.search).toBe("/account");
});

test("back from a refused link: the reason in words", async () => {
  window.history.replaceState(null, "", "/account?sso_error=identity_taken");
  methods(true, []);
  render(<AccountPage user={alice} />);
  expect((await screen.findByRole("alert")).textContent).toBe(
    "This identity is already linked to another account.",
  );
  expect(window.location.search).toBe("");
});

test("no password yet: set one without a current password", async () => {
  const fetch = methods(false, [linkedGithub]);
  render(<AccountPage user={{ ...alice, has_password: false }} />);
  await screen.findByRole("heading", { name: "Set a password" });
  expect(screen.queryByLabelText("Current password")).toBeNull();
  fill("New password", "a new password");
  fill("Repeat the new password", "a new password");
  fireEvent.click(screen.getByRole("button", { name: "Set password" }));
  expect(
    await screen.findByText(
      "Password set: you can also sign in with your username and this password.",
    ),
  ).toBeTruthy();
  expect(screen.getByRole("heading", { name: "Change password" })).toBeTruthy();
  const put = fetch.mock.calls.find(([url, init]) => {
    return String(url).endsWith("/api/auth/password") && init?.method === "PUT";
  });
  expect(put?.[1]?.body).toBe(JSON.stringify({ new_password: "a new password" }));
});

test("no providers and no identities: no sign-in methods section", async () => {
  const fetch = serve((url) => {
    if (url.endsWith("/api/auth/identities")) return json(200, []);
    if (url.endsWith("/api/auth/providers")) return json(200, []);
    if (url.endsWith("/api/auth/me")) return json(200, { ...alice, has_password: true });
    return json(200, { mode: "open", first: false, password_login: true });
  });
  render(<AccountPage user={alice} />);
  await screen.findByRole("region", { name: "Where you are signed in" });
  await vi.waitFor(() =>
    expect(fetch.mock.calls.some(([url]) => String(url).endsWith("/api/auth/providers"))).toBe(
      true,
    ),
  );
  expect(screen.queryByRole("region", { name: "Sign-in methods" })).toBeNull();
  expect(screen.getByRole("heading", { name: "Change password" })).toBeTruthy();
});

/** The server after a password change or a revoke: only this device's session is left. */
function serveShrinking() {
  let list = sessions;
  return vi.spyOn(globalThis, "fetch").mockImplementation((input, init) => {
    const url = String(input);
    const method = init?.method ?? "GET";
    if (url.endsWith("/api/auth/sessions") && method === "GET") return json(200, list);
    if (method === "GET") return json(200, url.endsWith("/api/auth/me") ? alice : []);
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

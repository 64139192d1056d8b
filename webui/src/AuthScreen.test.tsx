import { fireEvent, render, screen } from "@testing-library/react";
import { afterEach, expect, test, vi } from "vitest";
import { AuthScreen } from "./AuthScreen";

function reply(status: number, body: unknown) {
  return Promise.resolve(new Response(JSON.stringify(body), { status }));
}

afterEach(() => vi.restoreAllMocks());

test("a failed login shows the server's message and stays on the form", async () => {
  const fetch = vi.spyOn(globalThis, "fetch").mockImplementation((input) => {
    const url = String(input);
    if (url.endsWith("/providers")) return reply(200, []);
    return reply(401, {
      error: { code: "invalid_credentials", message: "wrong username or password" },
    });
  });
  const signedIn = vi.fn();
  render(<AuthScreen onSignedIn={signedIn} />);
  fireEvent.change(screen.getByLabelText("Username"), { target: { value: "alice" } });
  fireEvent.change(screen.getByLabelText("Password"), { target: { value: "nope-nope" } });
  fireEvent.click(screen.getByRole("button", { name: "Sign in" }));
  expect(await screen.findByRole("alert")).toHaveProperty(
    "textContent",
    "Wrong username or password",
  );
  expect(signedIn).not.toHaveBeenCalled();
  const login = fetch.mock.calls.find(([url]) => String(url).endsWith("/api/auth/login"));
  expect(login?.[1]?.body).toBe(JSON.stringify({ username: "alice", password: "nope-nope" }));
});

test("a sign-in button per provider the server lists, back to this page", async () => {
  window.history.replaceState(null, "", "/w/123");
  vi.spyOn(globalThis, "fetch").mockImplementation((input) =>
    String(input).endsWith("/providers")
      ? reply(200, [
          { name: "github", label: "GitHub", login_url: "/api/auth/oidc/github/login" },
          { name: "oidc", label: "Keycloak", login_url: "/api/auth/oidc/oidc/login" },
        ])
      : reply(200, registration("open")),
  );
  render(<AuthScreen onSignedIn={() => undefined} />);
  const github = await screen.findByRole("link", { name: "Sign in with GitHub" });
  expect(github.getAttribute("href")).toBe("/api/auth/oidc/github/login?return_to=%2Fw%2F123");
  const keycloak = screen.getByRole("link", { name: "Sign in with Keycloak" });
  expect(keycloak.getAttribute("href")).toBe("/api/auth/oidc/oidc/login?return_to=%2Fw%2F123");
  expect(screen.getByLabelText("Password")).toBeTruthy(); // (password login still on)
  window.history.replaceState(null, "", "/");
});

test("no providers: no sign-in buttons", async () => {
  vi.spyOn(globalThis, "fetch").mockImplementation((input) =>
    String(input).endsWith("/providers") ? reply(200, []) : reply(200, registration("open")),
  );
  render(<AuthScreen onSignedIn={() => undefined} />);
  await screen.findByRole("button", { name: "New here? Create an account" });
  expect(screen.queryByRole("link")).toBeNull();
});

test("password login off: only the providers' buttons, no form, no sign-up", async () => {
  vi.spyOn(globalThis, "fetch").mockImplementation((input) =>
    String(input).endsWith("/providers")
      ? reply(200, [{ name: "github", label: "GitHub", login_url: "/api/auth/oidc/github/login" }])
      : reply(200, { ...registration("open"), password_login: false }),
  );
  render(<AuthScreen onSignedIn={() => undefined} />);
  await screen.findByRole("link", { name: "Sign in with GitHub" });
  await vi.waitFor(() => expect(screen.queryByLabelText("Password")).toBeNull());
  expect(screen.queryByLabelText("Username")).toBeNull();
  expect(screen.queryByRole("button", { name: "Sign in" })).toBeNull();
  expect(screen.queryByRole("button", { name: "New here? Create an account" })).toBeNull();
});

test("back from a refused sign-in: the reason in words, then the address is clean", async () => {
  window.history.replaceState(null, "", "/?sso_error=account_exists&keep=1");
  vi.spyOn(globalThis, "fetch").mockImplementation(() => reply(200, []));
  render(<AuthScreen onSignedIn={() => undefined} />);
  expect((await screen.findByRole("alert")).textContent).toBe(
    "An account with your email address already exists. Sign in with its password, then link this provider on your account page.",
  );
  expect(window.location.search).toBe("?keep=1");
  window.history.replaceState(null, "", "/");
});

test("an unknown refusal code gets the general sentence", async () => {
  window.history.replaceState(null, "", "/?sso_error=server_error");
  vi.spyOn(globalThis, "fetch").mockImplementation(() => reply(200, []));
  render(<AuthScreen onSignedIn={() => undefined} />);
  expect((await screen.findByRole("alert")).textContent).toBe(
    "The sign-in did not work. Please try again, or ask your administrator.",
  );
  expect(window.location.search).toBe("");
});

function registration(mode: string, first = false) {
  return {
    mode,
    first,
    username_rule: "Username: 3-32 characters.",
    password_rule: "Password: at least 8 characters.",
  };
}

test("the rules are shown before submitting a new account", async () => {
  vi.spyOn(globalThis, "fetch").mockImplementation((input) =>
    String(input).endsWith("/registration") ? reply(200, registration("open")) : reply(200, []),
  );
  render(<AuthScreen onSignedIn={() => undefined} />);
  fireEvent.click(await screen.findByRole("button", { name: "New here? Create an account" }));
  expect(screen.getByText("Username: 3-32 characters.")).toBeTruthy();
  expect(screen.getByText("Password: at least 8 characters.")).toBeTruthy();
  expect(screen.getByLabelText("Password").getAttribute("aria-describedby")).toBe("password-rule");
});

test("closed registration: no sign-up, a sentence instead", async () => {
  vi.spyOn(globalThis, "fetch").mockImplementation((input) =>
    String(input).endsWith("/registration") ? reply(200, registration("closed")) : reply(200, []),
  );
  render(<AuthScreen onSignedIn={() => undefined} />);
  expect(
    await screen.findByText("Registration is closed — ask your administrator for an account."),
  ).toBeTruthy();
  expect(screen.queryByRole("button", { name: "New here? Create an account" })).toBeNull();
});

test("closed, but no accounts yet: the first one (the admin) may register", async () => {
  vi.spyOn(globalThis, "fetch").mockImplementation((input) =>
    String(input).endsWith("/registration")
      ? reply(200, registration("closed", true))
      : reply(200, []),
  );
  render(<AuthScreen onSignedIn={() => undefined} />);
  fireEvent.click(await screen.findByRole("button", { name: "New here? Create an account" }));
  expect(screen.getByText(/this first one becomes the administrator/)).toBeTruthy();
});

test("invite mode: a sign-up link opens the form and sends its token", async () => {
  window.history.replaceState(null, "", "/#invite=TOKEN123");
  const fetch = vi.spyOn(globalThis, "fetch").mockImplementation((input) => {
    const url = String(input);
    if (url.endsWith("/registration")) return reply(200, registration("invite"));
    if (url.endsWith("/register")) return reply(201, { id: "u", username: "bob" });
    if (url.endsWith("/login")) return reply(200, { id: "u", username: "bob" });
    return reply(200, []);
  });
  const signedIn = vi.fn();
  render(<AuthScreen onSignedIn={signedIn} />);
  expect(await screen.findByText(/You were invited/)).toBeTruthy();
  fireEvent.change(screen.getByLabelText("Username"), { target: { value: "bob" } });
  fireEvent.change(screen.getByLabelText("Password"), { target: { value: "long enough" } });
  fireEvent.click(screen.getByRole("button", { name: "Create account" }));
  await vi.waitFor(() => expect(signedIn).toHaveBeenCalled());
  const sent = fetch.mock.calls.find(([url]) => String(url).endsWith("/api/auth/register"));
  expect(JSON.parse(String(sent?.[1]?.body))).toEqual({
    username: "bob",
    password: "long enough",
    invite: "TOKEN123",
  });
  expect(window.location.hash).toBe(""); // the token leaves the address bar
});

test("invite mode without a link: no sign-up offered, where to get one said", async () => {
  window.history.replaceState(null, "", "/");
  vi.spyOn(globalThis, "fetch").mockImplementation((input) =>
    String(input).endsWith("/registration") ? reply(200, registration("invite")) : reply(200, []),
  );
  render(<AuthScreen onSignedIn={() => undefined} />);
  expect(await screen.findByText(/need a sign-up link/)).toBeTruthy();
  expect(screen.queryByRole("button", { name: "New here? Create an account" })).toBeNull();
});

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

test("OIDC buttons appear only when the server lists providers", async () => {
  vi.spyOn(globalThis, "fetch").mockImplementation(() =>
    reply(200, [{ name: "GitHub", login_url: "/api/auth/oidc/github/login" }]),
  );
  render(<AuthScreen onSignedIn={() => undefined} />);
  const link = await screen.findByRole("link", { name: "Continue with GitHub" });
  expect(link.getAttribute("href")).toBe("/api/auth/oidc/github/login");
});

import { render, screen } from "@testing-library/react";
import { afterEach, expect, test, vi } from "vitest";
import { App } from "./App";

function json(status: number, body: unknown) {
  return Promise.resolve(new Response(JSON.stringify(body), { status }));
}

afterEach(() => {
  vi.restoreAllMocks();
  window.history.replaceState(null, "", "/");
});

test("signed in and back from a refused link: the account page says why", async () => {
  window.history.replaceState(null, "", "/?sso_error=identity_taken");
  vi.spyOn(globalThis, "fetch").mockImplementation((input) => {
    const url = String(input);
    if (url.endsWith("/api/auth/me"))
      return json(200, { id: "u1", username: "alice", email: null, has_password: true });
    if (url.endsWith("/api/auth/registration")) return json(200, { mode: "open", first: false });
    if (url.includes("/usage") || url.endsWith("/readyz")) return json(200, {});
    return json(200, []);
  });
  render(<App />);
  await screen.findByRole("heading", { name: "Account" });
  expect((await screen.findByRole("alert")).textContent).toBe(
    "This identity is already linked to another account.",
  );
  expect(window.location.pathname + window.location.search).toBe("/account");
});

import { act, render, screen } from "@testing-library/react";
import { afterEach, expect, test, vi } from "vitest";
import { App, SESSION_ENDED } from "./App";
import { api } from "./api";

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

/** A server whose session is valid until ``end()``: then every call answers 401. */
function serve() {
  let ended = false;
  vi.spyOn(globalThis, "fetch").mockImplementation((input) => {
    const url = String(input);
    if (ended)
      return Promise.resolve(
        new Response(JSON.stringify({ error: { code: "unauthorized", message: "sign in" } }), {
          status: 401,
        }),
      );
    let body: unknown = [];
    if (url === "/api/auth/me") body = { id: "u", username: "alice", email: null };
    if (url === "/api/auth/registration")
      body = { mode: "open", first: false, username_rule: "", password_rule: "" };
    return Promise.resolve(new Response(JSON.stringify(body)));
  });
  return () => {
    ended = true;
  };
}

test("a session that ended elsewhere lands on sign-in with the reason", async () => {
  window.history.replaceState(null, "", "/account");
  const end = serve();
  render(<App />);
  await screen.findByRole("heading", { name: "Account" });
  end();
  await act(async () => {
    await api.workspaces().catch(() => undefined);
  });
  expect(await screen.findByText(SESSION_ENDED)).toBeTruthy();
  expect(screen.getByRole("heading", { name: "Sign in to cli-server" })).toBeTruthy();
});

test("a visitor who was never signed in sees no such reason", async () => {
  const end = serve();
  end();
  render(<App />);
  await screen.findByRole("heading", { name: "Sign in to cli-server" });
  expect(screen.queryByText(SESSION_ENDED)).toBeNull();
});

test("a preview's address sent here (/open/<id>?port=N) opens that port once signed in", async () => {
  const ID = "5e19d6c8-5340-490f-8b60-d32be3ee5eec";
  window.history.replaceState(null, "", `/open/${ID}?port=5173`);
  const replace = vi.fn();
  vi.spyOn(window, "location", "get").mockReturnValue({ ...window.location, replace });
  const fetch = vi.spyOn(globalThis, "fetch").mockImplementation((input, init) => {
    const url = String(input);
    if (url === "/api/auth/me") return json(200, { id: "u", username: "alice", email: null });
    if (url === `/api/sandboxes/${ID}`)
      return json(200, { id: ID, workspace_id: "w", name: "web", status: "running" });
    if (url === `/api/sandboxes/${ID}/open` && init?.method === "POST")
      return json(200, { url: `http://oc-${ID}-p5173.localhost/_cli/auth?ticket=t` });
    return json(200, []);
  });
  try {
    render(<App />);
    await vi.waitFor(() =>
      expect(replace).toHaveBeenCalledWith(`http://oc-${ID}-p5173.localhost/_cli/auth?ticket=t`),
    );
    const open = fetch.mock.calls.find(([, init]) => init?.method === "POST");
    expect(JSON.parse(String(open?.[1]?.body))).toEqual({ port: 5173 });
  } finally {
    sessionStorage.clear();
  }
});

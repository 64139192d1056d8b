import { act, fireEvent, render, screen, within } from "@testing-library/react";
import { afterEach, expect, test, vi } from "vitest";
import type { AgentCode, Sandbox, Workspace } from "./api";
import { Sandboxes } from "./Sandboxes";

const sandboxes: Sandbox[] = [
  {
    id: "s1",
    workspace_id: "w",
    name: "alpha",
    status: "running",
    error: null,
    is_local: false,
    created_at: "2026-11-28T00:00:00Z",
    url: null,
  },
  {
    id: "s2",
    workspace_id: "w",
    name: "beta",
    status: "failed",
    error: "opencode did not become healthy (HTTP 500)",
    is_local: false,
    created_at: "2026-11-28T00:00:00Z",
    url: null,
  },
  {
    id: "s3",
    workspace_id: "w",
    name: "gamma",
    status: "creating",
    error: null,
    is_local: false,
    created_at: "2026-11-28T00:00:00Z",
    url: null,
  },
];

function workspace(role: Workspace["role"]): Workspace {
  return { id: "w", name: "W", role, created_at: "2026-11-28T00:00:00Z" };
}

afterEach(() => {
  vi.useRealTimers();
  vi.restoreAllMocks();
});

/** Answers the panel's calls: the sandbox list, the workspace's usage and agent codes. */
function serve(list: Sandbox[] | (() => Sandbox[]), codes: AgentCode[] = []) {
  return vi.spyOn(globalThis, "fetch").mockImplementation((input) => {
    const url = String(input);
    if (url.endsWith("/agent-code")) {
      const code = codes.shift();
      return Promise.resolve(
        code
          ? new Response(JSON.stringify(code), { status: 201 })
          : new Response(
              JSON.stringify({ error: { code: "forbidden", message: "developers only" } }),
              { status: 403 },
            ),
      );
    }
    const body = url.endsWith("/usage")
      ? { month: { requests: 3, total_tokens: 1234 }, monthly_token_budget: 5000 }
      : url.endsWith("/ports")
        ? { ports: [], listed: true }
        : typeof list === "function"
          ? list()
          : list;
    return Promise.resolve(new Response(JSON.stringify(body)));
  });
}

const code: AgentCode = {
  code: "AbC-123_xyz",
  expires_at: "2026-11-28T10:00:00Z",
  server_url: "http://localhost:8080",
};

const local: Sandbox = {
  id: "s9",
  workspace_id: "w",
  name: "ana-laptop",
  status: "offline",
  error: null,
  is_local: true,
  created_at: "2026-11-28T00:00:00Z",
  url: null,
};

/** Lets a navigator.clipboard exist (or not) for one test; jsdom has none. */
function clipboard(value: Pick<Clipboard, "writeText"> | undefined) {
  Object.defineProperty(navigator, "clipboard", { value, configurable: true });
}

test("developers see every control; failed sandboxes show their error", async () => {
  serve(sandboxes);
  render(<Sandboxes workspace={workspace("developer")} pollMs={60_000} />);
  await screen.findByText("alpha");
  expect(screen.getByRole("button", { name: "New sandbox" })).toBeTruthy();
  expect(screen.getByRole("button", { name: "Pause" })).toBeTruthy();
  // A crashed sandbox is restarted (the same call as resume), not "resumed".
  expect(screen.getByRole("button", { name: "Restart" })).toBeTruthy();
  expect(screen.queryByRole("button", { name: "Resume" })).toBeNull();
  expect(screen.getAllByRole("button", { name: "Delete" })).toHaveLength(3);
  expect(screen.getByText("opencode did not become healthy (HTTP 500)")).toBeTruthy();
  expect(screen.getByText("Starting…")).toBeTruthy();
});

test("guests see no mutating controls, only Open", async () => {
  serve(sandboxes);
  render(<Sandboxes workspace={workspace("guest")} pollMs={60_000} />);
  await screen.findByText("alpha");
  for (const name of [
    "New sandbox",
    "Pause",
    "Resume",
    "Restart",
    "Delete",
    "Connect a local agent",
  ]) {
    expect(screen.queryByRole("button", { name })).toBeNull();
  }
  const opens = screen.getAllByRole("button", { name: "Open" }) as HTMLButtonElement[];
  expect(opens.map((b) => b.disabled)).toEqual([false, true, true]);
  // A guest cannot wake the crashed one: Open says who can.
  expect(opens[1]?.title).toBe("It crashed: a developer of this workspace can restart it");
});

test("an empty workspace says what to do next", async () => {
  serve([]);
  render(<Sandboxes workspace={workspace("owner")} pollMs={60_000} />);
  expect(await screen.findByText("No sandboxes yet.")).toBeTruthy();
  expect(screen.getByText("Name one above: it starts opencode in a few seconds.")).toBeTruthy();
  expect((await screen.findByText("1.2K of 5K tokens")).tagName).toBe("STRONG");
  expect(screen.getByRole("button", { name: "Remove budget" })).toBeTruthy();
});

test("developers get a one-time code and the exact command to run on the laptop", async () => {
  vi.setSystemTime(new Date("2026-11-28T09:50:00Z"));
  const fetch = serve(sandboxes, [code]);
  render(<Sandboxes workspace={workspace("developer")} pollMs={60_000} />);
  await screen.findByText("alpha");
  const opener = screen.getByRole("button", { name: "Connect a local agent" });
  fireEvent.click(opener);

  const dialog = screen.getByRole("dialog", { name: "Connect a local agent" });
  const name = within(dialog).getByLabelText("Laptop name");
  expect(document.activeElement).toBe(name);
  const command = await within(dialog).findByText(/--code AbC-123_xyz/);
  expect(command.tagName).toBe("PRE");
  expect(command.textContent).toBe(
    "~/.cli-agent/bin/twistd -n cli-agent --server http://localhost:8080 --code AbC-123_xyz --name my-laptop --opencode-url http://127.0.0.1:4096",
  );
  expect(dialog.textContent).toContain("expires in 10:00");
  expect(dialog.textContent).toContain("opencode serve --port 4096");
  const post = fetch.mock.calls.find(([url]) => String(url).endsWith("/agent-code"));
  expect(String(post?.[0])).toBe("/api/workspaces/w/agent-code");
  expect(post?.[1]).toMatchObject({ method: "POST", credentials: "same-origin" });
  expect(post?.[1]?.body).toBeUndefined();

  // Names with anything beyond [A-Za-z0-9._-] are quoted for the shell.
  fireEvent.change(name, { target: { value: "Ana's laptop" } });
  expect(command.textContent).toContain(`--name 'Ana'\\''s laptop' --opencode-url`);

  const writeText = vi.fn(() => Promise.resolve());
  clipboard({ writeText });
  try {
    fireEvent.click(within(dialog).getByRole("button", { name: "Copy the connect command" }));
    expect(await within(dialog).findByText("Copied to the clipboard.")).toBeTruthy();
    expect(writeText).toHaveBeenCalledWith(command.textContent);
  } finally {
    clipboard(undefined);
  }

  // Without a clipboard the command gets selected and the user is told to copy it by hand.
  fireEvent.click(within(dialog).getByRole("button", { name: "Copy the connect command" }));
  expect(await within(dialog).findByText(/the command is selected/)).toBeTruthy();
  expect(window.getSelection()?.toString()).toBe(command.textContent);

  // Escape closes it, gives focus back and reloads the list (the laptop may have joined).
  const calls = fetch.mock.calls.length;
  await act(async () => {
    fireEvent.keyDown(dialog, { key: "Escape" });
  });
  expect(screen.queryByRole("dialog")).toBeNull();
  expect(document.activeElement).toBe(opener);
  expect(fetch.mock.calls.length).toBeGreaterThan(calls);
});

test("a failed code request shows the server's message in the dialog", async () => {
  serve(sandboxes, []);
  render(<Sandboxes workspace={workspace("developer")} pollMs={60_000} />);
  fireEvent.click(await screen.findByRole("button", { name: "Connect a local agent" }));
  const dialog = screen.getByRole("dialog");
  expect((await within(dialog).findByRole("alert")).textContent).toBe(
    "Your role does not allow this: developers only.",
  );
  expect(within(dialog).getByRole("button", { name: "Get a new code" })).toBeTruthy();
});

test("an expired code says so and a new one can be fetched", async () => {
  vi.useFakeTimers({ shouldAdvanceTime: true });
  vi.setSystemTime(new Date("2026-11-28T09:50:00Z"));
  const fresh = { ...code, code: "second-code", expires_at: "2026-11-28T10:10:30Z" };
  serve(sandboxes, [code, fresh]);
  render(<Sandboxes workspace={workspace("developer")} pollMs={60_000} />);
  fireEvent.click(await screen.findByRole("button", { name: "Connect a local agent" }));
  const dialog = screen.getByRole("dialog");
  await within(dialog).findByText(/--code AbC-123_xyz/);
  expect(dialog.textContent).toContain("expires in 10:00");

  await act(() => vi.advanceTimersByTimeAsync(9 * 60_000 + 55_000));
  expect(dialog.textContent).toMatch(/expires in 0:0[45]/);

  await act(() => vi.advanceTimersByTimeAsync(6_000));
  expect(within(dialog).getByText("This code has expired.")).toBeTruthy();
  expect(within(dialog).queryByText(/--code AbC-123_xyz/)).toBeNull();
  expect(within(dialog).queryByRole("button", { name: "Copy" })).toBeNull();

  fireEvent.click(within(dialog).getByRole("button", { name: "Get a new code" }));
  await within(dialog).findByText(/--code second-code/);
  expect(within(dialog).queryByText("This code has expired.")).toBeNull();
  expect(dialog.textContent).toMatch(/expires in 10:2\d/);
});

test("local sandboxes are badged, offer no pause or resume, and follow their agent live", async () => {
  let status: Sandbox["status"] = "offline";
  serve(() => [sandboxes[0] as Sandbox, { ...local, status }]);
  render(<Sandboxes workspace={workspace("owner")} pollMs={50} />);
  const card = (await screen.findByText("ana-laptop")).closest("li") as HTMLElement;
  expect(within(card).getByText("local").className).toBe("badge");
  const offline = within(card).getByRole("status");
  expect(offline.textContent).toBe("Offline");
  expect(offline.getAttribute("title")).toBe("the agent is not connected");
  expect((within(card).getByRole("button", { name: "Open" }) as HTMLButtonElement).disabled).toBe(
    true,
  );
  for (const name of ["Pause", "Resume"]) {
    expect(within(card).queryByRole("button", { name })).toBeNull();
  }
  expect(within(card).getByRole("dialog", { hidden: true }).textContent).toContain(
    "revokes its agent",
  );

  status = "running";
  expect(await within(card).findByText("Running")).toBeTruthy();
  expect(within(card).queryByRole("button", { name: "Pause" })).toBeNull();
  expect((within(card).getByRole("button", { name: "Open" }) as HTMLButtonElement).disabled).toBe(
    false,
  );
  // The cloud sandbox next to it keeps its Pause.
  expect(screen.getAllByRole("button", { name: "Pause" })).toHaveLength(1);
});

const card: Sandbox = {
  id: "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
  workspace_id: "w",
  name: "web",
  status: "running",
  error: null,
  is_local: false,
  created_at: "2026-12-06T09:00:00Z",
  url: "http://oc-0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0.localhost:8080/",
  short_id: "0f1e2d3c",
  created_by: "ana",
  started_at: "2026-12-06T09:55:00Z",
  last_activity_at: "2026-12-06T11:57:00Z",
  paused_at: null,
  paused_by: null,
};

/** Answers the list with ``list``, and other calls by their path. */
function answer(list: Sandbox[], routes: Record<string, () => Response> = {}) {
  return vi.spyOn(globalThis, "fetch").mockImplementation((input, init) => {
    const url = String(input);
    const key = `${init?.method ?? "GET"} ${url}`;
    if (routes[key]) return Promise.resolve(routes[key]());
    if (url.endsWith("/ports"))
      return Promise.resolve(new Response(JSON.stringify({ ports: [], listed: true })));
    if (url.endsWith("/usage"))
      return Promise.resolve(
        new Response(
          JSON.stringify({ month: { requests: 0, total_tokens: 0 }, monthly_token_budget: null }),
        ),
      );
    return Promise.resolve(new Response(JSON.stringify(list)));
  });
}

test("a card tells its short id, who made it, uptime, activity; its link copies", async () => {
  vi.useFakeTimers({ shouldAdvanceTime: true });
  vi.setSystemTime(new Date("2026-12-06T12:00:00Z"));
  answer([card]);
  render(<Sandboxes workspace={workspace("developer")} pollMs={60_000} />);
  const item = (await screen.findByText("web")).closest("li") as HTMLElement;
  expect(within(item).getByText("0f1e2d3c").getAttribute("title")).toContain(card.id);
  expect(item.textContent).toContain("Created by ana 3 h ago");
  expect(item.textContent).toContain("Up 2 h 5 min");
  expect(item.textContent).toContain("Last active 3 min ago");
  const created = item.querySelector("time");
  expect(created?.getAttribute("dateTime")).toBe(card.created_at);
  expect(created?.getAttribute("title")).toBe(new Date(card.created_at).toLocaleString());
  expect((within(item).getByLabelText("Link to web") as HTMLInputElement).value).toBe(card.url);

  const writeText = vi.fn(() => Promise.resolve());
  clipboard({ writeText });
  try {
    fireEvent.click(within(item).getByRole("button", { name: "Copy link" }));
    expect(await within(item).findByRole("button", { name: "Copied" })).toBeTruthy();
    expect(writeText).toHaveBeenCalledWith(card.url);
    await act(() => vi.advanceTimersByTimeAsync(2500));
    expect(within(item).getByRole("button", { name: "Copy link" })).toBeTruthy();
  } finally {
    clipboard(undefined);
  }
});

test("a paused card says who paused it, or after how long idle", async () => {
  vi.useFakeTimers({ shouldAdvanceTime: true });
  vi.setSystemTime(new Date("2026-12-06T12:00:00Z"));
  const idle: Sandbox = {
    ...card,
    status: "paused",
    started_at: null,
    last_activity_at: "2026-12-06T11:00:00Z",
    paused_at: "2026-12-06T11:30:00Z",
    paused_by: { kind: "idle", idle_minutes: 30 },
  };
  const byBob: Sandbox = {
    ...idle,
    id: "s-bob",
    name: "api",
    short_id: "11111111",
    paused_by: { kind: "user", username: "bob" },
  };
  answer([idle, byBob]);
  render(<Sandboxes workspace={workspace("developer")} pollMs={60_000} />);
  const first = (await screen.findByText("web")).closest("li") as HTMLElement;
  expect(first.textContent).toContain("Paused after 30 min idle 30 min ago");
  expect(first.textContent).not.toContain("Up ");
  const second = screen.getByText("api").closest("li") as HTMLElement;
  expect(second.textContent).toContain("Paused by bob 30 min ago");
});

test("a name in use is said next to the name field", async () => {
  const fetch = answer([card], {
    "POST /api/workspaces/w/sandboxes": () =>
      new Response(
        JSON.stringify({
          error: {
            code: "name_taken",
            message: 'A sandbox named "WEB" already exists in this workspace.',
            field: "name",
          },
        }),
        { status: 409 },
      ),
  });
  render(<Sandboxes workspace={workspace("developer")} pollMs={60_000} />);
  await screen.findByText("web");
  const field = screen.getByPlaceholderText("Name a new sandbox");
  fireEvent.change(field, { target: { value: "WEB" } });
  await act(async () => {
    fireEvent.click(screen.getByRole("button", { name: "New sandbox" }));
  });
  const said = await screen.findByText('A sandbox named "WEB" already exists in this workspace.');
  expect(said.id).toBe("sandbox-name-error");
  expect(field.getAttribute("aria-invalid")).toBe("true");
  expect(field.getAttribute("aria-describedby")).toBe("sandbox-name-error");
  expect((field as HTMLInputElement).value).toBe("WEB"); // kept, to be changed
  expect(fetch.mock.calls.some(([, init]) => init?.method === "POST")).toBe(true);
  fireEvent.change(field, { target: { value: "WEB 2" } });
  expect(screen.queryByText(/already exists/)).toBeNull();
});

test("a local sandbox whose agent is older than the server says to upgrade it", async () => {
  const warning = "this agent is cli-server 1.2.3, older than this server's 26.11.0: upgrade it";
  serve(() => [
    { ...local, status: "running", agent: { version: "1.2.3", protocol: 1, warning } },
    { ...local, id: "l2", name: "current", status: "running", agent: null },
  ]);
  render(<Sandboxes workspace={workspace("owner")} pollMs={60_000} />);
  const old = (await screen.findByText("ana-laptop")).closest("li") as HTMLElement;
  expect(old.querySelector(".agent-warning")?.textContent).toBe(`Outdated agent: ${warning}`);
  const current = screen.getByText("current").closest("li") as HTMLElement;
  expect(current.querySelector(".agent-warning")).toBeNull();
});

test("a crashed card says why; developers read its log, guests have no Logs", async () => {
  const crashed: Sandbox = {
    ...card,
    status: "failed",
    started_at: null,
    error: "opencode was killed by signal 9 (SIGKILL)",
  };
  const fetch = answer([crashed], {
    [`GET /api/sandboxes/${card.id}/logs`]: () =>
      new Response(
        JSON.stringify({
          lines: ["opencode server listening on http://0.0.0.0:4096", "--- killed ---"],
          truncated: true,
        }),
      ),
  });
  const { unmount } = render(<Sandboxes workspace={workspace("developer")} pollMs={60_000} />);
  const item = (await screen.findByText("web")).closest("li") as HTMLElement;
  expect(within(item).getByRole("status").textContent).toBe("Crashed");
  expect(item.querySelector(".crash-reason")?.textContent).toBe(
    "This sandbox crashed: opencode was killed by signal 9 (SIGKILL)",
  );
  const logs = within(item).getByRole("button", { name: "Logs" });
  expect(logs.getAttribute("aria-expanded")).toBe("false");
  fireEvent.click(logs);
  const panel = within(item).getByRole("region", { name: "Log of web" });
  const pre = await within(panel).findByText(/opencode server listening/);
  expect(pre.tagName).toBe("PRE");
  expect(pre.textContent).toBe("opencode server listening on http://0.0.0.0:4096\n--- killed ---");
  expect(panel.textContent).toContain("(older lines left out)");
  expect(within(item).getByRole("button", { name: "Hide logs" })).toBeTruthy();
  expect(fetch.mock.calls.some(([url]) => String(url).endsWith("/logs"))).toBe(true);
  unmount();

  answer([crashed]);
  render(<Sandboxes workspace={workspace("guest")} pollMs={60_000} />);
  await screen.findByText("web");
  expect(screen.queryByRole("button", { name: "Logs" })).toBeNull();
});

test("idle under a minute is said in seconds, and the pause tells when (no 'last active')", async () => {
  vi.useFakeTimers({ shouldAdvanceTime: true });
  vi.setSystemTime(new Date("2026-12-06T12:00:20Z"));
  const quick: Sandbox = {
    ...card,
    status: "paused",
    started_at: null,
    last_activity_at: "2026-12-06T11:59:45Z",
    paused_at: "2026-12-06T12:00:15Z",
    paused_by: { kind: "idle", idle_minutes: 1 },
  };
  answer([quick]);
  render(<Sandboxes workspace={workspace("developer")} pollMs={60_000} />);
  const item = (await screen.findByText("web")).closest("li") as HTMLElement;
  expect(item.textContent).toContain("Paused after 30 s idle just now");
  expect(item.textContent).not.toContain("1 min idle");
  expect(item.textContent).not.toContain("Last active");
});

test("Open on a paused sandbox resumes it, then opens it", async () => {
  const paused: Sandbox = {
    ...card,
    status: "paused",
    paused_at: "2026-12-06T11:30:00Z",
    paused_by: { kind: "user", username: "bob" },
  };
  const calls: string[] = [];
  const fetch = answer([paused], {
    [`POST /api/sandboxes/${card.id}/resume`]: () =>
      new Response(JSON.stringify({ ...paused, status: "resuming" })),
    [`POST /api/sandboxes/${card.id}/open`]: () =>
      new Response(JSON.stringify({ url: "http://oc-x.localhost/open?t=1" })),
  });
  const tab = { location: { href: "" }, close: vi.fn(), opener: window as Window | null };
  vi.spyOn(window, "open").mockReturnValue(tab as unknown as Window);
  render(<Sandboxes workspace={workspace("developer")} pollMs={60_000} />);
  const item = (await screen.findByText("web")).closest("li") as HTMLElement;
  const open = within(item).getByRole("button", { name: "Open" }) as HTMLButtonElement;
  expect(open.disabled).toBe(false);
  expect(open.title).toBe("Resumes it, then opens it");
  fireEvent.click(open);
  await vi.waitFor(() => expect(tab.location.href).toBe("http://oc-x.localhost/open?t=1"));
  for (const [input, init] of fetch.mock.calls)
    if (init?.method === "POST") calls.push(String(input));
  expect(calls).toEqual([`/api/sandboxes/${card.id}/resume`, `/api/sandboxes/${card.id}/open`]);
  expect(tab.opener).toBeNull(); // (opencode's tab cannot navigate the dashboard's)
});

test("guests: Open on a paused sandbox is disabled and says why", async () => {
  answer([{ ...card, status: "paused", paused_by: { kind: "user", username: "bob" } }]);
  render(<Sandboxes workspace={workspace("guest")} pollMs={60_000} />);
  const item = (await screen.findByText("web")).closest("li") as HTMLElement;
  const open = within(item).getByRole("button", { name: "Open" }) as HTMLButtonElement;
  expect(open.disabled).toBe(true);
  expect(open.title).toBe("It is paused: a developer of this workspace can resume it");
});

test("a running card has its Previews; a paused one has none", async () => {
  answer([card, { ...card, id: "p1", name: "sleepy", status: "paused" }], {
    [`GET /api/sandboxes/${card.id}/ports`]: () =>
      new Response(JSON.stringify({ ports: [5173], listed: true })),
  });
  render(<Sandboxes workspace={workspace("guest")} pollMs={60_000} previewPollMs={60_000} />);
  const running = (await screen.findByText("web")).closest("li") as HTMLElement;
  const previews = within(running).getByRole("region", { name: "Previews" });
  expect(await within(previews).findByRole("button", { name: "Open port 5173" })).toBeTruthy();
  // The card's own Open is still the only button named exactly "Open" that is not a port's.
  expect(within(running).getAllByRole("button", { name: "Open" })).toHaveLength(1);
  const paused = screen.getByText("sleepy").closest("li") as HTMLElement;
  expect(within(paused).queryByRole("region", { name: "Previews" })).toBeNull();
});

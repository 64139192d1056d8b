import { fireEvent, render, screen, within } from "@testing-library/react";
import { afterEach, expect, test, vi } from "vitest";
import type { AgentCode } from "./api";
import { LocalAgentButton } from "./LocalAgent";

const code: AgentCode = {
  code: "AbC-123_xyz",
  expires_at: "2026-11-28T10:00:00Z",
  server_url: "http://localhost:8080",
};

afterEach(() => {
  vi.useRealTimers();
  vi.restoreAllMocks();
  Object.defineProperty(navigator, "clipboard", { value: undefined, configurable: true });
});

test("the dialog shows install, opencode and connect steps, each copyable", async () => {
  vi.setSystemTime(new Date("2026-11-28T09:50:00Z"));
  vi.spyOn(globalThis, "fetch").mockImplementation(() =>
    Promise.resolve(new Response(JSON.stringify(code), { status: 201 })),
  );
  const writeText = vi.fn((_: string) => Promise.resolve());
  Object.defineProperty(navigator, "clipboard", { value: { writeText }, configurable: true });
  render(<LocalAgentButton workspaceId="w" />);
  fireEvent.click(screen.getByRole("button", { name: "Connect a local agent" }));
  const dialog = screen.getByRole("dialog", { name: "Connect a local agent" });
  await within(dialog).findByText(/--code AbC-123_xyz/);

  // What it does and what the laptop needs, in plain words.
  expect(dialog.textContent).toContain("joins this workspace as a local sandbox");
  expect(dialog.textContent).toContain("needs no open port");
  expect(dialog.textContent).toContain("Python 3.11 or newer, opencode installed");
  expect(dialog.textContent).toContain("There is no lighter agent-only package yet");
  // The expiry, as a countdown and as a time of day.
  const at = new Date(code.expires_at).toLocaleTimeString([], {
    hour: "2-digit",
    minute: "2-digit",
  });
  expect(dialog.textContent).toContain(`The code expires in 10:00, at ${at}; it works once.`);

  const expected: [string, string][] = [
    ["install", "python3 -m venv ~/.cli-agent && ~/.cli-agent/bin/pip install ./cli-server"],
    ["opencode", "opencode serve --port 4096"],
    [
      "connect",
      "~/.cli-agent/bin/twistd -n cli-agent --server http://localhost:8080 --code AbC-123_xyz --name my-laptop --opencode-url http://127.0.0.1:4096",
    ],
  ];
  for (const [which, text] of expected) {
    const button = within(dialog).getByRole("button", { name: `Copy the ${which} command` });
    expect(button.textContent).toBe("Copy");
    expect(button.previousElementSibling?.textContent).toBe(text);
    fireEvent.click(button);
    await vi.waitFor(() => expect(writeText).toHaveBeenLastCalledWith(text));
    // The confirmation shows under the block that was copied, and only there.
    await vi.waitFor(() =>
      expect(button.parentElement?.nextElementSibling?.textContent).toBe(
        "Copied to the clipboard.",
      ),
    );
    expect(within(dialog).getAllByText("Copied to the clipboard.")).toHaveLength(1);
  }
});

/** The code for the agent-code call, the registration answer (with the version) otherwise. */
function serveWithVersion() {
  vi.setSystemTime(new Date("2026-11-28T09:50:00Z"));
  vi.spyOn(globalThis, "fetch").mockImplementation((input) =>
    Promise.resolve(
      String(input).endsWith("/agent-code")
        ? new Response(JSON.stringify(code), { status: 201 })
        : new Response(JSON.stringify({ mode: "open", first: false, version: "26.11.0.dev0" })),
    ),
  );
}

function screenLike(small: boolean) {
  const matchMedia = vi.fn((query: string) => ({ matches: small && query.length > 0 }));
  Object.defineProperty(window, "matchMedia", { value: matchMedia, configurable: true });
}

test("the laptop's copy of cli-server: this server's version, and whom to ask", async () => {
  serveWithVersion();
  render(<LocalAgentButton workspaceId="w" />);
  fireEvent.click(screen.getByRole("button", { name: "Connect a local agent" }));
  const dialog = screen.getByRole("dialog", { name: "Connect a local agent" });
  await within(dialog).findByText("26.11.0.dev0");
  expect(dialog.textContent).toContain(
    "the same version of cli-server as this server (26.11.0.dev0) — ask your administrator for the source.",
  );
  // The help under the steps is normal-size text.
  const footer = within(dialog).getByText(/reconnects with the saved credentials/);
  expect(footer.className).not.toContain("small");
});

test("phones: the name field does not take focus (no keyboard over the steps)", async () => {
  screenLike(true);
  try {
    serveWithVersion();
    render(<LocalAgentButton workspaceId="w" />);
    fireEvent.click(screen.getByRole("button", { name: "Connect a local agent" }));
    const field = screen.getByLabelText("Laptop name");
    await within(screen.getByRole("dialog")).findByText(/--code AbC-123_xyz/);
    expect(document.activeElement).not.toBe(field);
  } finally {
    Reflect.deleteProperty(window, "matchMedia");
  }
});

test("desktops: the name field takes focus", async () => {
  screenLike(false);
  try {
    serveWithVersion();
    render(<LocalAgentButton workspaceId="w" />);
    fireEvent.click(screen.getByRole("button", { name: "Connect a local agent" }));
    expect(document.activeElement).toBe(screen.getByLabelText("Laptop name"));
    await within(screen.getByRole("dialog")).findByText(/--code AbC-123_xyz/);
  } finally {
    Reflect.deleteProperty(window, "matchMedia");
  }
});

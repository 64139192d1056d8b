import { type FormEvent, useCallback, useEffect, useState } from "react";
import { api, atLeast, describe, type Sandbox, type Workspace } from "./api";
import { ConfirmButton } from "./Confirm";
import { LocalAgentButton } from "./LocalAgent";
import { Usage } from "./Usage";
import { Alert, useAction } from "./useAction";

const MOVING = new Set(["creating", "resuming", "pausing"]);
const LABEL: Record<string, string> = {
  creating: "Starting…",
  resuming: "Resuming…",
  pausing: "Pausing…",
  running: "Running",
  paused: "Paused",
  offline: "Offline",
  failed: "Failed",
};
const TITLE: Record<string, string> = {
  offline: "the agent is not connected",
};

interface Props {
  workspace: Workspace;
  pollMs?: number;
}

export function Sandboxes({ workspace, pollMs = 2000 }: Props) {
  const [sandboxes, setSandboxes] = useState<Sandbox[] | null>(null);
  const [name, setName] = useState("");
  const [ticks, setTicks] = useState(0);
  const canChange = atLeast(workspace.role, "developer");

  const [loadError, setLoadError] = useState<string | null>(null);
  const load = useCallback(async () => {
    try {
      setSandboxes(await api.sandboxes(workspace.id));
      setTicks((n) => n + 1);
    } catch (e) {
      setLoadError(describe(e));
    }
  }, [workspace.id]);

  useEffect(() => {
    setSandboxes(null);
    void load();
  }, [load]);

  // Live status: poll quickly while something is moving, slowly otherwise.
  const moving = sandboxes?.some((s) => MOVING.has(s.status)) ?? false;
  useEffect(() => {
    const timer = setInterval(() => void load(), moving ? pollMs / 4 : pollMs);
    return () => clearInterval(timer);
  }, [load, moving, pollMs]);

  const { error, setError, act } = useAction(load);
  const shown = error ?? loadError;

  async function create(event: FormEvent) {
    event.preventDefault();
    await act(async () => {
      await api.createSandbox(workspace.id, name);
      setName("");
    });
  }

  async function open(sandbox: Sandbox) {
    // Open the tab first (browsers allow that only during the click), then send it to the
    // one-time link once the server has minted it.
    const tab = window.open("about:blank", "_blank");
    try {
      const { url } = await api.open(sandbox.id);
      if (tab) tab.location.href = url;
      else window.location.href = url;
    } catch (e) {
      tab?.close();
      setError(describe(e));
    }
  }

  return (
    <section aria-label="Sandboxes">
      <Usage workspace={workspace} refreshKey={Math.floor(ticks / 5)} />
      {canChange && (
        <form onSubmit={create} className="row">
          <label className="grow">
            <span className="sr-only">Sandbox name</span>
            <input
              name="sandbox"
              required
              maxLength={100}
              placeholder="Name a new sandbox"
              value={name}
              onChange={(e) => setName(e.target.value)}
            />
          </label>
          <button type="submit" className="primary">
            New sandbox
          </button>
          <LocalAgentButton workspaceId={workspace.id} onClosed={() => void load()} />
        </form>
      )}
      <Alert message={shown} />
      {sandboxes === null && <p className="muted">Loading sandboxes…</p>}
      {sandboxes?.length === 0 && (
        <div className="empty">
          <p>No sandboxes yet.</p>
          <p className="muted">
            {canChange
              ? "Name one above: it starts opencode in about two seconds."
              : "A developer of this workspace can start one."}
          </p>
        </div>
      )}
      <ul className="plain cards">
        {sandboxes?.map((s) => (
          <li key={s.id} className="card sandbox" data-status={s.status}>
            <div className="row between">
              <span className="row tight">
                <strong>{s.name}</strong>
                {s.is_local && (
                  <span className="badge" title="runs on a laptop, joined through a local agent">
                    local
                  </span>
                )}
              </span>
              <span className={`status ${s.status}`} role="status" title={TITLE[s.status]}>
                {MOVING.has(s.status) && <span className="spinner" aria-hidden="true" />}
                {LABEL[s.status] ?? s.status}
              </span>
            </div>
            {s.status === "failed" && s.error && <p className="error">{s.error}</p>}
            {s.is_local && s.status === "offline" && (
              <p className="muted small">
                Its agent is not connected; it comes back when the laptop reconnects.
              </p>
            )}
            {s.usage && s.usage.tokens_this_month > 0 && (
              <p className="muted small">
                {s.usage.tokens_this_month.toLocaleString("en")} tokens this month
              </p>
            )}
            <div className="row">
              <button
                type="button"
                className="primary"
                disabled={s.status !== "running"}
                onClick={() => void open(s)}
              >
                Open
              </button>
              {canChange && !s.is_local && s.status === "running" && (
                <button type="button" onClick={() => void act(() => api.pause(s.id))}>
                  Pause
                </button>
              )}
              {canChange && !s.is_local && (s.status === "paused" || s.status === "failed") && (
                <button type="button" onClick={() => void act(() => api.resume(s.id))}>
                  Resume
                </button>
              )}
              {canChange && (
                <ConfirmButton
                  label="Delete"
                  question={
                    s.is_local
                      ? `Delete local sandbox "${s.name}"? This revokes its agent; the laptop needs a new code to join again.`
                      : `Delete sandbox "${s.name}"? Its opencode sessions go; the workspace disk stays.`
                  }
                  confirmLabel="Delete sandbox"
                  onConfirm={() => void act(() => api.deleteSandbox(s.id))}
                />
              )}
            </div>
          </li>
        ))}
      </ul>
    </section>
  );
}

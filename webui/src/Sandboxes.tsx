import { type FormEvent, type ReactElement, useCallback, useEffect, useRef, useState } from "react";
import {
  ApiError,
  api,
  atLeast,
  describe,
  type Sandbox,
  type SandboxLogs,
  type Workspace,
} from "./api";
import { ConfirmButton } from "./Confirm";
import { LocalAgentButton } from "./LocalAgent";
import { openInNewTab, Previews } from "./Previews";
import { Usage } from "./Usage";
import { Alert, useAction } from "./useAction";
import { useCopy } from "./useCopy";
import { absolute, ago, span } from "./when";

const MOVING = new Set(["creating", "resuming", "pausing"]);
const LABEL: Record<string, string> = {
  creating: "Starting…",
  resuming: "Resuming…",
  pausing: "Pausing…",
  running: "Running",
  paused: "Paused",
  offline: "Offline",
  failed: "Crashed",
};
const TITLE: Record<string, string> = {
  offline: "the agent is not connected",
};
/** Open wakes these first (developers and up): resume, then the subdomain's page waits. */
const WAKEABLE = new Set(["paused", "failed"]);

interface Props {
  workspace: Workspace;
  pollMs?: number;
  /** How often a running card reads its listening ports again (see Previews). */
  previewPollMs?: number;
  isAdmin?: boolean;
}

export function Sandboxes({
  workspace,
  pollMs = 2000,
  previewPollMs = 5000,
  isAdmin = false,
}: Props) {
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
  const [nameError, setNameError] = useState<string | null>(null);

  async function create(event: FormEvent) {
    event.preventDefault();
    setNameError(null);
    await act(async () => {
      try {
        await api.createSandbox(workspace.id, name);
      } catch (e) {
        // A name in use belongs next to the name field, not in the panel's alert.
        if (e instanceof ApiError && e.code === "name_taken") {
          setNameError(e.message);
          return;
        }
        throw e;
      }
      setName("");
    });
  }

  async function open(sandbox: Sandbox) {
    try {
      await openInNewTab(async () => {
        if (canChange && !sandbox.is_local && WAKEABLE.has(sandbox.status)) {
          try {
            await api.resume(sandbox.id);
          } catch (e) {
            // Someone else resumed it a moment ago: open it all the same.
            if (!(e instanceof ApiError && e.status === 409)) throw e;
          }
          void load();
        }
        return (await api.open(sandbox.id)).url;
      });
    } catch (e) {
      setError(describe(e));
    }
  }

  return (
    <section aria-label="Sandboxes">
      <Usage workspace={workspace} refreshKey={Math.floor(ticks / 5)} isAdmin={isAdmin} />
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
              aria-invalid={nameError ? true : undefined}
              aria-describedby={nameError ? "sandbox-name-error" : undefined}
              onChange={(e) => {
                setName(e.target.value);
                setNameError(null);
              }}
            />
            {nameError && (
              <span id="sandbox-name-error" className="error field-error" role="alert">
                {nameError}
              </span>
            )}
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
              ? "Name one above: it starts opencode in a few seconds."
              : "A developer of this workspace can start one."}
          </p>
        </div>
      )}
      <ul className="plain cards">
        {sandboxes?.map((s) => (
          <SandboxCard
            key={s.id}
            sandbox={s}
            canChange={canChange}
            onOpen={() => void open(s)}
            act={act}
            previewPollMs={previewPollMs}
          />
        ))}
      </ul>
    </section>
  );
}

interface CardProps {
  sandbox: Sandbox;
  canChange: boolean;
  onOpen: () => void;
  act: (work: () => Promise<unknown>) => Promise<void>;
  previewPollMs: number;
}

function When({ iso, now, prefix }: { iso: string; now: number; prefix: string }) {
  return (
    <span>
      {prefix}{" "}
      <time dateTime={iso} title={absolute(iso)}>
        {ago(iso, now)}
      </time>
    </span>
  );
}

function SandboxCard({ sandbox: s, canChange, onOpen, act, previewPollMs }: CardProps) {
  const now = Date.now();
  const [logsOpen, setLogsOpen] = useState(false);
  const facts: ReactElement[] = [];
  facts.push(
    <When
      key="created"
      iso={s.created_at}
      now={now}
      prefix={s.created_by ? `Created by ${s.created_by}` : "Created"}
    />,
  );
  if (s.status === "running" && s.started_at)
    facts.push(
      <span key="up" title={`Started ${absolute(s.started_at)}`}>
        Up {span(Math.max(0, now - Date.parse(s.started_at)))}
      </span>,
    );
  // (an idle pause says when in its own line: "last active" would repeat it, rounded)
  const idlePaused = s.status === "paused" && s.paused_by?.kind === "idle";
  if (s.last_activity_at && !s.is_local && !idlePaused)
    facts.push(<When key="active" iso={s.last_activity_at} now={now} prefix="Last active" />);
  const openable = s.status === "running" || (canChange && !s.is_local && WAKEABLE.has(s.status));
  return (
    <li className="card sandbox" data-status={s.status}>
      <div className="row between">
        <span className="row tight">
          <strong>{s.name}</strong>
          {s.short_id && (
            <code className="short-id" title={`Sandbox id ${s.id}`}>
              {s.short_id}
            </code>
          )}
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
      {s.status === "failed" && s.error && (
        <p className="error crash-reason">
          <strong>This sandbox crashed:</strong> {s.error}
        </p>
      )}
      <p className="muted small facts">
        {facts.map((fact, n) => (
          <span key={fact.key ?? n}>
            {n > 0 && <span aria-hidden="true"> · </span>}
            {fact}
          </span>
        ))}
      </p>
      {s.status === "paused" && <PausedLine sandbox={s} now={now} />}
      {s.is_local && s.status === "offline" && (
        <p className="muted small">
          Its agent is not connected; it comes back when the laptop reconnects.
        </p>
      )}
      {s.is_local && s.agent?.warning && (
        <p className="error small agent-warning">
          <strong>Outdated agent:</strong> {s.agent.warning}
        </p>
      )}
      {s.usage && s.usage.tokens_this_month > 0 && (
        <p className="muted small">
          {s.usage.tokens_this_month.toLocaleString("en")} tokens this month
        </p>
      )}
      {s.url && <CopyLink url={s.url} name={s.name} />}
      <div className="row">
        <button
          type="button"
          className="primary"
          disabled={!openable}
          title={openTitle(s, canChange)}
          onClick={onOpen}
        >
          Open
        </button>
        {canChange && !s.is_local && s.status === "running" && (
          <button type="button" onClick={() => void act(() => api.pause(s.id))}>
            Pause
          </button>
        )}
        {canChange && !s.is_local && WAKEABLE.has(s.status) && (
          <button type="button" onClick={() => void act(() => api.resume(s.id))}>
            {s.status === "failed" ? "Restart" : "Resume"}
          </button>
        )}
        {canChange && !s.is_local && (
          <button
            type="button"
            aria-expanded={logsOpen}
            aria-controls={`logs-${s.id}`}
            onClick={() => setLogsOpen((open) => !open)}
          >
            {logsOpen ? "Hide logs" : "Logs"}
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
      {s.status === "running" && <Previews sandbox={s} pollMs={previewPollMs} />}
      {/* (keyed by status: a crash or restart reads the log again) */}
      {logsOpen && <LogPanel key={s.status} sandbox={s} />}
    </li>
  );
}

/** Why Open does what it does, or why it cannot. */
function openTitle(s: Sandbox, canChange: boolean): string | undefined {
  if (s.status === "running") return undefined;
  if (WAKEABLE.has(s.status) && !s.is_local) {
    if (canChange)
      return s.status === "failed" ? "Restarts it, then opens it" : "Resumes it, then opens it";
    return s.status === "failed"
      ? "It crashed: a developer of this workspace can restart it"
      : "It is paused: a developer of this workspace can resume it";
  }
  if (MOVING.has(s.status)) return `${LABEL[s.status]} — it opens once running`;
  return TITLE[s.status];
}

/** "30 s" under a minute, "4 min" after: how long a sandbox sat idle before its pause. */
export function idleFor(s: Sandbox): string | null {
  if (s.paused_at && s.last_activity_at) {
    const seconds = Math.max(
      1,
      Math.round((Date.parse(s.paused_at) - Date.parse(s.last_activity_at)) / 1000),
    );
    return seconds < 60 ? `${seconds} s` : `${Math.round(seconds / 60)} min`;
  }
  if (s.paused_by?.kind === "idle" && s.paused_by.idle_minutes)
    return `${s.paused_by.idle_minutes} min`;
  return null;
}

function PausedLine({ sandbox: s, now }: { sandbox: Sandbox; now: number }) {
  const by = s.paused_by;
  let who = "Paused";
  if (by?.kind === "idle") {
    const idle = idleFor(s);
    who = idle ? `Paused after ${idle} idle` : "Paused for idleness";
  } else if (by?.kind === "user") who = `Paused by ${by.username ?? "a former member"}`;
  return (
    <p className="muted small paused-by">
      {s.paused_at ? <When iso={s.paused_at} now={now} prefix={who} /> : who}
    </p>
  );
}

function CopyLink({ url, name }: { url: string; name: string }) {
  const input = useRef<HTMLInputElement>(null);
  // (with no clipboard, the address is selected for Ctrl+C instead)
  const [copied, copy] = useCopy(url, () => input.current?.select());

  return (
    <div className="row tight copy-link">
      <label className="grow">
        <span className="sr-only">Link to {name}</span>
        <input
          ref={input}
          readOnly
          value={url}
          className="mono small"
          onFocus={(e) => e.currentTarget.select()}
        />
      </label>
      <button type="button" className="small" onClick={() => void copy()}>
        {copied === "yes" ? "Copied" : "Copy link"}
      </button>
      <span className="sr-only" aria-live="polite">
        {copied === "yes" ? "Link copied" : copied === "no" ? "Press Ctrl+C to copy" : ""}
      </span>
    </div>
  );
}

function LogPanel({ sandbox }: { sandbox: Sandbox }) {
  const [logs, setLogs] = useState<SandboxLogs | null>(null);
  const [error, setError] = useState<string | null>(null);
  const pre = useRef<HTMLPreElement>(null);
  const load = useCallback(async () => {
    try {
      setLogs(await api.sandboxLogs(sandbox.id));
      setError(null);
    } catch (e) {
      setError(describe(e));
    }
  }, [sandbox.id]);
  useEffect(() => {
    void load();
  }, [load]);
  useEffect(() => {
    if (logs && pre.current) pre.current.scrollTop = pre.current.scrollHeight;
  }, [logs]);
  return (
    <section id={`logs-${sandbox.id}`} className="log-panel" aria-label={`Log of ${sandbox.name}`}>
      <div className="row between">
        <span className="muted small">
          opencode's output, newest last{logs?.truncated ? " (older lines left out)" : ""}
        </span>
        <button type="button" className="small" onClick={() => void load()}>
          Refresh
        </button>
      </div>
      <Alert message={error} />
      {logs === null && !error && <p className="muted small">Loading the log…</p>}
      {logs && (
        // biome-ignore lint/a11y/noNoninteractiveTabindex: the log scrolls; keyboards must reach it
        <pre ref={pre} className="log" tabIndex={0}>
          {logs.lines.length ? logs.lines.join("\n") : "(nothing written yet)"}
        </pre>
      )}
    </section>
  );
}

// /open/<sandbox id>: where a sandbox's shared address sends a browser that has no session on
// the sandbox's subdomain (proxy/site.py). Signed in here (App shows the sign-in screen first
// and keeps this address), a member is signed in there and sent on at once: the open request
// is this site's own (its Origin checked), and it only grants what the member may already do.
import { useCallback, useEffect, useRef, useState } from "react";
import {
  ApiError,
  api,
  atLeast,
  describe,
  type Sandbox,
  sandboxDetail,
  type Workspace,
} from "./api";
import { Link } from "./Link";
import type { Navigate } from "./route";

interface Props {
  sandboxId: string;
  workspaces: Workspace[] | null;
  navigate: Navigate;
}

/** A second automatic open of the same sandbox this soon means the subdomain did not keep its
 * session (and sent the browser back here): wait for a click rather than loop. */
const AGAIN_MS = 20_000;

function openedRecently(sandboxId: string): boolean {
  try {
    const key = `cli-open:${sandboxId}`;
    const last = Number(sessionStorage.getItem(key) ?? "0");
    sessionStorage.setItem(key, String(Date.now()));
    return Date.now() - last < AGAIN_MS;
  } catch {
    return false; // (no storage: the server's answers still bound what happens)
  }
}

type State =
  | { kind: "loading" }
  | { kind: "missing" }
  | { kind: "failed"; message: string }
  | { kind: "ready"; sandbox: Sandbox; auto: boolean }
  | { kind: "opening"; sandbox: Sandbox };

export function OpenSandbox({ sandboxId, workspaces, navigate }: Props) {
  const [state, setState] = useState<State>({ kind: "loading" });
  const started = useRef(false);

  const open = useCallback(async (sandbox: Sandbox, resume: boolean) => {
    setState({ kind: "opening", sandbox });
    try {
      if (resume) await api.resume(sandbox.id);
      const { url } = await api.open(sandbox.id);
      window.location.replace(url);
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) setState({ kind: "missing" });
      else setState({ kind: "failed", message: describe(e) });
    }
  }, []);

  useEffect(() => {
    if (started.current) return;
    started.current = true;
    sandboxDetail(sandboxId)
      .then((sandbox) => {
        const stopped = sandbox.status === "paused" || sandbox.status === "failed";
        const auto = !stopped && !openedRecently(sandbox.id);
        setState({ kind: "ready", sandbox, auto });
        if (auto) void open(sandbox, false);
      })
      .catch((e: unknown) => {
        // (a malformed id is a 400: no such sandbox either, as far as the visitor can tell)
        if (e instanceof ApiError && (e.status === 404 || e.status === 400))
          setState({ kind: "missing" });
        else setState({ kind: "failed", message: describe(e) });
      });
  }, [sandboxId, open]);

  const home = (
    <Link to={{ page: "home" }} navigate={navigate}>
      Go to your workspaces
    </Link>
  );
  if (state.kind === "loading" || (state.kind === "ready" && state.auto)) {
    return (
      <div className="empty open-sandbox" aria-busy="true">
        <p className="muted">Opening the sandbox…</p>
      </div>
    );
  }
  if (state.kind === "missing") {
    return (
      <div className="empty open-sandbox">
        <h1>Sandbox not found</h1>
        <p>This sandbox does not exist or you are not a member of its workspace.</p>
        {home}
      </div>
    );
  }
  if (state.kind === "failed") {
    return (
      <div className="empty open-sandbox">
        <h1>The sandbox could not be opened</h1>
        <p className="error" role="alert">
          {state.message}
        </p>
        {home}
      </div>
    );
  }
  const { sandbox } = state;
  if (state.kind === "opening") {
    return (
      <div className="empty open-sandbox" aria-busy="true">
        <p className="muted">Opening {sandbox.name}…</p>
      </div>
    );
  }
  const workspace = workspaces?.find((w) => w.id === sandbox.workspace_id) ?? null;
  const stopped = sandbox.status === "paused" || sandbox.status === "failed";
  const may = workspace !== null && atLeast(workspace.role, "developer");
  const where = workspace ? (
    <Link
      to={{ page: "workspace", workspaceId: workspace.id, tab: "sandboxes" }}
      navigate={navigate}
    >
      Go to {workspace.name}
    </Link>
  ) : (
    home
  );
  return (
    <div className="empty open-sandbox">
      <h1>{sandbox.name}</h1>
      {stopped ? (
        <p>
          {sandbox.status === "paused"
            ? "This sandbox is paused. Its files and sessions are kept."
            : "This sandbox crashed. Its files are kept."}{" "}
          {may
            ? "Resume it to continue."
            : "As a guest you cannot resume it: ask a developer of its workspace to."}
        </p>
      ) : (
        <p>Open it in this tab.</p>
      )}
      <div className="row">
        {stopped && may && (
          <button type="button" className="primary" onClick={() => void open(sandbox, true)}>
            Resume and open
          </button>
        )}
        {!stopped && (
          <button type="button" className="primary" onClick={() => void open(sandbox, false)}>
            Open {sandbox.name}
          </button>
        )}
        {where}
      </div>
    </div>
  );
}

// /open/<sandbox id>: where a sandbox's shared address sends a browser that has no session on
// the sandbox's subdomain (proxy/site.py). Signed in here (App shows the sign-in screen first
// and keeps this address), a member is signed in there and sent on at once: the open request
// is this site's own (its Origin checked), and it only grants what the member may already do.
// A preview address (oc-{id}-p{port}) sends its visitors to /open/<id>?port=<port>: the same,
// for that port.
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
import { portProblem } from "./Previews";
import type { Navigate } from "./route";

interface Props {
  sandboxId: string;
  workspaces: Workspace[] | null;
  navigate: Navigate;
  /** The ``port`` of the address's query, as written: that port's preview is opened. */
  port?: string | null;
}

/** The ``port`` query parameter of a /open/<id>?port=N address, as written (null: none). */
export function portParam(search: string = window.location.search): string | null {
  return new URLSearchParams(search).get("port");
}

/** A second automatic open of the same sandbox this soon means the subdomain did not keep its
 * session (and sent the browser back here): wait for a click rather than loop. */
const AGAIN_MS = 20_000;

function openedRecently(sandboxId: string, port: number | undefined): boolean {
  try {
    const key = port === undefined ? `cli-open:${sandboxId}` : `cli-open:${sandboxId}:${port}`;
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

export function OpenSandbox({ sandboxId, workspaces, navigate, port: portText = null }: Props) {
  const [state, setState] = useState<State>({ kind: "loading" });
  const started = useRef(false);
  const badPort = portText === null ? null : portProblem(portText);
  const port = portText === null || badPort !== null ? undefined : Number(portText.trim());

  const open = useCallback(
    async (sandbox: Sandbox, resume: boolean) => {
      setState({ kind: "opening", sandbox });
      try {
        if (resume) await api.resume(sandbox.id);
        const { url } = await api.open(sandbox.id, port);
        window.location.replace(url);
      } catch (e) {
        if (e instanceof ApiError && e.status === 404 && e.code !== "port_not_shared")
          setState({ kind: "missing" });
        else setState({ kind: "failed", message: describe(e) });
      }
    },
    [port],
  );

  useEffect(() => {
    if (started.current) return;
    started.current = true;
    if (badPort !== null) {
      setState({ kind: "failed", message: `Port ${portText} cannot be previewed. ${badPort}` });
      return;
    }
    sandboxDetail(sandboxId)
      .then((sandbox) => {
        const stopped = sandbox.status === "paused" || sandbox.status === "failed";
        const auto = !stopped && !openedRecently(sandbox.id, port);
        setState({ kind: "ready", sandbox, auto });
        if (auto) void open(sandbox, false);
      })
      .catch((e: unknown) => {
        // (a malformed id is a 400: no such sandbox either, as far as the visitor can tell)
        if (e instanceof ApiError && (e.status === 404 || e.status === 400))
          setState({ kind: "missing" });
        else setState({ kind: "failed", message: describe(e) });
      });
  }, [sandboxId, open, badPort, portText, port]);

  const what = (name: string) => (port === undefined ? name : `port ${port} of ${name}`);

  const home = (
    <Link to={{ page: "home" }} navigate={navigate}>
      Go to your workspaces
    </Link>
  );
  if (state.kind === "loading" || (state.kind === "ready" && state.auto)) {
    return (
      <div className="empty open-sandbox" aria-busy="true">
        <p className="muted">
          {port === undefined ? "Opening the sandbox…" : `Opening port ${port} of the sandbox…`}
        </p>
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
        <h1>
          {port === undefined && badPort === null
            ? "The sandbox could not be opened"
            : "The preview could not be opened"}
        </h1>
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
        <p className="muted">Opening {what(sandbox.name)}…</p>
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
      <h1>{port === undefined ? sandbox.name : `${sandbox.name}: port ${port}`}</h1>
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
        <p>{port === undefined ? "Open it in this tab." : "Open this preview in this tab."}</p>
      )}
      <div className="row">
        {stopped && may && (
          <button type="button" className="primary" onClick={() => void open(sandbox, true)}>
            Resume and open
          </button>
        )}
        {!stopped && (
          <button type="button" className="primary" onClick={() => void open(sandbox, false)}>
            Open {what(sandbox.name)}
          </button>
        )}
        {where}
      </div>
    </div>
  );
}

import { type FormEvent, useCallback, useEffect, useRef, useState } from "react";
import { AccountPage } from "./AccountPage";
import { Audit } from "./Audit";
import {
  ApiError,
  api,
  atLeast,
  describe,
  type User,
  type Workspace,
  type WorkspaceDetail,
  workspaceDetail,
} from "./api";
import { ServerClaudeBanner } from "./ClaudeBanner";
import { ConfirmDialog } from "./Confirm";
import { Invitations } from "./Invitations";
import { Link } from "./Link";
import { Members } from "./Members";
import { OpenSandbox, portParam } from "./OpenSandbox";
import { useVisiblePoll } from "./poll";
import { type Navigate, type Route, type Tab, titleFor } from "./route";
import { Sandboxes } from "./Sandboxes";
import { UsersPage } from "./UsersPage";
import { Alert } from "./useAction";

interface Props {
  user: User;
  route: Route;
  navigate: Navigate;
  onSignedOut: () => void;
}

/** How often open dashboards ask for the workspace list (and so learn of role changes,
 * removals and deleted workspaces) while visible. */
const WORKSPACES_POLL_MS = 5000;

export function Dashboard({ user, route, navigate, onSignedOut }: Props) {
  const [workspaces, setWorkspaces] = useState<Workspace[] | null>(null);
  const [name, setName] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [nameError, setNameError] = useState<string | null>(null);
  const [gone, setGone] = useState<string | null>(null);
  const [navOpen, setNavOpen] = useState(false);
  const account = useRef<HTMLDetailsElement>(null);
  // Names of the workspaces seen in this tab, to say which one went away; ids deleted here.
  const seen = useRef(new Map<string, string>());
  const deletedHere = useRef(new Set<string>());

  const load = useCallback(async () => {
    try {
      const list = await api.workspaces();
      // Most polls bring nothing new: keep the same array so nothing re-renders for it.
      setWorkspaces((old) => (JSON.stringify(old) === JSON.stringify(list) ? old : list));
      setError(null);
    } catch (e) {
      setError(describe(e));
    }
  }, []);

  useEffect(() => {
    void load();
  }, [load]);
  useVisiblePoll(load, WORKSPACES_POLL_MS);

  /** Navigation the user asked for: closes the menus and any old notice. */
  const go = useCallback<Navigate>(
    (to, options) => {
      setGone(null);
      setNavOpen(false);
      if (account.current) account.current.open = false;
      navigate(to, options);
    },
    [navigate],
  );

  const wanted = route.page === "workspace" ? route.workspaceId : null;
  const current = workspaces?.find((w) => w.id === wanted) ?? null;

  // Follow the list: say when the shown workspace went away and move on; "/" shows the first.
  useEffect(() => {
    if (workspaces === null) return;
    if (wanted !== null && current === null && seen.current.has(wanted)) {
      const lost = seen.current.get(wanted);
      setGone(
        deletedHere.current.has(wanted)
          ? `"${lost}" was deleted.`
          : `You no longer have access to "${lost}": it was deleted or you were removed.`,
      );
      navigate({ page: "home" }, { replace: true });
    } else if (route.page === "home" && workspaces[0]) {
      navigate(
        { page: "workspace", workspaceId: workspaces[0].id, tab: "sandboxes" },
        { replace: true },
      );
    }
    seen.current = new Map(workspaces.map((w) => [w.id, w.name]));
  }, [workspaces, wanted, current, route.page, navigate]);

  useEffect(() => {
    document.title = titleFor(
      route,
      workspaces === null && route.page === "workspace" ? "…" : (current?.name ?? null),
    );
  }, [route, current, workspaces]);

  async function create(event: FormEvent) {
    event.preventDefault();
    setError(null);
    setNameError(null);
    try {
      const made = await api.createWorkspace(name);
      setName("");
      await load();
      go({ page: "workspace", workspaceId: made.id, tab: "sandboxes" });
    } catch (e) {
      // A refused name (taken, invalid) belongs next to the name field.
      if (e instanceof ApiError && e.field === "name") setNameError(describe(e));
      else setError(describe(e));
    }
  }

  async function logout() {
    await api.logout().catch(() => undefined);
    onSignedOut();
  }

  const invitations = (
    <Invitations
      onJoined={(joined) => {
        void load().then(() => go({ page: "workspace", workspaceId: joined.id, tab: "sandboxes" }));
      }}
    />
  );
  const empty = workspaces?.length === 0;

  return (
    <div className={navOpen ? "layout nav-open" : "layout"}>
      <header className="topbar">
        <div className="row tight">
          <button
            type="button"
            className="nav-toggle"
            aria-expanded={navOpen}
            aria-controls="workspace-nav"
            onClick={() => setNavOpen((open) => !open)}
          >
            <span aria-hidden="true">☰</span> Workspaces
          </button>
          <Link to={{ page: "home" }} navigate={go} className="brand">
            cli-server
          </Link>
        </div>
        <details className="account" ref={account}>
          <summary aria-label="Account menu">{user.username}</summary>
          <div className="menu card">
            <p className="muted">Signed in as {user.username}</p>
            <ul className="plain stack tight-stack">
              <li>
                <Link to={{ page: "account" }} navigate={go}>
                  Account
                </Link>
              </li>
              {user.is_admin && (
                <li>
                  <Link to={{ page: "users" }} navigate={go}>
                    Users
                  </Link>
                </li>
              )}
            </ul>
            <button type="button" onClick={logout}>
              Sign out
            </button>
          </div>
        </details>
      </header>
      <nav className="sidebar" id="workspace-nav" aria-label="Workspaces">
        {!empty && invitations}
        <h2>Workspaces</h2>
        {workspaces === null && <p className="muted">Loading…</p>}
        {empty && <p className="muted">No workspaces yet. Create one to start a sandbox.</p>}
        <ul className="plain">
          {workspaces?.map((w) => (
            <li key={w.id}>
              <Link
                to={{ page: "workspace", workspaceId: w.id, tab: "sandboxes" }}
                navigate={go}
                className={w.id === wanted ? "nav active" : "nav"}
                aria-current={w.id === wanted ? "page" : undefined}
              >
                <span className="nav-name" title={w.name}>
                  {w.name}
                </span>{" "}
                <span className="badge">{w.role}</span>
              </Link>
            </li>
          ))}
        </ul>
        <form onSubmit={create} className="stack">
          <label>
            New workspace
            <input
              name="workspace"
              required
              maxLength={100}
              value={name}
              placeholder="e.g. Backend team"
              aria-invalid={nameError ? true : undefined}
              aria-describedby={nameError ? "workspace-name-error" : undefined}
              onChange={(e) => {
                setName(e.target.value);
                setNameError(null);
              }}
            />
            {nameError && (
              <span id="workspace-name-error" className="error field-error" role="alert">
                {nameError}
              </span>
            )}
          </label>
          <button type="submit" className="primary">
            Create workspace
          </button>
        </form>
        <Alert message={error} />
      </nav>
      <main className="content">
        {user.is_admin && <ServerClaudeBanner />}
        {gone && (
          <div className="banner" role="alert">
            <span>{gone}</span>
            <button type="button" className="link" onClick={() => setGone(null)}>
              Dismiss
            </button>
          </div>
        )}
        {route.page === "account" && <AccountPage user={user} />}
        {route.page === "users" && <UsersPage user={user} />}
        {route.page === "open" && (
          <OpenSandbox
            sandboxId={route.sandboxId}
            workspaces={workspaces}
            navigate={go}
            port={portParam()}
          />
        )}
        {route.page === "unknown" && (
          <div className="empty">
            <h1>Page not found</h1>
            <p>There is nothing at {route.path}.</p>
            <Link to={{ page: "home" }} navigate={go}>
              Go to your workspaces
            </Link>
          </div>
        )}
        {route.page === "workspace" && current && (
          <WorkspaceView
            key={current.id}
            workspace={current}
            tab={route.tab}
            user={user}
            navigate={go}
            onLeft={() => void load()}
            onDeleted={() => {
              deletedHere.current.add(current.id);
              void load();
            }}
          />
        )}
        {route.page === "workspace" && !current && workspaces !== null && !gone && (
          <div className="empty">
            <h1>Workspace not found</h1>
            <p>This workspace does not exist, or you no longer have access to it.</p>
            <Link to={{ page: "home" }} navigate={go}>
              Go to your workspaces
            </Link>
          </div>
        )}
        {route.page === "home" && empty && (
          <div className="empty welcome">
            <h1>Welcome, {user.username}</h1>
            <p>
              Create a workspace on the left (under <strong>Workspaces</strong> on a phone), then
              start a sandbox in it — or accept an invitation to join a team's.
            </p>
            <div className="welcome-invitations">{invitations}</div>
          </div>
        )}
      </main>
    </div>
  );
}

interface ViewProps {
  workspace: Workspace;
  tab: Tab;
  user: User;
  navigate: Navigate;
  onLeft: () => void;
  onDeleted: () => void;
}

function WorkspaceView({ workspace, tab, user, navigate, onLeft, onDeleted }: ViewProps) {
  const tabRoute = (t: Tab): Route => ({
    page: "workspace",
    workspaceId: workspace.id,
    tab: t,
  });
  const mayAudit = atLeast(workspace.role, "maintainer");
  return (
    <>
      <div className="row between">
        <h1>{workspace.name}</h1>
        {workspace.role === "owner" && (
          <DeleteWorkspace workspace={workspace} onDeleted={onDeleted} />
        )}
      </div>
      {workspace.role === "guest" && (
        <p className="note guest-note">
          You are a guest here: you can look at sandboxes and open them.{" "}
          <strong>opencode is read-only for you</strong> — you can read its sessions and files, but
          not prompt it, run commands or change anything. Ask an owner for the developer role to
          work in it.
        </p>
      )}
      <div className="tabs" role="tablist">
        <Link
          to={tabRoute("sandboxes")}
          navigate={navigate}
          role="tab"
          aria-selected={tab === "sandboxes"}
        >
          Sandboxes
        </Link>
        <Link
          to={tabRoute("members")}
          navigate={navigate}
          role="tab"
          aria-selected={tab === "members"}
        >
          Members
        </Link>
        {mayAudit && (
          <Link
            to={tabRoute("audit")}
            navigate={navigate}
            role="tab"
            aria-selected={tab === "audit"}
          >
            Audit
          </Link>
        )}
      </div>
      {tab === "sandboxes" && <Sandboxes workspace={workspace} isAdmin={!!user.is_admin} />}
      {tab === "members" && <Members workspace={workspace} me={user} onLeft={onLeft} />}
      {tab === "audit" &&
        (mayAudit ? (
          <Audit workspace={workspace} />
        ) : (
          <p className="note">Only owners and maintainers see the workspace's audit log.</p>
        ))}
    </>
  );
}

/** "Delete workspace", confirmed by typing its name, after saying what goes with it. */
function DeleteWorkspace({
  workspace,
  onDeleted,
}: {
  workspace: Workspace;
  onDeleted: () => void;
}) {
  const [open, setOpen] = useState(false);
  const [detail, setDetail] = useState<WorkspaceDetail | null>(null);
  const [error, setError] = useState<string | null>(null);

  async function ask() {
    setError(null);
    setDetail(null);
    setOpen(true);
    try {
      setDetail(await workspaceDetail(workspace.id));
    } catch (e) {
      setError(describe(e));
    }
  }

  async function remove() {
    setOpen(false);
    try {
      await api.deleteWorkspace(workspace.id);
      onDeleted();
    } catch (e) {
      setError(describe(e));
    }
  }

  const counts = detail?.sandbox_counts;
  return (
    <div className="delete-workspace">
      <button type="button" className="danger" onClick={() => void ask()}>
        Delete workspace
      </button>
      <ConfirmDialog
        open={open}
        question={`Delete the workspace "${workspace.name}"?`}
        confirmLabel="Delete everything"
        typeToConfirm={workspace.name}
        onCancel={() => setOpen(false)}
        onConfirm={() => void remove()}
      >
        <p className="counts">
          {counts === undefined
            ? "Counting its sandboxes…"
            : counts.total === 0
              ? "It has no sandboxes."
              : `${plural(counts.total, "sandbox", "sandboxes")} (${counts.running} running) will be stopped and deleted with it.`}
        </p>
        <p>Its disk and everything on it go too, for every member. This cannot be undone.</p>
      </ConfirmDialog>
      <Alert message={error} />
    </div>
  );
}

function plural(n: number, one: string, many: string): string {
  return `${n} ${n === 1 ? one : many}`;
}

import { type FormEvent, useCallback, useEffect, useState } from "react";
import { AccountPage } from "./AccountPage";
import { api, atLeast, describe, type User, type Workspace } from "./api";
import { ConfirmButton } from "./Confirm";
import { Invitations } from "./Invitations";
import { Members } from "./Members";
import { Sandboxes } from "./Sandboxes";
import { UsersPage } from "./UsersPage";
import { Alert } from "./useAction";

interface Props {
  user: User;
  onSignedOut: () => void;
}

export function Dashboard({ user, onSignedOut }: Props) {
  const [workspaces, setWorkspaces] = useState<Workspace[] | null>(null);
  const [selected, setSelected] = useState<string | null>(null);
  const [tab, setTab] = useState<"sandboxes" | "members">("sandboxes");
  const [name, setName] = useState("");
  const [error, setError] = useState<string | null>(null);

  const load = useCallback(async () => {
    try {
      const list = await api.workspaces();
      setWorkspaces(list);
      setSelected((current) =>
        current && list.some((w) => w.id === current) ? current : (list[0]?.id ?? null),
      );
    } catch (e) {
      setError(describe(e));
    }
  }, []);

  useEffect(() => {
    void load();
  }, [load]);

  async function create(event: FormEvent) {
    event.preventDefault();
    setError(null);
    try {
      const made = await api.createWorkspace(name);
      setName("");
      await load();
      setSelected(made.id);
    } catch (e) {
      setError(describe(e));
    }
  }

  async function remove(workspace: Workspace) {
    try {
      await api.deleteWorkspace(workspace.id);
      await load();
    } catch (e) {
      setError(describe(e));
    }
  }

  async function logout() {
    await api.logout().catch(() => undefined);
    onSignedOut();
  }

  const current = workspaces?.find((w) => w.id === selected) ?? null;
  return (
    <div className="layout">
      <header className="topbar">
        <strong className="brand">cli-server</strong>
        <details className="account">
          <summary aria-label="Account menu">{user.username}</summary>
          <div className="menu card">
            <p className="muted">Signed in as {user.username}</p>
            {/* TEMPORARY (issue 17 accounts): links until the router adds its own. */}
            <p className="row tight">
              <a href="/account">Account</a>
              {user.is_admin && <a href="/admin/users">Users</a>}
            </p>
            <button type="button" onClick={logout}>
              Sign out
            </button>
          </div>
        </details>
      </header>
      <nav className="sidebar" aria-label="Workspaces">
        <Invitations
          onJoined={(joined) => {
            setSelected(joined.id);
            void load();
          }}
        />
        <h2>Workspaces</h2>
        {workspaces === null && <p className="muted">Loading…</p>}
        {workspaces?.length === 0 && (
          <p className="muted">No workspaces yet. Create one to start a sandbox.</p>
        )}
        <ul className="plain">
          {workspaces?.map((w) => (
            <li key={w.id}>
              <button
                type="button"
                className={w.id === selected ? "nav active" : "nav"}
                aria-current={w.id === selected ? "page" : undefined}
                onClick={() => setSelected(w.id)}
              >
                {w.name} <span className="badge">{w.role}</span>
              </button>
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
              onChange={(e) => setName(e.target.value)}
            />
          </label>
          <button type="submit" className="primary">
            Create workspace
          </button>
        </form>
        <Alert message={error} />
      </nav>
      <main className="content">
        {/* TEMPORARY (issue 17 accounts): the router will render these at their URLs. */}
        {location.pathname === "/account" && <AccountPage user={user} />}
        {location.pathname === "/admin/users" && <UsersPage user={user} />}
        {["/account", "/admin/users"].includes(location.pathname) ? null : current ? (
          <>
            <div className="row between">
              <h1>{current.name}</h1>
              {current.role === "owner" && (
                <ConfirmButton
                  label="Delete workspace"
                  question={`Delete "${current.name}", its sandboxes and its disk? This cannot be undone.`}
                  confirmLabel="Delete everything"
                  onConfirm={() => void remove(current)}
                />
              )}
            </div>
            <div className="tabs" role="tablist">
              <button
                type="button"
                role="tab"
                aria-selected={tab === "sandboxes"}
                onClick={() => setTab("sandboxes")}
              >
                Sandboxes
              </button>
              <button
                type="button"
                role="tab"
                aria-selected={tab === "members"}
                onClick={() => setTab("members")}
              >
                Members
              </button>
            </div>
            {tab === "sandboxes" ? (
              <Sandboxes workspace={current} />
            ) : (
              <Members workspace={current} me={user} onLeft={() => void load()} />
            )}
            {!atLeast(current.role, "developer") && (
              <p className="muted">You are a guest here: you can look and open, not change.</p>
            )}
          </>
        ) : (
          workspaces !== null && (
            <div className="empty">
              <h1>Welcome, {user.username}</h1>
              <p>Create a workspace on the left; then start a sandbox in it.</p>
            </div>
          )
        )}
      </main>
    </div>
  );
}

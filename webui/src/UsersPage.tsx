import { useCallback, useEffect, useState } from "react";
import {
  type AdminUser,
  accountsApi,
  ago,
  describe,
  type Registration,
  type SignupLink,
  type User,
} from "./api";
import { ConfirmButton } from "./Confirm";
import { Alert } from "./useAction";

interface Props {
  user: User;
}

const MODE_TEXT: Record<Registration["mode"], string> = {
  open: "Registration is open: anyone who reaches this server can create an account.",
  invite: "Registration is by invitation: people sign up with a one-time link you create here.",
  closed: "Registration is closed: nobody can create an account; you reset passwords here.",
};

/** The instance admin's list of users (routed at /admin/users; only for `user.is_admin`). */
export function UsersPage({ user }: Props) {
  const [users, setUsers] = useState<AdminUser[] | null>(null);
  const [registration, setRegistration] = useState<Registration | null>(null);
  const [error, setError] = useState<string | null>(null);
  // Per-row outcome, shown next to that row's buttons.
  const [rowError, setRowError] = useState<{ id: string; message: string } | null>(null);
  const [temporary, setTemporary] = useState<{ id: string; password: string } | null>(null);

  const load = useCallback(async () => {
    try {
      setUsers(await accountsApi.users());
    } catch (e) {
      setError(describe(e));
    }
  }, []);

  useEffect(() => {
    if (!user.is_admin) return;
    void load();
    accountsApi
      .registration()
      .then(setRegistration)
      .catch(() => setRegistration(null));
  }, [load, user.is_admin]);

  if (!user.is_admin) {
    return (
      <section aria-labelledby="users-heading">
        <h1 id="users-heading">Users</h1>
        <p className="muted">Only the administrator of this server sees this page.</p>
      </section>
    );
  }

  async function act(target: AdminUser, work: () => Promise<unknown>) {
    setRowError(null);
    setTemporary(null);
    try {
      await work();
    } catch (e) {
      setRowError({ id: target.id, message: describe(e) });
    }
    await load();
  }

  async function reset(target: AdminUser) {
    setRowError(null);
    setTemporary(null);
    try {
      const { password } = await accountsApi.resetPassword(target.id);
      setTemporary({ id: target.id, password });
    } catch (e) {
      setRowError({ id: target.id, message: describe(e) });
    }
  }

  return (
    <section aria-labelledby="users-heading" className="users-page">
      <h1 id="users-heading">Users</h1>
      <p className="muted">
        Everyone with an account on this server. Disabling someone signs them out everywhere at
        once; their workspaces stay as they are.
      </p>
      <Alert message={error} />
      {users === null && !error && <p className="muted">Loading…</p>}
      {users && (
        <table className="users">
          <thead>
            <tr>
              <th scope="col">User</th>
              <th scope="col">Joined</th>
              <th scope="col">Last active</th>
              <th scope="col">Status</th>
              <th scope="col">
                <span className="sr-only">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {users.map((u) => (
              <tr key={u.id} data-username={u.username}>
                <td data-label="User">
                  <strong>{u.username}</strong>
                  {u.is_admin && <span className="badge">admin</span>}
                  {u.id === user.id && <span className="badge">you</span>}
                  {u.email && <div className="small muted">{u.email}</div>}
                </td>
                <td data-label="Joined">{new Date(u.created_at).toLocaleDateString()}</td>
                <td data-label="Last active">{u.last_seen_at ? ago(u.last_seen_at) : "never"}</td>
                <td data-label="Status">
                  <span className={u.disabled ? "state disabled" : "state active"}>
                    {u.disabled ? "Disabled" : "Active"}
                  </span>
                </td>
                <td className="end actions">
                  {u.id !== user.id &&
                    (u.disabled ? (
                      <button
                        type="button"
                        aria-label={`Enable ${u.username}`}
                        onClick={() => void act(u, () => accountsApi.enableUser(u.id))}
                      >
                        Enable
                      </button>
                    ) : (
                      <ConfirmButton
                        label="Disable"
                        question={`Disable ${u.username}? They are signed out everywhere at once and cannot sign in until you enable the account again.`}
                        confirmLabel={`Disable ${u.username}`}
                        onConfirm={() => void act(u, () => accountsApi.disableUser(u.id))}
                      />
                    ))}
                  {u.id === user.id ? (
                    // (a reset would sign the admin out everywhere; the server refuses it)
                    <p className="small muted own-row">
                      Change your own password on your <a href="/account">account page</a>.
                    </p>
                  ) : (
                    <ConfirmButton
                      label="Reset password"
                      className="secondary"
                      question={`Give ${u.username} a new temporary password? Their current password stops working and they are signed out everywhere.`}
                      confirmLabel="Reset password"
                      onConfirm={() => void reset(u)}
                    />
                  )}
                  {rowError?.id === u.id && (
                    <p className="error small" role="alert">
                      {rowError.message}
                    </p>
                  )}
                  {temporary?.id === u.id && (
                    <TemporaryPassword
                      username={u.username}
                      password={temporary.password}
                      onDone={() => setTemporary(null)}
                    />
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <Registrations registration={registration} />
    </section>
  );
}

function TemporaryPassword({
  username,
  password,
  onDone,
}: {
  username: string;
  password: string;
  onDone: () => void;
}) {
  const [copied, setCopied] = useState(false);
  return (
    <div className="temporary card" role="status">
      <p className="small">
        Temporary password for <strong>{username}</strong> — shown only this once. Give it to them
        in person or over a channel you trust; they can change it on their Account page.
      </p>
      <div className="command">
        <pre className="temporary-password">{password}</pre>
        <CopyButton text={password} onCopied={() => setCopied(true)} />
      </div>
      <div className="row end">
        {copied && <span className="small ok">Copied</span>}
        <button type="button" className="link" onClick={onDone}>
          Done, hide it
        </button>
      </div>
    </div>
  );
}

function CopyButton({ text, onCopied }: { text: string; onCopied?: () => void }) {
  return (
    <button
      type="button"
      onClick={() => {
        void navigator.clipboard
          ?.writeText(text)
          .then(() => onCopied?.())
          .catch(() => undefined);
      }}
    >
      Copy
    </button>
  );
}

function Registrations({ registration }: { registration: Registration | null }) {
  const [links, setLinks] = useState<SignupLink[]>([]);
  const [made, setMade] = useState<{ url: string; expires_at: string } | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [copied, setCopied] = useState(false);
  const invite = registration?.mode === "invite";

  const load = useCallback(async () => {
    try {
      setLinks(await accountsApi.signupLinks());
    } catch (e) {
      setError(describe(e));
    }
  }, []);

  useEffect(() => {
    if (invite) void load();
  }, [invite, load]);

  if (!registration) return null;

  async function create() {
    setError(null);
    setCopied(false);
    try {
      setMade(await accountsApi.createSignupLink());
    } catch (e) {
      setError(describe(e));
    }
    await load();
  }

  async function revoke(link: SignupLink) {
    setError(null);
    try {
      await accountsApi.revokeSignupLink(link.id);
    } catch (e) {
      setError(describe(e));
    }
    await load();
  }

  const pending = links.filter((l) => !l.used_at);
  return (
    <section className="card stack registration" aria-labelledby="registration-heading">
      <h2 id="registration-heading">Registration</h2>
      <p>{MODE_TEXT[registration.mode]}</p>
      {!invite && (
        <p className="small muted">
          Set with <code>--registration open|invite|closed</code> (or <code>REGISTRATION</code>)
          when starting the server.
        </p>
      )}
      {invite && (
        <>
          <div className="row">
            <button type="button" className="primary" onClick={() => void create()}>
              Create sign-up link
            </button>
            <span className="small muted">Each link works once, for 7 days.</span>
          </div>
          {made && (
            <div role="status">
              <p className="small">
                Send this link to the person who should join (shown only now; it expires{" "}
                {new Date(made.expires_at).toLocaleString()}):
              </p>
              <div className="command">
                <pre className="signup-url">{made.url}</pre>
                <CopyButton text={made.url} onCopied={() => setCopied(true)} />
              </div>
              {copied && <p className="small ok">Copied</p>}
            </div>
          )}
          {pending.length > 0 && (
            <ul className="plain">
              {pending.map((l) => (
                <li key={l.id} className="row between">
                  <span className="small">
                    Unused link made {ago(l.created_at)}, expires{" "}
                    {new Date(l.expires_at).toLocaleDateString()}
                  </span>
                  <button type="button" className="danger" onClick={() => void revoke(l)}>
                    Revoke
                  </button>
                </li>
              ))}
            </ul>
          )}
        </>
      )}
      <Alert message={error} />
    </section>
  );
}

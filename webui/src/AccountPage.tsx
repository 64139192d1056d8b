import { type FormEvent, useCallback, useEffect, useState } from "react";
import { ApiError, accountsApi, ago, describe, type Session, type User } from "./api";
import { Alert } from "./useAction";

interface Props {
  user: User;
}

type Field = "current_password" | "new_password" | "repeat";

/** The signed-in user's own account: password and sessions (routed at /account). */
export function AccountPage({ user }: Props) {
  const [changes, setChanges] = useState(0);
  return (
    <section aria-labelledby="account-heading" className="account-page">
      <h1 id="account-heading">Account</h1>
      <p className="muted">
        Signed in as <strong>{user.username}</strong>
        {user.is_admin ? " — the administrator of this server" : ""}.
      </p>
      {/* A password change signs the other sessions out: the list is read again after it. */}
      <PasswordForm onChanged={() => setChanges((n) => n + 1)} />
      <Sessions reloadKey={changes} />
    </section>
  );
}

function PasswordForm({ onChanged }: { onChanged: () => void }) {
  const [current, setCurrent] = useState("");
  const [next, setNext] = useState("");
  const [repeat, setRepeat] = useState("");
  const [errors, setErrors] = useState<Partial<Record<Field, string>>>({});
  const [general, setGeneral] = useState<string | null>(null);
  const [done, setDone] = useState(false);
  const [busy, setBusy] = useState(false);

  async function submit(event: FormEvent) {
    event.preventDefault();
    setDone(false);
    setGeneral(null);
    const found: Partial<Record<Field, string>> = {};
    if (!current) found.current_password = "Enter your current password.";
    if (next.length < 8) found.new_password = "The new password needs at least 8 characters.";
    else if (repeat !== next) found.repeat = "This does not match the new password.";
    setErrors(found);
    if (Object.keys(found).length) return;
    setBusy(true);
    try {
      await accountsApi.changePassword(current, next);
      setCurrent("");
      setNext("");
      setRepeat("");
      setDone(true);
      onChanged();
    } catch (e) {
      if (e instanceof ApiError && e.code === "wrong_password")
        setErrors({ current_password: "That is not your current password." });
      else if (
        e instanceof ApiError &&
        (e.field === "new_password" || e.field === "current_password")
      )
        setErrors({ [e.field]: describe(e) });
      else setGeneral(describe(e));
    } finally {
      setBusy(false);
    }
  }

  function input(field: Field, label: string, value: string, set: (v: string) => void) {
    const error = errors[field];
    return (
      <div className="field">
        <label>
          {label}
          <input
            type="password"
            name={field}
            autoComplete={field === "current_password" ? "current-password" : "new-password"}
            value={value}
            aria-invalid={error ? true : undefined}
            aria-describedby={
              error ? `${field}-error` : field === "new_password" ? "new-rule" : undefined
            }
            onChange={(e) => set(e.target.value)}
          />
        </label>
        {error ? (
          <p id={`${field}-error`} className="error small" role="alert">
            {error}
          </p>
        ) : (
          field === "new_password" && (
            <p id="new-rule" className="small muted">
              At least 8 characters.
            </p>
          )
        )}
      </div>
    );
  }

  return (
    <form className="card stack" onSubmit={submit} aria-labelledby="password-heading" noValidate>
      <h2 id="password-heading">Change password</h2>
      {input("current_password", "Current password", current, setCurrent)}
      {input("new_password", "New password", next, setNext)}
      {input("repeat", "Repeat the new password", repeat, setRepeat)}
      <Alert message={general} />
      {done && (
        <p className="ok" role="status">
          Password changed. Your other sessions were signed out.
        </p>
      )}
      <div className="row">
        <button type="submit" className="primary" disabled={busy}>
          {busy ? "Changing…" : "Change password"}
        </button>
      </div>
    </form>
  );
}

function Sessions({ reloadKey }: { reloadKey: number }) {
  const [sessions, setSessions] = useState<Session[] | null>(null);
  const [error, setError] = useState<string | null>(null);

  const load = useCallback(async () => {
    try {
      setSessions(await accountsApi.sessions());
    } catch (e) {
      setError(describe(e));
    }
  }, []);

  useEffect(() => {
    void reloadKey;
    void load();
  }, [load, reloadKey]);

  async function revoke(session: Session) {
    setError(null);
    try {
      await accountsApi.revokeSession(session.id);
      if (session.current) {
        window.location.assign("/"); // this device is signed out now
        return;
      }
    } catch (e) {
      setError(describe(e));
    }
    await load();
  }

  return (
    <section className="card stack" aria-labelledby="sessions-heading">
      <h2 id="sessions-heading">Where you are signed in</h2>
      <p className="small muted">
        Revoking a session signs that browser out at once; your open opencode tabs then need Open
        again.
      </p>
      {sessions === null && !error && <p className="muted">Loading…</p>}
      <ul className="plain sessions">
        {sessions?.map((s) => (
          <li key={s.id} className="session" data-current={s.current || undefined}>
            <div className="grow">
              <strong title={s.user_agent ?? undefined}>{browserName(s.user_agent)}</strong>
              {s.current && <span className="badge current">This device</span>}
              <p className="small muted">
                {s.address ?? "unknown address"} · signed in {ago(s.created_at)} · last active{" "}
                {ago(s.last_seen_at)}
              </p>
            </div>
            <button
              type="button"
              className="danger"
              aria-label={
                s.current ? "Sign out this device" : `Revoke ${browserName(s.user_agent)} session`
              }
              onClick={() => void revoke(s)}
            >
              {s.current ? "Sign out" : "Revoke"}
            </button>
          </li>
        ))}
      </ul>
      <Alert message={error} />
    </section>
  );
}

/** "Chrome on Linux" from a User-Agent, or the start of it. */
export function browserName(agent: string | null): string {
  if (!agent) return "Unknown browser";
  const browsers: [string, string][] = [
    ["Edg/", "Edge"],
    ["Firefox/", "Firefox"],
    ["Chrome/", "Chrome"],
    ["Safari/", "Safari"],
    ["curl/", "curl"],
  ];
  const systems: [string, string][] = [
    ["Android", "Android"],
    ["iPhone", "iPhone"],
    ["iPad", "iPad"],
    ["Windows", "Windows"],
    ["Mac OS X", "macOS"],
    ["Linux", "Linux"],
  ];
  const browser = browsers.find(([mark]) => agent.includes(mark))?.[1] ?? null;
  const system = systems.find(([mark]) => agent.includes(mark))?.[1] ?? null;
  if (browser && system) return `${browser} on ${system}`;
  return browser ?? system ?? agent.slice(0, 40);
}

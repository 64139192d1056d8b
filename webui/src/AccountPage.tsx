import { type FormEvent, useCallback, useEffect, useState } from "react";
import { ApiTokens } from "./ApiTokens";
import {
  ApiError,
  accountsApi,
  ago,
  api,
  describe,
  type Identity,
  type Provider,
  type Session,
  ssoApi,
  type User,
} from "./api";
import { linkUrl, ssoErrorSentence, takeFromQuery } from "./sso";
import { Alert } from "./useAction";

interface Props {
  user: User;
}

type Field = "current_password" | "new_password" | "repeat";

/** The signed-in user's own account: sign-in methods, password, sessions and API tokens
 * (routed at /account). */
export function AccountPage({ user }: Props) {
  const [hasPassword, setHasPassword] = useState(user.has_password !== false);
  const [changes, setChanges] = useState(0);
  return (
    <section aria-labelledby="account-heading" className="account-page">
      <h1 id="account-heading">Account</h1>
      <p className="muted">
        Signed in as <strong>{user.username}</strong>
        {user.is_admin ? " — the administrator of this server" : ""}.
      </p>
      <SignInMethods hasPassword={hasPassword} setHasPassword={setHasPassword} />
      {/* A password change signs the other sessions out: the list is read again after it. */}
      <PasswordForm
        hasPassword={hasPassword}
        onFirstSet={() => setHasPassword(true)}
        onChanged={() => setChanges((n) => n + 1)}
      />
      <Sessions reloadKey={changes} />
      <ApiTokens />
    </section>
  );
}

interface MethodsProps {
  hasPassword: boolean;
  setHasPassword: (has: boolean) => void;
}

/** How this user signs in: a password, identities at providers (unlink, never the last way
 * in), and the providers they may still link. */
function SignInMethods({ hasPassword, setHasPassword }: MethodsProps) {
  const [identities, setIdentities] = useState<Identity[] | null>(null);
  const [providers, setProviders] = useState<Provider[]>([]);
  const [passwordLogin, setPasswordLogin] = useState(true);
  const [error, setError] = useState<string | null>(null);
  // Back from a provider: "linked" or why not, said once (the address bar forgets it).
  const [landed] = useState(() => {
    const { linked, sso_error } = takeFromQuery("linked", "sso_error");
    return { linked, error: sso_error ? ssoErrorSentence(sso_error) : null };
  });

  const load = useCallback(async () => {
    try {
      setIdentities(await ssoApi.identities());
    } catch (e) {
      setError(describe(e));
    }
    api
      .me()
      .then((me) => {
        if (typeof me?.has_password === "boolean") setHasPassword(me.has_password);
      })
      .catch(() => undefined);
  }, [setHasPassword]);

  useEffect(() => {
    void load();
    api
      .providers()
      .then((list) => setProviders(Array.isArray(list) ? list : []))
      .catch(() => setProviders([]));
    accountsApi
      .registration()
      .then((said) => setPasswordLogin(said?.password_login !== false))
      .catch(() => undefined);
  }, [load]);

  async function unlink(identity: Identity) {
    setError(null);
    try {
      await ssoApi.unlink(identity.id);
    } catch (e) {
      setError(describe(e));
    }
    await load();
  }

  const passwordCounts = hasPassword && passwordLogin;
  const lastWayIn = (identities?.length ?? 0) <= 1 && !passwordCounts;
  const linkedLabel = providers.find((p) => p.name === landed.linked)?.label ?? landed.linked;
  const linkable = providers.filter((p) => !identities?.some((i) => i.provider === p.name));

  // A server without single sign-on, for an account without identities: nothing to show.
  if (!providers.length && !identities?.length && !landed.linked && !landed.error && !error)
    return null;
  return (
    <section className="card stack" aria-labelledby="methods-heading">
      <h2 id="methods-heading">Sign-in methods</h2>
      {landed.linked && !landed.error && (
        <p className="ok" role="status">
          {linkedLabel} linked: you can now sign in with it.
        </p>
      )}
      <Alert message={landed.error} />
      {identities === null && !error && <p className="muted">Loading…</p>}
      <ul className="plain methods">
        <li>
          <div className="grow">
            <strong>Password</strong>
            <p className="small muted">
              {!passwordLogin
                ? "This server signs people in through its providers only."
                : hasPassword
                  ? "Set. Change it below."
                  : "Not set: you sign in through a provider. Set one below to sign in without it."}
            </p>
          </div>
        </li>
        {identities?.map((i) => (
          <li key={i.id}>
            <div className="grow">
              <strong>{i.label}</strong>
              <p className="small muted">
                {i.email ? `${i.email} · ` : ""}linked {ago(i.created_at)} · last used{" "}
                {ago(i.last_used_at)}
              </p>
              {lastWayIn && (
                <p id={`unlink-${i.id}-why`} className="small muted">
                  This is your only way to sign in: set a password or link another provider before
                  unlinking it.
                </p>
              )}
            </div>
            <button
              type="button"
              className="danger"
              disabled={lastWayIn}
              aria-label={`Unlink ${i.label}`}
              aria-describedby={lastWayIn ? `unlink-${i.id}-why` : undefined}
              onClick={() => void unlink(i)}
            >
              Unlink
            </button>
          </li>
        ))}
      </ul>
      {linkable.length > 0 && (
        <div className="link-buttons">
          {linkable.map((p) => (
            <a key={p.name} className="button" href={linkUrl(p)}>
              {`Link ${p.label}`}
            </a>
          ))}
        </div>
      )}
      <Alert message={error} />
    </section>
  );
}

interface PasswordProps {
  hasPassword: boolean;
  onFirstSet: () => void;
  onChanged: () => void;
}

function PasswordForm({ hasPassword, onFirstSet, onChanged }: PasswordProps) {
  const [current, setCurrent] = useState("");
  const [next, setNext] = useState("");
  const [repeat, setRepeat] = useState("");
  const [errors, setErrors] = useState<Partial<Record<Field, string>>>({});
  const [general, setGeneral] = useState<string | null>(null);
  const [done, setDone] = useState<"changed" | "set" | null>(null);
  const [busy, setBusy] = useState(false);

  async function submit(event: FormEvent) {
    event.preventDefault();
    setDone(null);
    setGeneral(null);
    const found: Partial<Record<Field, string>> = {};
    if (hasPassword && !current) found.current_password = "Enter your current password.";
    if (next.length < 8) found.new_password = "The new password needs at least 8 characters.";
    else if (repeat !== next) found.repeat = "This does not match the new password.";
    setErrors(found);
    if (Object.keys(found).length) return;
    setBusy(true);
    try {
      if (hasPassword) await accountsApi.changePassword(current, next);
      else await ssoApi.setFirstPassword(next);
      if (!hasPassword) onFirstSet();
      setCurrent("");
      setNext("");
      setRepeat("");
      setDone(hasPassword ? "changed" : "set");
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
      <h2 id="password-heading">{hasPassword ? "Change password" : "Set a password"}</h2>
      {hasPassword && input("current_password", "Current password", current, setCurrent)}
      {!hasPassword && (
        <p className="small muted">
          Within 15 minutes of signing in through your provider: an older session may not choose a
          password.
        </p>
      )}
      {input("new_password", "New password", next, setNext)}
      {input("repeat", "Repeat the new password", repeat, setRepeat)}
      <Alert message={general} />
      {done && (
        <p className="ok" role="status">
          {done === "changed"
            ? "Password changed. Your other sessions were signed out."
            : "Password set: you can also sign in with your username and this password."}
        </p>
      )}
      <div className="row">
        <button type="submit" className="primary" disabled={busy}>
          {busy ? "Changing…" : hasPassword ? "Change password" : "Set password"}
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

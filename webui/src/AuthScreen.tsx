import { type FormEvent, useEffect, useState } from "react";
import {
  accountsApi,
  api,
  describe,
  inviteFromLocation,
  type Provider,
  type Registration,
  type User,
} from "./api";
import { signInUrl, ssoErrorSentence, takeFromQuery } from "./sso";
import { Alert } from "./useAction";

interface Props {
  onSignedIn: (user: User) => void;
  /** Why this screen shows, e.g. a session that ended elsewhere. */
  notice?: string | null;
}

export function AuthScreen({ onSignedIn, notice = null }: Props) {
  const [invite] = useState(() => inviteFromLocation());
  const [mode, setMode] = useState<"login" | "register">(invite ? "register" : "login");
  const [username, setUsername] = useState("");
  const [password, setPassword] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [providers, setProviders] = useState<Provider[]>([]);
  const [registration, setRegistration] = useState<Registration | null>(null);
  const [asked, setAsked] = useState(false); // (no toggle flickers in before the answer)
  // Back from a provider that did not sign us in: say why once, then forget it.
  const [ssoError] = useState(() => {
    const code = takeFromQuery("sso_error").sso_error;
    return code ? ssoErrorSentence(code) : null;
  });

  useEffect(() => {
    api
      .providers()
      .then((list) => setProviders(Array.isArray(list) ? list : []))
      .catch(() => setProviders([]));
    accountsApi
      .registration()
      .then((said) => setRegistration(said?.mode ? said : null))
      .catch(() => setRegistration(null))
      .finally(() => setAsked(true));
  }, []);

  // Who may create an account from here: anyone (open), whoever holds a sign-up link
  // (invite), nobody (closed); and, while there are no accounts, the first person.
  const how = registration?.mode ?? "open";
  const passwords = registration?.password_login !== false; // (off: providers only)
  const mayRegister =
    passwords && (registration?.first || how === "open" || (how === "invite" && !!invite));
  const registering = mode === "register" && mayRegister;

  async function submit(event: FormEvent) {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      if (registering) {
        await accountsApi.register(username, password, invite);
        if (invite) window.history.replaceState(null, "", "/");
      }
      onSignedIn(await api.login(username, password));
    } catch (e) {
      setError(describe(e));
    } finally {
      setBusy(false);
    }
  }

  return (
    <main className="center">
      <form className="card auth" onSubmit={submit} aria-labelledby="auth-title">
        <h1 id="auth-title">{registering ? "Create an account" : "Sign in to cli-server"}</h1>
        <p className="muted">opencode in your browser, for your whole team.</p>
        {notice && (
          <p className="notice" role="status">
            {notice}
          </p>
        )}
        <Alert message={ssoError} />
        {providers.length > 0 && (
          <div className="sso-buttons">
            {providers.map((p) => (
              <a
                key={p.name}
                className="button sso"
                href={signInUrl(p, window.location.pathname || "/")}
              >
                Sign in with {p.label}
              </a>
            ))}
          </div>
        )}
        {asked && !passwords && providers.length === 0 && (
          <p className="notice" role="note">
            This server signs people in through single sign-on only, and no provider is set up yet.
            Ask your administrator.
          </p>
        )}
        {passwords && providers.length > 0 && (
          <p className="divider" aria-hidden="true">
            <span>or</span>
          </p>
        )}
        {registering && registration?.first && (
          <p className="notice" role="note">
            No accounts yet: this first one becomes the administrator of this server.
          </p>
        )}
        {registering && invite && !registration?.first && (
          <p className="notice" role="note">
            You were invited: choose a username and password to create your account.
          </p>
        )}
        {passwords && (
          <>
            <label>
              Username
              <input
                name="username"
                autoComplete="username"
                required
                value={username}
                aria-describedby={registering ? "username-rule" : undefined}
                onChange={(e) => setUsername(e.target.value)}
              />
            </label>
            {registering && (
              <p id="username-rule" className="small muted">
                {registration?.username_rule ??
                  "Username: 3-32 characters: letters, digits, '.', '_' or '-'."}
              </p>
            )}
            <label>
              Password
              <input
                name="password"
                type="password"
                autoComplete={registering ? "new-password" : "current-password"}
                required
                minLength={registering ? 8 : undefined}
                value={password}
                aria-describedby={registering ? "password-rule" : undefined}
                onChange={(e) => setPassword(e.target.value)}
              />
            </label>
            {registering && (
              <p id="password-rule" className="small muted">
                {registration?.password_rule ?? "Password: at least 8 characters."}
              </p>
            )}
            <Alert message={error} />
            <button type="submit" className="primary" disabled={busy}>
              {busy ? "Please wait…" : registering ? "Create account" : "Sign in"}
            </button>
          </>
        )}
        {!asked || !passwords ? null : mayRegister ? (
          <button
            type="button"
            className="link"
            onClick={() => {
              setMode(registering ? "login" : "register");
              setError(null);
            }}
          >
            {registering ? "Have an account? Sign in" : "New here? Create an account"}
          </button>
        ) : (
          <p className="notice" role="note">
            {how === "closed"
              ? "Registration is closed — ask your administrator for an account."
              : "New accounts need a sign-up link — ask your administrator for one."}
          </p>
        )}
      </form>
    </main>
  );
}

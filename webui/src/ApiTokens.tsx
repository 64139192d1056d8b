import { type FormEvent, useCallback, useEffect, useState } from "react";
import {
  ApiError,
  type ApiToken,
  ago,
  api,
  describe,
  type TokenScope,
  tokensApi,
  type Workspace,
} from "./api";
import { ConfirmButton } from "./Confirm";
import { Alert } from "./useAction";
import { useCopy } from "./useCopy";

const DAY = 86_400_000;
export const LIFETIMES: [number, string][] = [
  [7, "7 days"],
  [30, "30 days"],
  [90, "90 days"],
  [365, "1 year"],
];
const SCOPES: [TokenScope, string][] = [
  ["read", "read — look, change nothing"],
  ["write", "write — what your role allows"],
  ["admin", "admin — also manage tokens (and, for the administrator, the users page)"],
];
type Field = "name" | "scope" | "workspace_id" | "expires_at";

/** "in 3 days", "expired": how long a token has left. */
export function expiresIn(moment: string, now: number = Date.now()): string {
  const left = Date.parse(moment) - now;
  if (left <= 0) return "expired";
  const days = Math.floor(left / DAY);
  if (days >= 1) return `expires in ${days} day${days === 1 ? "" : "s"}`;
  const hours = Math.floor(left / 3_600_000);
  return hours >= 1
    ? `expires in ${hours} hour${hours === 1 ? "" : "s"}`
    : "expires within the hour";
}

/** Personal API tokens for scripts: made here (the secret shown once), listed with their last
 * use and expiry, revoked at once. */
export function ApiTokens() {
  const [tokens, setTokens] = useState<ApiToken[] | null>(null);
  const [workspaces, setWorkspaces] = useState<Workspace[]>([]);
  const [error, setError] = useState<string | null>(null);
  const [made, setMade] = useState<{ name: string; token: string } | null>(null);

  const load = useCallback(async () => {
    try {
      const list = await tokensApi.list();
      setTokens(Array.isArray(list) ? list : []);
    } catch (e) {
      setError(describe(e));
    }
  }, []);

  useEffect(() => {
    void load();
    api
      .workspaces()
      .then((list) => setWorkspaces(Array.isArray(list) ? list : []))
      .catch(() => setWorkspaces([]));
  }, [load]);

  async function revoke(token: ApiToken) {
    setError(null);
    try {
      await tokensApi.revoke(token.id);
    } catch (e) {
      setError(describe(e));
    }
    await load();
  }

  const workspaceName = (id: string | null) =>
    id === null
      ? "all your workspaces"
      : (workspaces.find((w) => w.id === id)?.name ?? "a workspace");

  return (
    <section className="card stack" aria-labelledby="tokens-heading">
      <h2 id="tokens-heading">API tokens</h2>
      <p className="small muted">
        A token lets a script call the API as you: send it as{" "}
        <code>Authorization: Bearer &lt;token&gt;</code>. Your role in each workspace still applies.
        Tokens are not signed out by signing out; revoke them here.
      </p>
      <TokenForm
        workspaces={workspaces}
        onMade={(name, token) => {
          setMade({ name, token });
          void load();
        }}
      />
      {made && <NewSecret {...made} onDone={() => setMade(null)} />}
      {tokens === null && !error && <p className="muted">Loading…</p>}
      {tokens?.length === 0 && <p className="muted">No tokens yet.</p>}
      <ul className="plain tokens">
        {tokens?.map((t) => (
          <li key={t.id} className="token">
            <div className="grow">
              <strong>{t.name}</strong> <span className="badge">{t.scope}</span>
              <p className="small muted">
                For {workspaceName(t.workspace_id)} · {expiresIn(t.expires_at)} ·{" "}
                {t.last_used_at ? `last used ${ago(t.last_used_at)}` : "never used"}
              </p>
            </div>
            <ConfirmButton
              label="Revoke"
              question={`Revoke the token “${t.name}”? Scripts using it stop working at once.`}
              confirmLabel="Revoke token"
              onConfirm={() => void revoke(t)}
            />
          </li>
        ))}
      </ul>
      <Alert message={error} />
    </section>
  );
}

interface FormProps {
  workspaces: Workspace[];
  onMade: (name: string, token: string) => void;
}

function TokenForm({ workspaces, onMade }: FormProps) {
  const [name, setName] = useState("");
  const [scope, setScope] = useState<TokenScope>("read");
  const [workspace, setWorkspace] = useState("");
  const [days, setDays] = useState(30);
  const [errors, setErrors] = useState<Partial<Record<Field, string>>>({});
  const [general, setGeneral] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  async function submit(event: FormEvent) {
    event.preventDefault();
    setGeneral(null);
    if (!name.trim()) {
      setErrors({ name: "Give the token a name, e.g. the script that uses it." });
      return;
    }
    setErrors({});
    setBusy(true);
    try {
      const answer = await tokensApi.create({
        name: name.trim(),
        scope,
        workspace_id: workspace || null,
        expires_at: new Date(Date.now() + days * DAY).toISOString(),
      });
      setName("");
      onMade(answer.name, answer.token);
    } catch (e) {
      const field = e instanceof ApiError ? (e.field as Field | undefined) : undefined;
      if (field && ["name", "scope", "workspace_id", "expires_at"].includes(field))
        setErrors({ [field]: describe(e) });
      else setGeneral(describe(e));
    } finally {
      setBusy(false);
    }
  }

  function error(field: Field) {
    const message = errors[field];
    return message ? (
      <p id={`token-${field}-error`} className="error small" role="alert">
        {message}
      </p>
    ) : null;
  }
  const described = (field: Field) => (errors[field] ? `token-${field}-error` : undefined);

  return (
    <form className="stack" onSubmit={submit} aria-label="New API token" noValidate>
      <div className="field">
        <label>
          Token name
          <input
            name="token-name"
            value={name}
            maxLength={100}
            aria-invalid={errors.name ? true : undefined}
            aria-describedby={described("name")}
            onChange={(e) => setName(e.target.value)}
          />
        </label>
        {error("name")}
      </div>
      <div className="field">
        <label>
          Scope
          <select
            value={scope}
            aria-describedby={described("scope")}
            onChange={(e) => setScope(e.target.value as TokenScope)}
          >
            {SCOPES.map(([value, label]) => (
              <option key={value} value={value}>
                {label}
              </option>
            ))}
          </select>
        </label>
        {error("scope")}
      </div>
      <div className="field">
        <label>
          Workspace
          <select
            value={workspace}
            aria-describedby={described("workspace_id")}
            onChange={(e) => setWorkspace(e.target.value)}
          >
            <option value="">All my workspaces</option>
            {workspaces.map((w) => (
              <option key={w.id} value={w.id}>
                {w.name}
              </option>
            ))}
          </select>
        </label>
        {error("workspace_id")}
      </div>
      <div className="field">
        <label>
          Expires after
          <select
            value={days}
            aria-describedby={described("expires_at")}
            onChange={(e) => setDays(Number(e.target.value))}
          >
            {LIFETIMES.map(([value, label]) => (
              <option key={value} value={value}>
                {label}
              </option>
            ))}
          </select>
        </label>
        {error("expires_at")}
      </div>
      <Alert message={general} />
      <div className="row">
        <button type="submit" className="primary" disabled={busy}>
          {busy ? "Creating…" : "Create token"}
        </button>
      </div>
    </form>
  );
}

interface SecretProps {
  name: string;
  token: string;
  onDone: () => void;
}

/** The secret of a token just made: shown this once, with Copy. */
function NewSecret({ name, token, onDone }: SecretProps) {
  const [copied, copy] = useCopy(token);
  return (
    <div className="card stack new-token" role="status" aria-label={`New token ${name}`}>
      <p className="warning">
        Copy the token “{name}” now: it is not shown again. Anyone who has it can act as you.
      </p>
      <code className="secret" data-testid="new-token">
        {token}
      </code>
      <div className="row">
        <button type="button" className="primary" onClick={() => void copy()}>
          {copied === "yes" ? "Copied" : "Copy"}
        </button>
        <button type="button" onClick={onDone}>
          Done
        </button>
      </div>
      {copied === "no" && <p className="small muted">Select the token and copy it by hand.</p>}
    </div>
  );
}

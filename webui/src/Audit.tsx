import { type FormEvent, useCallback, useEffect, useId, useState } from "react";
import { type AuditEntry, auditApi, describe, type Workspace } from "./api";
import { Alert } from "./useAction";
import { absolute, ago } from "./when";

/** The actions a workspace's log holds, in the words the table uses. */
export const ACTION_LABELS: Record<string, string> = {
  "workspace.created": "created the workspace",
  "workspace.deleted": "deleted the workspace",
  "workspace.budget_changed": "changed the budget",
  "member.invited": "invited",
  "member.added": "added",
  "member.role_changed": "changed the role of",
  "member.removed": "removed",
  "invitation.accepted": "accepted the invitation",
  "invitation.declined": "declined the invitation",
  "invitation.revoked": "withdrew the invitation",
  "sandbox.created": "created the sandbox",
  "sandbox.paused": "paused",
  "sandbox.resumed": "resumed",
  "sandbox.deleted": "deleted the sandbox",
  "sandbox.opened": "opened",
  "agent.code_created": "made an agent code",
  "agent.registered": "registered the local agent",
  "agent.revoked": "revoked the local agent",
  "token.created": "made the API token",
  "token.revoked": "revoked the API token",
};

/** The filter's choices, grouped by what they act on, in words ("Sandbox deleted"). */
export const ACTION_GROUPS: [string, [string, string][]][] = [
  [
    "Workspace",
    [
      ["workspace.created", "Workspace created"],
      ["workspace.deleted", "Workspace deleted"],
      ["workspace.budget_changed", "Budget changed"],
    ],
  ],
  [
    "Members",
    [
      ["member.invited", "Member invited"],
      ["member.added", "Member added"],
      ["member.role_changed", "Role changed"],
      ["member.removed", "Member removed"],
      ["invitation.accepted", "Invitation accepted"],
      ["invitation.declined", "Invitation declined"],
      ["invitation.revoked", "Invitation withdrawn"],
    ],
  ],
  [
    "Sandboxes",
    [
      ["sandbox.created", "Sandbox created"],
      ["sandbox.paused", "Sandbox paused"],
      ["sandbox.resumed", "Sandbox resumed"],
      ["sandbox.deleted", "Sandbox deleted"],
      ["sandbox.opened", "Sandbox opened"],
    ],
  ],
  [
    "Local agents",
    [
      ["agent.code_created", "Agent code made"],
      ["agent.registered", "Agent registered"],
      ["agent.revoked", "Agent revoked"],
    ],
  ],
  [
    "API tokens",
    [
      ["token.created", "Token made"],
      ["token.revoked", "Token revoked"],
    ],
  ],
];

const PAGE = 50;

/** "owner → guest", "port 5173", "budget 2,000,000": the facts a row's details hold. */
export function detailText(entry: AuditEntry): string {
  const d = entry.details;
  const parts: string[] = [];
  if (typeof d.role === "string")
    parts.push(typeof d.was === "string" ? `${d.was} → ${d.role}` : `as ${d.role}`);
  if (typeof d.port === "number") parts.push(`port ${d.port}`);
  if ("budget" in d)
    parts.push(d.budget === null ? "no budget" : `budget ${Number(d.budget).toLocaleString("en")}`);
  if (d.left === true) parts.push("(left)");
  if (typeof d.reason === "string") parts.push(d.reason);
  if (typeof d.via === "string" && d.via.startsWith("api_token")) parts.push("(with an API token)");
  return parts.join(", ");
}

function who(entry: AuditEntry): string {
  if (entry.actor_name) return entry.actor_name;
  return entry.actor_id ? entry.actor_id : "the server";
}

function target(entry: AuditEntry): string {
  const name = entry.target_name ?? entry.target_id ?? "";
  return [entry.target_type, name].filter((p) => p).join(" ");
}

interface Props {
  workspace: Workspace;
}

/** Who did what in the workspace, when and from where: newest first, filtered, a page at a time. */
export function Audit({ workspace }: Props) {
  const [entries, setEntries] = useState<AuditEntry[] | null>(null);
  const [next, setNext] = useState<number | null>(null);
  const [action, setAction] = useState("");
  const [actor, setActor] = useState("");
  // The filter the shown entries answer (the form may hold another, not applied yet).
  const [applied, setApplied] = useState({ action: "", actor: "" });
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const actionId = useId();
  const actorId = useId();

  const load = useCallback(
    async (filter: { action: string; actor: string }, before?: number) => {
      setBusy(true);
      setError(null);
      try {
        const page = await auditApi.page(workspace.id, { ...filter, before, limit: PAGE });
        setEntries((shown) =>
          before === undefined ? page.entries : [...(shown ?? []), ...page.entries],
        );
        setNext(page.next);
      } catch (e) {
        setError(describe(e));
      } finally {
        setBusy(false);
      }
    },
    [workspace.id],
  );

  useEffect(() => {
    void load({ action: "", actor: "" });
  }, [load]);

  function filter(event: FormEvent) {
    event.preventDefault();
    const chosen = { action, actor: actor.trim() };
    setApplied(chosen);
    void load(chosen);
  }

  function showEverything() {
    const none = { action: "", actor: "" };
    setAction("");
    setActor("");
    setApplied(none);
    void load(none);
  }

  const now = Date.now();
  return (
    <section className="audit" aria-label="Audit log">
      <form className="row audit-filter" onSubmit={filter}>
        <label htmlFor={actionId}>What</label>
        <select id={actionId} value={action} onChange={(e) => setAction(e.target.value)}>
          <option value="">Everything</option>
          {ACTION_GROUPS.map(([group, actions]) => (
            <optgroup key={group} label={group}>
              {actions.map(([name, words]) => (
                <option key={name} value={name}>
                  {words}
                </option>
              ))}
            </optgroup>
          ))}
        </select>
        <label htmlFor={actorId}>Who</label>
        <input
          id={actorId}
          value={actor}
          placeholder="user name or id"
          onChange={(e) => setActor(e.target.value)}
        />
        <button type="submit" disabled={busy}>
          Filter
        </button>
      </form>
      <Alert message={error} />
      {entries !== null && entries.length === 0 && (
        <p className="note">
          {applied.action || applied.actor ? (
            <>
              Nothing matches this filter.{" "}
              <button type="button" className="link" onClick={showEverything}>
                Show everything
              </button>
            </>
          ) : (
            "Nothing recorded yet. Sign-ins, member changes and sandboxes started, paused or deleted show up here."
          )}
        </p>
      )}
      {entries !== null && entries.length > 0 && (
        <div className="audit-scroll">
          <table className="audit-log">
            <thead>
              <tr>
                <th scope="col">When</th>
                <th scope="col">Who</th>
                <th scope="col">What</th>
                <th scope="col">Target</th>
                <th scope="col">From</th>
              </tr>
            </thead>
            <tbody>
              {entries.map((e) => (
                <tr key={e.id}>
                  <td>
                    <time dateTime={e.at} title={e.at}>
                      {absolute(e.at)}
                    </time>
                    <span className="audit-details"> ({ago(e.at, now)})</span>
                  </td>
                  <td>{who(e)}</td>
                  <td title={e.action}>
                    {ACTION_LABELS[e.action] ?? e.action}
                    {detailText(e) && <span className="audit-details"> {detailText(e)}</span>}
                  </td>
                  <td>{target(e)}</td>
                  <td>{e.address ?? ""}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      {next !== null && (
        <button type="button" disabled={busy} onClick={() => void load(applied, next)}>
          Load more
        </button>
      )}
    </section>
  );
}

import { type FormEvent, useCallback, useEffect, useId, useState } from "react";
import {
  api,
  atLeast,
  describe,
  type Member,
  type PendingInvitation,
  ROLES,
  type Role,
  type User,
  type Workspace,
} from "./api";
import { ConfirmDialog } from "./Confirm";
import { useVisiblePoll } from "./poll";
import { canDepart, isLastOwner, ROLE_HELP, roleChangeQuestion, roleChoices } from "./roles";
import { Alert } from "./useAction";

interface Props {
  workspace: Workspace;
  me: User;
  onLeft: () => void;
}

/** A change waiting for its confirmation. */
type Pending =
  | { kind: "role"; member: Member; role: Role }
  | { kind: "remove"; member: Member }
  | null;

/** What adding someone did; an invitation's notice lasts while it is pending. */
interface Notice {
  username: string;
  invited: boolean;
}

/** Errors shown next to the control that caused them: "add", or a member's or invitation's id. */
type Errors = Record<string, string>;

export function Members({ workspace, me, onLeft }: Props) {
  const [members, setMembers] = useState<Member[] | null>(null);
  const [pending, setPending] = useState<PendingInvitation[]>([]);
  const [notice, setNotice] = useState<Notice | null>(null);
  // Roles chosen in a member's select, not yet confirmed with Change role.
  const [drafts, setDrafts] = useState<Record<string, Role>>({});
  const [username, setUsername] = useState("");
  const [role, setRole] = useState<Role>("developer");
  const [asking, setAsking] = useState<Pending>(null);
  const [errors, setErrors] = useState<Errors>({});
  const [loadError, setLoadError] = useState<string | null>(null);
  const helpId = useId();
  const isOwner = workspace.role === "owner";
  const canAdd = atLeast(workspace.role, "maintainer");
  const addable = ROLES.filter((r) => isOwner || r !== "owner");

  const load = useCallback(async () => {
    try {
      setMembers(await api.members(workspace.id));
      if (atLeast(workspace.role, "maintainer"))
        setPending(await api.pendingInvitations(workspace.id));
      else setPending([]);
      setLoadError(null);
    } catch (e) {
      setLoadError(describe(e));
    }
  }, [workspace.id, workspace.role]);

  useEffect(() => {
    void load();
  }, [load]);
  // Other owners change roles and membership too; keep the list current while it is shown.
  useVisiblePoll(load, 5000);

  /** Runs one change; its failure shows next to ``key``'s control. */
  async function act(key: string, work: () => Promise<unknown>) {
    setErrors(({ [key]: _, ...rest }) => rest);
    try {
      await work();
    } catch (e) {
      setErrors((all) => ({ ...all, [key]: describe(e) }));
    }
    await load();
  }

  async function add(event: FormEvent) {
    event.preventDefault();
    setNotice(null);
    let added: Notice | null = null;
    await act("add", async () => {
      const answer = await api.addMember(workspace.id, username, role);
      setUsername("");
      added = { username: answer.username, invited: answer.status === "invited" };
    });
    // (after the lists were read again: the invitation is in them by now)
    setNotice(added);
  }

  /** Clears a role chosen in ``member``'s select. */
  function dropDraft(member: Member) {
    setDrafts(({ [member.user_id]: _, ...rest }) => rest);
  }

  function confirm() {
    const change = asking;
    setAsking(null);
    if (change === null) return;
    const { member } = change;
    dropDraft(member);
    if (change.kind === "role")
      void act(member.user_id, () => api.setRole(workspace.id, member.user_id, change.role));
    else
      void act(member.user_id, async () => {
        await api.removeMember(workspace.id, member.user_id);
        if (member.user_id === me.id) onLeft();
      });
  }

  const list = members ?? [];
  const askingIsMe = asking?.member.user_id === me.id;
  // "Invited bob" goes once bob accepted (a member now) or the invitation is gone.
  let shownNotice: string | null = null;
  if (notice && !notice.invited) shownNotice = `${notice.username} is now a member.`;
  else if (
    notice &&
    pending.some((p) => p.username === notice.username) &&
    !list.some((m) => m.username === notice.username)
  )
    shownNotice = `Invited ${notice.username}: they join once they accept.`;
  return (
    <section aria-label="Members">
      {canAdd && (
        <form onSubmit={add} className="add-member">
          <div className="row">
            <label className="grow">
              <span className="sr-only">Username to add</span>
              <input
                name="member"
                required
                placeholder="Username to add"
                value={username}
                onChange={(e) => setUsername(e.target.value)}
              />
            </label>
            <label>
              <span className="sr-only">Role for the new member</span>
              <select
                name="role"
                aria-label="Role for the new member"
                aria-describedby={helpId}
                value={role}
                onChange={(e) => setRole(e.target.value as Role)}
              >
                {addable.map((r) => (
                  <option key={r} value={r}>
                    {r}
                  </option>
                ))}
              </select>
            </label>
            <button type="submit" className="primary">
              Add member
            </button>
          </div>
          <p id={helpId} className="hint">
            <span className="role-name">{role}:</span> {ROLE_HELP[role]}
          </p>
          <Alert message={errors.add ?? null} />
          {shownNotice && !errors.add && (
            <p className="notice" role="status">
              {shownNotice}
            </p>
          )}
        </form>
      )}
      <Alert message={loadError} />
      {members === null && !loadError && <p className="muted">Loading members…</p>}
      <table className="members">
        <thead>
          <tr>
            <th scope="col">Member</th>
            <th scope="col">Role</th>
            <th scope="col">
              <span className="sr-only">Actions</span>
            </th>
          </tr>
        </thead>
        <tbody>
          {list.map((m) => {
            const isMe = m.user_id === me.id;
            const last = isLastOwner(m, list);
            return (
              <tr key={m.user_id}>
                <td>
                  {m.username}
                  {isMe && <span className="muted"> (you)</span>}
                </td>
                <td>
                  {isOwner && !last ? (
                    // Choosing a role (arrow keys move through them) changes nothing yet:
                    // Change role asks for the confirmation.
                    <span className="row tight">
                      <select
                        aria-label={`Role of ${m.username}`}
                        value={drafts[m.user_id] ?? m.role}
                        onChange={(e) =>
                          setDrafts((all) => ({ ...all, [m.user_id]: e.target.value as Role }))
                        }
                      >
                        {roleChoices(m, list).map((r) => (
                          <option key={r} value={r}>
                            {r}
                          </option>
                        ))}
                      </select>
                      {drafts[m.user_id] !== undefined && drafts[m.user_id] !== m.role && (
                        <>
                          <button
                            type="button"
                            className="primary small"
                            aria-label={`Change the role of ${m.username}`}
                            onClick={() =>
                              setAsking({
                                kind: "role",
                                member: m,
                                role: drafts[m.user_id] ?? m.role,
                              })
                            }
                          >
                            Change role
                          </button>
                          <button
                            type="button"
                            className="small"
                            aria-label={`Keep the role of ${m.username}`}
                            onClick={() => dropDraft(m)}
                          >
                            Cancel
                          </button>
                        </>
                      )}
                    </span>
                  ) : (
                    <span className="badge">{m.role}</span>
                  )}
                  {last &&
                    (isMe ? (
                      <p className="hint owner-only">
                        You are the only owner, so you cannot leave or step down: make someone else
                        an owner first.
                      </p>
                    ) : (
                      <span className="muted small-note"> the only owner</span>
                    ))}
                  <Alert message={errors[m.user_id] ?? null} />
                </td>
                <td className="end">
                  {(isOwner || isMe) && canDepart(m, list) && (
                    <button
                      type="button"
                      className="danger"
                      aria-label={isMe ? "Leave" : `Remove ${m.username}`}
                      onClick={() => setAsking({ kind: "remove", member: m })}
                    >
                      {isMe ? "Leave" : "Remove"}
                    </button>
                  )}
                </td>
              </tr>
            );
          })}
        </tbody>
      </table>
      {canAdd && pending.length > 0 && (
        <table className="members pending" aria-label="Pending invitations">
          <thead>
            <tr>
              <th scope="col">Invited</th>
              <th scope="col">Role</th>
              <th scope="col">By</th>
              <th scope="col">
                <span className="sr-only">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {pending.map((p) => (
              <tr key={p.id}>
                <td>
                  {p.username} <span className="muted">(pending)</span>
                </td>
                <td>
                  <span className="badge">{p.role}</span>
                </td>
                <td>{p.invited_by ?? "—"}</td>
                <td className="end">
                  {(isOwner || p.invited_by === me.username) && (
                    <button
                      type="button"
                      aria-label={`Revoke the invitation of ${p.username}`}
                      onClick={() => void act(p.id, () => api.revokeInvitation(p.id))}
                    >
                      Revoke
                    </button>
                  )}
                  <Alert message={errors[p.id] ?? null} />
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <details className="role-help">
        <summary>What can each role do?</summary>
        <dl>
          {ROLES.map((r) => (
            <div key={r}>
              <dt>{r}</dt>
              <dd>{ROLE_HELP[r]}</dd>
            </div>
          ))}
        </dl>
      </details>
      <ConfirmDialog
        open={asking !== null}
        question={
          asking === null
            ? ""
            : asking.kind === "role"
              ? roleChangeQuestion(asking.member, asking.role, askingIsMe, workspace.name)
              : askingIsMe
                ? `Leave "${workspace.name}"?`
                : `Remove ${asking.member.username} from "${workspace.name}"?`
        }
        confirmLabel={
          asking?.kind === "role"
            ? `Make ${askingIsMe ? "me" : asking.member.username} ${asking.role}`
            : askingIsMe
              ? "Leave"
              : "Remove"
        }
        tone={asking?.kind === "role" && !askingIsMe ? "primary" : "danger"}
        onCancel={() => setAsking(null)}
        onConfirm={confirm}
      >
        {asking?.kind === "role" && (
          <p className="hint">
            <span className="role-name">{asking.role}:</span> {ROLE_HELP[asking.role]}
          </p>
        )}
        {asking?.kind === "remove" && (
          <p className="hint">
            {askingIsMe
              ? "You lose access at once; an owner or maintainer would have to invite you again."
              : `${asking.member.username} loses access at once, including opencode tabs already open.`}
          </p>
        )}
      </ConfirmDialog>
    </section>
  );
}

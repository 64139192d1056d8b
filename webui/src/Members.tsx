import { type FormEvent, useCallback, useEffect, useState } from "react";
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
import { ConfirmButton } from "./Confirm";
import { Alert, useAction } from "./useAction";

interface Props {
  workspace: Workspace;
  me: User;
  onLeft: () => void;
}

export function Members({ workspace, me, onLeft }: Props) {
  const [members, setMembers] = useState<Member[] | null>(null);
  const [pending, setPending] = useState<PendingInvitation[]>([]);
  const [notice, setNotice] = useState<string | null>(null);
  const [username, setUsername] = useState("");
  const [role, setRole] = useState<Role>("developer");
  const isOwner = workspace.role === "owner";
  const canAdd = atLeast(workspace.role, "maintainer");
  const addable = ROLES.filter((r) => isOwner || r !== "owner");

  const [loadError, setLoadError] = useState<string | null>(null);
  const load = useCallback(async () => {
    try {
      setMembers(await api.members(workspace.id));
      if (atLeast(workspace.role, "maintainer"))
        setPending(await api.pendingInvitations(workspace.id));
    } catch (e) {
      setLoadError(describe(e));
    }
  }, [workspace.id, workspace.role]);

  useEffect(() => {
    void load();
  }, [load]);

  const { error, act } = useAction(load);
  const shown = error ?? loadError;

  async function add(event: FormEvent) {
    event.preventDefault();
    setNotice(null);
    await act(async () => {
      const added = await api.addMember(workspace.id, username, role);
      setUsername("");
      setNotice(
        added.status === "invited"
          ? `Invited ${added.username}: they join once they accept.`
          : `${added.username} is now a member.`,
      );
    });
  }

  return (
    <section aria-label="Members">
      {canAdd && (
        <form onSubmit={add} className="row">
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
        </form>
      )}
      <Alert message={shown} />
      {notice && !shown && (
        <p className="notice" role="status">
          {notice}
        </p>
      )}
      {members === null && <p className="muted">Loading members…</p>}
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
          {members?.map((m) => (
            <tr key={m.user_id}>
              <td>
                {m.username}
                {m.user_id === me.id && <span className="muted"> (you)</span>}
              </td>
              <td>
                {isOwner ? (
                  <select
                    aria-label={`Role of ${m.username}`}
                    value={m.role}
                    onChange={(e) =>
                      void act(() => api.setRole(workspace.id, m.user_id, e.target.value as Role))
                    }
                  >
                    {ROLES.map((r) => (
                      <option key={r} value={r}>
                        {r}
                      </option>
                    ))}
                  </select>
                ) : (
                  <span className="badge">{m.role}</span>
                )}
              </td>
              <td className="end">
                {(isOwner || m.user_id === me.id) && (
                  <ConfirmButton
                    label={m.user_id === me.id ? "Leave" : "Remove"}
                    question={
                      m.user_id === me.id
                        ? `Leave "${workspace.name}"?`
                        : `Remove ${m.username} from "${workspace.name}"?`
                    }
                    confirmLabel={m.user_id === me.id ? "Leave" : "Remove"}
                    onConfirm={() =>
                      void act(async () => {
                        await api.removeMember(workspace.id, m.user_id);
                        if (m.user_id === me.id) onLeft();
                      })
                    }
                  />
                )}
              </td>
            </tr>
          ))}
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
                      onClick={() => void act(() => api.revokeInvitation(p.id))}
                    >
                      Revoke
                    </button>
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

import { useCallback, useEffect, useState } from "react";
import { api, describe, type Invitation, type Workspace } from "./api";
import { useVisiblePoll } from "./poll";
import { ROLE_HELP } from "./roles";
import { Alert } from "./useAction";

interface Props {
  /** Called after accepting, with the workspace just joined. */
  onJoined: (workspace: Workspace) => void;
}

/** The signed-in user's pending invitations. Nothing of a workspace is shown or reachable
 * until its invitation is accepted. */
export function Invitations({ onJoined }: Props) {
  const [invitations, setInvitations] = useState<Invitation[]>([]);
  const [error, setError] = useState<string | null>(null);

  const load = useCallback(async () => {
    try {
      setInvitations(await api.invitations());
    } catch (e) {
      setError(describe(e));
    }
  }, []);

  useEffect(() => {
    void load();
  }, [load]);
  // New invitations appear without a reload; they are few and the call is cheap.
  useVisiblePoll(load, 15_000);

  async function answer(invitation: Invitation, accept: boolean) {
    setError(null);
    try {
      if (accept) onJoined(await api.acceptInvitation(invitation.id));
      else await api.declineInvitation(invitation.id);
    } catch (e) {
      setError(describe(e));
    }
    await load();
  }

  if (invitations.length === 0 && !error) return null;
  return (
    <section className="invitations stack" aria-label="Invitations">
      <h2>Invitations</h2>
      <Alert message={error} />
      <ul className="plain stack">
        {invitations.map((i) => (
          <li key={i.id} className="card invitation">
            <p>
              <strong>{i.invited_by ?? "Someone"}</strong> invites you to{" "}
              <strong>{i.workspace_name}</strong> as <span className="badge">{i.role}</span>
            </p>
            <p className="hint">
              {ROLE_HELP[i.role]} Nothing of the workspace is shown until you accept; the invitation
              expires on {new Date(i.expires_at).toLocaleDateString()}.
            </p>
            <div className="row">
              <button
                type="button"
                className="primary"
                aria-label={`Accept the invitation to ${i.workspace_name}`}
                onClick={() => void answer(i, true)}
              >
                Accept
              </button>
              <button
                type="button"
                aria-label={`Decline the invitation to ${i.workspace_name}`}
                onClick={() => void answer(i, false)}
              >
                Decline
              </button>
            </div>
          </li>
        ))}
      </ul>
    </section>
  );
}

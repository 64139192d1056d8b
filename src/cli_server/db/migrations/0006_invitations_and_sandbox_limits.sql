-- Membership needs the invitee's consent: adding someone creates a pending invitation, which
-- only they can accept (it becomes a workspace_members row) or decline (it is deleted).
-- Until then nothing joins them to the workspace.
CREATE TABLE workspace_invitations (
    id           uuid PRIMARY KEY,
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role         text NOT NULL CHECK (role IN ('owner', 'maintainer', 'developer', 'guest')),
    invited_by   uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
-- One pending invitation per person and workspace: inviting again updates it.
CREATE UNIQUE INDEX workspace_invitations_workspace_user
    ON workspace_invitations (workspace_id, user_id);
CREATE INDEX workspace_invitations_user_id ON workspace_invitations (user_id);

-- Who started or last resumed a sandbox: the per-user limit on running sandboxes counts these.
ALTER TABLE sandboxes ADD COLUMN started_by uuid REFERENCES users (id) ON DELETE SET NULL;
UPDATE sandboxes SET started_by = created_by;
CREATE INDEX sandboxes_started_by ON sandboxes (started_by);

-- Budget held by Anthropic calls while they run, so parallel calls see each other's worst case.
-- A call replaces its hold by what it cost when it ends; a crashed server's holds run out.
CREATE TABLE anthropic_reservations (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    sandbox_id   uuid NOT NULL,
    tokens       bigint NOT NULL CHECK (tokens >= 0),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX anthropic_reservations_workspace ON anthropic_reservations (workspace_id);

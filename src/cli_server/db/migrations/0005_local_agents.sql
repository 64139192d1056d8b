-- Local agents: a laptop joins a workspace as a local sandbox through the tunnel.
-- Registration codes are single use and short lived; only their hashes are stored.
CREATE TABLE agent_codes (
    code_hash    bytea PRIMARY KEY,
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    created_by   uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    used_at      timestamptz
);
CREATE INDEX agent_codes_expires_at ON agent_codes (expires_at);

-- The agent's long-lived credential for GET /api/tunnel/{id}; only its hash is kept.
ALTER TABLE sandboxes ADD COLUMN tunnel_token_hash bytea;
CREATE UNIQUE INDEX sandboxes_tunnel_token_hash ON sandboxes (tunnel_token_hash)
    WHERE tunnel_token_hash IS NOT NULL;

-- Sandboxes: one opencode server each, on a backend, in a workspace.
CREATE TABLE sandboxes (
    id               uuid PRIMARY KEY,
    workspace_id     uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    name             text NOT NULL,
    status           text NOT NULL CHECK (status IN
                         ('creating', 'running', 'pausing', 'paused', 'resuming', 'offline', 'failed')),
    error            text,
    is_local         boolean NOT NULL DEFAULT false,
    backend          text NOT NULL,
    created_by       uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    last_activity_at timestamptz NOT NULL DEFAULT now(),
    paused_at        timestamptz,
    -- presented to opencode by the proxy (HTTP Basic), so it is kept; never in API output or logs
    opencode_password text NOT NULL,
    -- the sandbox's Anthropic proxy token, rotated at every start; only its hash is kept
    proxy_token_hash bytea
);
CREATE INDEX sandboxes_workspace_id ON sandboxes (workspace_id);
CREATE INDEX sandboxes_status ON sandboxes (status);
CREATE UNIQUE INDEX sandboxes_proxy_token_hash ON sandboxes (proxy_token_hash)
    WHERE proxy_token_hash IS NOT NULL;

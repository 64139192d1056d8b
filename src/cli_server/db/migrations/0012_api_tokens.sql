-- Personal API tokens: a user's own credential for scripts, narrowed to a scope and optionally
-- to one workspace. Only a SHA-256 of each secret is kept (the secrets are 256 random bits, so
-- a fast hash is enough); a leaked table opens nothing. A workspace's tokens go with it: a
-- token restricted to a deleted workspace must never become one for all of them.
CREATE TABLE api_tokens (
    id           uuid PRIMARY KEY,
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         text NOT NULL,
    scope        text NOT NULL CHECK (scope IN ('read', 'write', 'admin')),
    workspace_id uuid REFERENCES workspaces (id) ON DELETE CASCADE,
    token_hash   bytea NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    last_used_at timestamptz,                 -- written at most once a minute
    revoked_at   timestamptz,
    -- the token that made this one, if a token did: revoking it revokes what it made
    made_by      uuid REFERENCES api_tokens (id) ON DELETE CASCADE
);
CREATE INDEX api_tokens_user_id ON api_tokens (user_id);
CREATE INDEX api_tokens_made_by ON api_tokens (made_by) WHERE made_by IS NOT NULL;

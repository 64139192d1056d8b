-- Browser access to a sandbox's subdomain: one-time tickets minted on the main site, redeemed
-- on the subdomain for a session of its own. Only hashes are stored.
CREATE TABLE sandbox_tickets (
    ticket_hash bytea PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    sandbox_id  uuid NOT NULL REFERENCES sandboxes (id) ON DELETE CASCADE,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);
CREATE INDEX sandbox_tickets_expires_at ON sandbox_tickets (expires_at);

CREATE TABLE sandbox_sessions (
    token_hash  bytea PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    sandbox_id  uuid NOT NULL REFERENCES sandboxes (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX sandbox_sessions_user_id ON sandbox_sessions (user_id);
CREATE INDEX sandbox_sessions_sandbox_id ON sandbox_sessions (sandbox_id);

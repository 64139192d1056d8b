-- The instance admin (the first registered user), disabled accounts, when each was last seen.
ALTER TABLE users ADD COLUMN is_admin boolean NOT NULL DEFAULT false;
ALTER TABLE users ADD COLUMN disabled_at timestamptz;
ALTER TABLE users ADD COLUMN last_seen_at timestamptz;
-- An existing instance: its oldest account was its first, so it becomes the admin.
UPDATE users SET is_admin = true
    WHERE id = (SELECT id FROM users ORDER BY created_at, id LIMIT 1);

-- A session's own listing: a non-secret id (the token stays hashed), where it was opened from
-- and when it was last used (written at most once a minute).
ALTER TABLE sessions ADD COLUMN id uuid;
UPDATE sessions SET id = gen_random_uuid();
ALTER TABLE sessions ALTER COLUMN id SET NOT NULL;
ALTER TABLE sessions ALTER COLUMN id SET DEFAULT gen_random_uuid();
CREATE UNIQUE INDEX sessions_id_key ON sessions (id);
ALTER TABLE sessions ADD COLUMN last_seen_at timestamptz;
UPDATE sessions SET last_seen_at = created_at;
ALTER TABLE sessions ALTER COLUMN last_seen_at SET NOT NULL;
ALTER TABLE sessions ALTER COLUMN last_seen_at SET DEFAULT now();
ALTER TABLE sessions ADD COLUMN user_agent text;
ALTER TABLE sessions ADD COLUMN address text;

-- One-time sign-up links for --registration invite; only a hash of each token is kept.
CREATE TABLE signup_links (
    id          uuid PRIMARY KEY,
    token_hash  bytea NOT NULL UNIQUE,
    created_by  uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    used_by     uuid REFERENCES users (id) ON DELETE SET NULL
);
CREATE INDEX signup_links_expires_at ON signup_links (expires_at);

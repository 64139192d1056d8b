-- Single sign-on: which provider's (provider, subject) signs in which user. A linked identity
-- never moves to another user; it goes with its user.
CREATE TABLE identities (
    id            uuid PRIMARY KEY,
    user_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    provider      text NOT NULL,
    subject       text NOT NULL,
    email         text,                     -- what the provider verified, shown on the account page
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (provider, subject)
);
CREATE INDEX identities_user_id ON identities (user_id);

-- Set when a provider verified this very address for this user; an address typed at
-- registration stays unverified, and only a verified one may link a new identity by email.
ALTER TABLE users ADD COLUMN email_verified_at timestamptz;

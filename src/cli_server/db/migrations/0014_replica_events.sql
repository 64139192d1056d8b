-- Several replicas on one database. What one replica's domain fires (a revocation, a status
-- change) is written here and announced with NOTIFY carrying only the row's id; the others
-- read the row and deliver it to their own subscribers. Rows are ids and names, never a
-- secret, and are pruned after a few minutes by whoever inserts.
CREATE TABLE replica_events (
    id bigserial PRIMARY KEY,
    origin text NOT NULL,      -- the replica that fired it (it does not hear it again)
    kind text NOT NULL,        -- an events.Listener method: user_revoked, member_changed, ...
    payload jsonb NOT NULL,    -- its arguments, by name
    at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX replica_events_at ON replica_events (at);

-- Failed logins and registrations counted for all replicas at once. ``stamps`` are the
-- failures' times (seconds since the epoch, the server's clock), newest last, at most as many
-- as the limit needs; ``count`` and ``last_at`` serve the progressive delays.
CREATE TABLE auth_failures (
    kind text NOT NULL,        -- pair, account, address (logins), registration
    key text NOT NULL,
    count integer NOT NULL,
    last_at double precision NOT NULL,
    stamps double precision[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (kind, key)
);
CREATE INDEX auth_failures_last_at ON auth_failures (last_at);

-- The addresses each account logged in from successfully (a login from one of them is not
-- slowed by failures from elsewhere).
CREATE TABLE login_addresses (
    account text NOT NULL,
    address text NOT NULL,
    seen_at double precision NOT NULL,
    PRIMARY KEY (account, address)
);
CREATE INDEX login_addresses_seen_at ON login_addresses (seen_at);

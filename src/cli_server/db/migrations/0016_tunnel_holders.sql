-- Which replica holds each local sandbox's live tunnel (the others relay to it). A row goes when
-- its tunnel ends there, or when the replica stops heartbeating (the survivors release it).
CREATE TABLE tunnel_holders (
    sandbox_id uuid PRIMARY KEY REFERENCES sandboxes (id) ON DELETE CASCADE,
    replica_id text NOT NULL,
    since timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tunnel_holders_replica_id ON tunnel_holders (replica_id);

-- Secrets the replicas share, made once by the first (the internal channel's key). Kept as the
-- opencode passwords are: the server must present them, so they cannot be hashed.
CREATE TABLE instance_secrets (
    name text PRIMARY KEY,
    value text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

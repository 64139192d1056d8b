-- The replicas serving this database: each one registers at start and heartbeats; the rows of
-- replicas that stopped heartbeating expire. The leader is not stored: it is whoever holds the
-- advisory lock (replicas/leader.py).
CREATE TABLE replicas (
    id text PRIMARY KEY,
    hostname text NOT NULL,
    instance text NOT NULL,  -- its data directory: the same replica after a restart
    advertise_url text,  -- where the other replicas reach it
    backend text NOT NULL,
    backend_instance text,  -- the label on its docker or k8s objects: one per deployment
    embedded_db boolean NOT NULL,  -- it runs this database itself, under its data dir
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

-- The process backend runs sandboxes on one host: the one named here started it last.
ALTER TABLE sandboxes ADD COLUMN host text;

-- What the holder of a local sandbox's tunnel knows of its agent, for the replicas that do not
-- hold it (the API shows the laptop's shared ports and the agent's release on every replica):
-- the ports its hello shares, its release name (``cli-agent/26.11.0``) and its protocol.
ALTER TABLE tunnel_holders
    ADD COLUMN shared_ports integer[] NOT NULL DEFAULT '{}',
    ADD COLUMN agent text,
    ADD COLUMN protocol integer;

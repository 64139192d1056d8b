-- Previews: a ticket and the session it opens are bound to one port of the sandbox (its
-- preview origin, oc-{id}-p{port}); NULL is opencode's own address. A session made on one
-- origin authenticates on no other.
ALTER TABLE sandbox_tickets ADD COLUMN port integer
    CHECK (port IS NULL OR port BETWEEN 1024 AND 65535);
ALTER TABLE sandbox_sessions ADD COLUMN port integer
    CHECK (port IS NULL OR port BETWEEN 1024 AND 65535);

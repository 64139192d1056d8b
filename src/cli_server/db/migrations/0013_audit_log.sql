-- The audit log: who did what, when, from where. Rows are only ever added; names are copied
-- as they were (no foreign keys: a deleted user, workspace or sandbox keeps its history, and
-- no cascade can delete a row). The trigger refuses UPDATE, DELETE and TRUNCATE, except the
-- DELETE of audit_purge(), the retention purge, which sets cli_server.audit_purge for itself.
CREATE TABLE audit_log (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    actor_id uuid,
    actor_name text,
    action text NOT NULL CHECK (action ~ '^[a-z_]+[.][a-z_]+$'),
    workspace_id uuid,
    target_type text,
    target_id text,
    target_name text,
    address text,
    details jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (octet_length(details::text) <= 2000)
);
CREATE INDEX audit_log_workspace ON audit_log (workspace_id, id DESC)
    WHERE workspace_id IS NOT NULL;
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_actor ON audit_log (actor_id, id DESC) WHERE actor_id IS NOT NULL;
CREATE INDEX audit_log_action ON audit_log (action, id DESC);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('cli_server.audit_purge', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
        MESSAGE = 'audit_log is append-only (' || TG_OP || ' refused)';
END
$$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

-- Deletes the rows older than ``days`` days; returns how many.
CREATE FUNCTION audit_purge(days integer) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    gone bigint;
BEGIN
    IF days IS NULL OR days < 1 THEN
        RAISE EXCEPTION 'audit_purge: days must be at least 1';
    END IF;
    PERFORM set_config('cli_server.audit_purge', 'on', true);
    DELETE FROM audit_log WHERE at < now() - make_interval(days => days);
    GET DIAGNOSTICS gone = ROW_COUNT;
    PERFORM set_config('cli_server.audit_purge', 'off', true);
    RETURN gone;
END
$$;

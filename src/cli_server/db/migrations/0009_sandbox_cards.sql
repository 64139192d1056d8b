-- What a sandbox card tells: when its opencode started, who (or idleness) paused it.
ALTER TABLE sandboxes ADD COLUMN started_at timestamptz;
UPDATE sandboxes SET started_at = updated_at WHERE status = 'running';
-- 'idle' (the idle monitor) or 'user' (paused_by says who); NULL: a server stop, or not paused.
ALTER TABLE sandboxes ADD COLUMN paused_kind text CHECK (paused_kind IN ('idle', 'user'));
ALTER TABLE sandboxes ADD COLUMN paused_by uuid REFERENCES users (id) ON DELETE SET NULL;

-- Sandbox names are unique within a workspace, and workspace names per creating user (its
-- owner at creation), ignoring case. Existing duplicates are renamed first: the oldest keeps
-- its name, the others get the first free " (2)", " (3)", ...
DO $$
DECLARE
    r record;
    k integer;
BEGIN
    FOR r IN
        SELECT id, workspace_id, name FROM (
            SELECT id, workspace_id, name, created_at, row_number() OVER (
                PARTITION BY workspace_id, lower(name) ORDER BY created_at, id) AS n
            FROM sandboxes) d
        WHERE d.n > 1 ORDER BY d.created_at, d.id
    LOOP
        k := 2;
        WHILE EXISTS (SELECT 1 FROM sandboxes WHERE workspace_id = r.workspace_id
                      AND lower(name) = lower(r.name || ' (' || k || ')')) LOOP
            k := k + 1;
        END LOOP;
        UPDATE sandboxes SET name = r.name || ' (' || k || ')' WHERE id = r.id;
    END LOOP;
    FOR r IN
        SELECT id, created_by, name FROM (
            SELECT id, created_by, name, created_at, row_number() OVER (
                PARTITION BY created_by, lower(name) ORDER BY created_at, id) AS n
            FROM workspaces WHERE created_by IS NOT NULL) d
        WHERE d.n > 1 ORDER BY d.created_at, d.id
    LOOP
        k := 2;
        WHILE EXISTS (SELECT 1 FROM workspaces WHERE created_by = r.created_by
                      AND lower(name) = lower(r.name || ' (' || k || ')')) LOOP
            k := k + 1;
        END LOOP;
        UPDATE workspaces SET name = r.name || ' (' || k || ')' WHERE id = r.id;
    END LOOP;
END
$$;
CREATE UNIQUE INDEX sandboxes_workspace_name ON sandboxes (workspace_id, lower(name));
CREATE UNIQUE INDEX workspaces_creator_name ON workspaces (created_by, lower(name));

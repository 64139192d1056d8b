-- Token usage through the Anthropic proxy, per day, sandbox and model; and workspace budgets.
CREATE TABLE anthropic_usage (
    day                   date NOT NULL,
    sandbox_id            uuid NOT NULL,
    workspace_id          uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    model                 text NOT NULL,
    requests              bigint NOT NULL DEFAULT 0,
    input_tokens          bigint NOT NULL DEFAULT 0,
    output_tokens         bigint NOT NULL DEFAULT 0,
    cache_creation_tokens bigint NOT NULL DEFAULT 0,
    cache_read_tokens     bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (day, sandbox_id, model)
);
-- Usage outlives its sandbox (the workspace's totals must not shrink when one is deleted).
CREATE INDEX anthropic_usage_workspace_day ON anthropic_usage (workspace_id, day);

ALTER TABLE workspaces ADD COLUMN monthly_token_budget bigint
    CHECK (monthly_token_budget IS NULL OR monthly_token_budget >= 0);

-- regferry state on PostgreSQL, version 2: operator requests on executions,
-- tags that keep failing across passes (backoff), and the direction of each
-- policy. Mirrors migrations/sqlite/0002_daemon.sql.

ALTER TABLE executions ADD COLUMN retry_requested  BIGINT NOT NULL DEFAULT 0;
ALTER TABLE executions ADD COLUMN cancel_requested BIGINT NOT NULL DEFAULT 0;
ALTER TABLE executions ADD COLUMN direction        TEXT   NOT NULL DEFAULT 'forward'; -- forward | reversed
CREATE INDEX executions_policy ON executions (policy, id);
CREATE INDEX tasks_execution ON tasks (execution_id, source_repo, tag);

-- A tag that failed on one or more passes of a job, and when to try it again.
CREATE TABLE failing_tags (
    scope_key        TEXT    NOT NULL,
    source_repo      TEXT    NOT NULL,
    tag              TEXT    NOT NULL,
    source_digest    TEXT,
    failures         BIGINT  NOT NULL,
    last_error       TEXT,
    first_failed_at  BIGINT  NOT NULL,
    last_failed_at   BIGINT  NOT NULL,
    next_attempt_at  BIGINT  NOT NULL,
    PRIMARY KEY (scope_key, source_repo, tag)
);

-- Which way a policy replicates now (failover reverses it without editing the file).
CREATE TABLE policy_direction (
    policy      TEXT    PRIMARY KEY,
    reversed    BIGINT  NOT NULL,
    changed_at  BIGINT  NOT NULL
);

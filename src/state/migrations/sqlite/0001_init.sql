-- regferry state, version 1: executions, their tasks, and where blobs live.
-- Timestamps are Unix milliseconds. No credential is ever stored here.

CREATE TABLE executions (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    kind         TEXT    NOT NULL,              -- migrate | policy
    policy       TEXT,                          -- policy name, NULL for migrate
    scope_key    TEXT    NOT NULL,              -- "the same job": resume key
    source       TEXT    NOT NULL,              -- registry URL (with prefix)
    destination  TEXT    NOT NULL,
    status       TEXT    NOT NULL,              -- running | succeeded | failed | canceled
    started_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    finished_at  INTEGER,
    summary      TEXT,                          -- JSON counters of the last run
    error        TEXT                           -- why the run as a whole failed
);
CREATE INDEX executions_scope ON executions (scope_key, id);
CREATE INDEX executions_status ON executions (status);

CREATE TABLE tasks (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    execution_id   INTEGER NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    source_repo    TEXT    NOT NULL,
    dest_repo      TEXT    NOT NULL,
    tag            TEXT    NOT NULL,
    source_digest  TEXT,
    media_type     TEXT,
    reason         TEXT,                        -- missing | digest differs | up to date | …
    status         TEXT    NOT NULL,            -- pending | running | retrying | succeeded | failed | skipped | canceled
    attempts       INTEGER NOT NULL DEFAULT 0,
    last_error     TEXT,
    created_at     INTEGER NOT NULL,
    started_at     INTEGER,
    updated_at     INTEGER NOT NULL,
    finished_at    INTEGER,
    UNIQUE (execution_id, source_repo, dest_repo, tag)
);
CREATE INDEX tasks_status ON tasks (status, execution_id);

CREATE TABLE blob_locations (
    registry  TEXT    NOT NULL,                 -- destination base URL
    digest    TEXT    NOT NULL,
    repo      TEXT    NOT NULL,
    seen_at   INTEGER NOT NULL,
    PRIMARY KEY (registry, digest, repo)
) WITHOUT ROWID;

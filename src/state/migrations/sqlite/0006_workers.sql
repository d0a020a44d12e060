-- regferry state, version 6: several workers on one state. A lease per job
-- (one worker plans and closes a pass), a claim per task (whichever worker is
-- free works it), a fence per destination blob (one upload across workers),
-- and push events waiting for the worker that holds their policy.

-- The job a worker holds: `name` is the execution's scope_key.
CREATE TABLE leases (
    name          TEXT    PRIMARY KEY,
    holder        TEXT    NOT NULL,           -- worker id (host:pid or --worker-id)
    execution_id  INTEGER,                    -- the execution it works, once recorded
    acquired_at   INTEGER NOT NULL,
    heartbeat_at  INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL
);

-- Who works a task now (or last worked it), and until when the claim holds.
ALTER TABLE tasks ADD COLUMN worker           TEXT;
ALTER TABLE tasks ADD COLUMN lease_expires_at INTEGER;
CREATE INDEX tasks_claimable ON tasks (execution_id, status, id);

-- Every claim of a task: who, from when, and until when it said it was done
-- (NULL: it never said so, e.g. the worker died; another claim then came
-- only after the claim's expiry).
CREATE TABLE task_claims (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id     INTEGER NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    worker      TEXT    NOT NULL,
    claimed_at  INTEGER NOT NULL,
    ended_at    INTEGER
);
CREATE INDEX task_claims_task ON task_claims (task_id, claimed_at);

-- A blob one worker is putting into a destination registry right now.
CREATE TABLE blob_fences (
    registry    TEXT    NOT NULL,
    digest      TEXT    NOT NULL,
    holder      TEXT    NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (registry, digest)
);

-- Registry push events, until a worker of their policy takes them.
CREATE TABLE push_events (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    policy       TEXT    NOT NULL,
    repos        TEXT    NOT NULL,            -- JSON array of repositories (relative to the source prefix)
    received_at  INTEGER NOT NULL,
    taken_by     TEXT,
    taken_at     INTEGER
);
CREATE INDEX push_events_policy ON push_events (policy, taken_by);

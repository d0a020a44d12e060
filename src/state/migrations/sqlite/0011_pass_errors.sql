-- regferry state, version 11: the last refusal or pass-level error of each
-- policy destination (the fence disagreed, a registry was down, the plan
-- failed, deletions were refused), with its time. A pass refused before it
-- started leaves no execution; this is where its reason is kept, for the
-- status page, the API and `jobs list`.

CREATE TABLE pass_errors (
    policy         TEXT    NOT NULL,
    destination    TEXT    NOT NULL,          -- the job's destination URL (with prefix)
    error          TEXT    NOT NULL,
    at             INTEGER NOT NULL,          -- Unix ms
    PRIMARY KEY (policy, destination)
);

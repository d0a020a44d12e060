-- regferry state, version 5: what the source's referrers API last listed
-- for each subject of a job, so that a pass over unchanged tags syncs the
-- referrers of a subject only when that list changed (sources serving the
-- referrers API; fallback tags are diffed like tags and need no row here).

CREATE TABLE referrer_lists (
    scope_key      TEXT    NOT NULL,
    source_repo    TEXT    NOT NULL,
    subject        TEXT    NOT NULL,          -- the subject's manifest digest
    list_digest    TEXT    NOT NULL,          -- sha256 over the listed referrer digests (sorted, filtered)
    checked_at     BIGINT  NOT NULL,
    PRIMARY KEY (scope_key, source_repo, subject)
);

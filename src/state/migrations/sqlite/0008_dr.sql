-- regferry state, version 8: DR that never destroys.
--
-- What regferry itself wrote at a destination: per policy, destination
-- registry, repository and tag, the digest a pass pushed there (or found
-- there, identical to what it would push). Deletion sync deletes only a tag
-- listed here with the digest the destination still has; a state without
-- rows deletes nothing until passes have recorded what they wrote.
CREATE TABLE owned_tags (
    policy       TEXT    NOT NULL,
    destination  TEXT    NOT NULL,          -- the destination registry (base URL, no credentials)
    dest_repo    TEXT    NOT NULL,
    tag          TEXT    NOT NULL,
    digest       TEXT    NOT NULL,          -- what regferry wrote there
    reversed     INTEGER NOT NULL,          -- written by a reversed pass (DR -> primary)
    generation   INTEGER NOT NULL,          -- the direction's generation when written
    written_at   INTEGER NOT NULL,
    PRIMARY KEY (policy, destination, dest_repo, tag)
);

-- The direction's fencing token: grows by one with every switch (failover,
-- failback), and is written into the fence at the DR site with it.
ALTER TABLE policy_direction ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;

-- regferry state, version 3: the health of each policy as its notifications
-- last saw it, so that a failing policy notifies once per streak (across
-- daemon restarts too) and once more when it recovers.

CREATE TABLE policy_health (
    policy         TEXT    PRIMARY KEY,
    failing        INTEGER NOT NULL,          -- 1 while the latest passes have not all succeeded
    since          INTEGER NOT NULL,          -- when the current streak (failing or healthy) began
    direction      TEXT    NOT NULL,          -- forward | reversed, as of the latest pass
    updated_at     INTEGER NOT NULL
);

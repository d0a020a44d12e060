-- regferry state on PostgreSQL, version 3: the health of each policy as its
-- notifications last saw it. Mirrors migrations/sqlite/0003_health.sql.

CREATE TABLE policy_health (
    policy         TEXT    PRIMARY KEY,
    failing        BIGINT  NOT NULL,          -- 1 while the latest passes have not all succeeded
    since          BIGINT  NOT NULL,          -- when the current streak (failing or healthy) began
    direction      TEXT    NOT NULL,          -- forward | reversed, as of the latest pass
    updated_at     BIGINT  NOT NULL
);
